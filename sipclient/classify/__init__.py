"""Verdicts from signalling, tones and announcements."""
