"""text.readable: a peer's bytes that were not UTF-8 become text that can be written."""

from sipclient.text import readable


def _wire(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")  # as sip/message.py reads header values


def test_gbk_is_read_as_gbk() -> None:
    assert readable(_wire("空号".encode("gbk"))) == "空号"
    assert readable(_wire("用户忙 busy".encode("gb18030"))) == "用户忙 busy"


def test_text_that_was_utf8_is_kept() -> None:
    assert readable("Not Found") == "Not Found"
    assert readable(_wire("空号".encode())) == "空号"


def test_bytes_that_are_neither_become_replacement_characters() -> None:
    out = readable(_wire(b"ok \x80\xff"))
    out.encode("utf-8")  # can be written
    assert out.startswith("ok ")
