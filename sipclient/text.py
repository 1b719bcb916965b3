"""Text from the wire made real text: a peer's bytes that were not UTF-8.

SIP header values are decoded as UTF-8 with ``surrogateescape`` (sip/message.py),
so a message is never lost to its encoding. A string still holding those
escapes cannot be encoded again, whether into a JSON spool entry, an upload
or a log line, and the first such write raised: a carrier whose reason phrase
was GBK ("\\xbf\\xd5\\xba\\xc5", 空号) crashed every call to it.
"""

from __future__ import annotations


def readable(s: str) -> str:
    """`s` with bytes that were not UTF-8 read as GB18030 (what Chinese carriers
    send), or replaced by U+FFFD when they are not that either."""
    if s.isascii():
        return s
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        raw = s.encode("utf-8", "surrogateescape")
        try:
            return raw.decode("gb18030")
        except UnicodeDecodeError:
            return raw.decode("utf-8", "replace")
    return s
