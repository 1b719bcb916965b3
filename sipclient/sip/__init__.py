"""The SIP protocol, sans-IO: no sockets, no asyncio, no clock reads."""
