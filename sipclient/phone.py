"""What a phone number of a lead list becomes in a SIP Request-URI, and which cannot.

Shared by the daemon (`agent/useragent.py`, which dials) and the server (which
finishes a number no call could carry at push time instead of handing it to a
line: `not_dialable`).
"""

from __future__ import annotations

import re

_USER_RE = re.compile(r"^[A-Za-z0-9._~+*#-]+$")
"""A SIP user part we send unescaped (RFC 3261 unreserved and the dial-pad keys)."""
_FORMATTED_PHONE_RE = re.compile(r"^\+?\(?[0-9][0-9\s().-]*$")
_SEPARATORS_RE = re.compile(r"[\s().-]")


def dial_string(number: str) -> str:
    """What goes in the Request-URI for `number`: a phone number written for people
    ("138 0000 0000", "(010) 1234-5678", "+86 138.0000.0000") loses its separators
    (RFC 3966's visual separators, and spaces); anything else is dialled as it is.
    The number keeps its written form everywhere else (the server's phone).
    """
    if _FORMATTED_PHONE_RE.match(number):
        return _SEPARATORS_RE.sub("", number)
    return number


def is_user_part(text: str) -> bool:
    """Whether `text` can be a SIP user part as it is (an extension, a dialled string)."""
    return bool(_USER_RE.match(text))


def not_dialable(number: str) -> str:
    """Why no call can carry `number` ("" when one can): its dial string has
    characters a SIP user part cannot (an '@', a ':', a quote, a space inside
    something that is not a written phone number)."""
    if is_user_part(dial_string(number)):
        return ""
    return f"number {number!r} has characters a SIP user part cannot carry"
