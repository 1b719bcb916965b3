"""sipclient: a headless SIP dialing daemon for empty-number detection, and its server."""

__version__ = "0.1.0"
