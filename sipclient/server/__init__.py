"""The embedded server: 000 push/task API + 001 control API."""
