"""Load the RFC 4475 torture messages stored in tests/sip/data/rfc4475 (see its README)."""

from __future__ import annotations

import re
from pathlib import Path

DATA = Path(__file__).parent / "data" / "rfc4475"

_REPEAT = re.compile(r"<repeat count=(\d+)>(.*?)</repeat>", re.S)
_HEX = re.compile(r"<hex>([0-9A-Fa-f]*)</hex>")


def decode_notation(text: str) -> bytes:
    """RFC 4475 §2 notation -> wire octets (LF -> CRLF, <hex>, <repeat>)."""
    text = _REPEAT.sub(lambda m: m.group(2) * int(m.group(1)), text)
    text = text.replace("\r\n", "\n").replace("\n", "\r\n")
    out = bytearray()
    pos = 0
    for m in _HEX.finditer(text):
        out += text[pos : m.start()].encode("utf-8")
        out += bytes.fromhex(m.group(1))
        pos = m.end()
    out += text[pos:].encode("utf-8")
    return bytes(out)


def load(name: str) -> bytes:
    """The wire bytes of one torture message."""
    return decode_notation((DATA / f"{name}.txt").read_text("utf-8"))


def names() -> list[str]:
    """Every stored message name."""
    return sorted(p.stem for p in DATA.glob("*.txt"))
