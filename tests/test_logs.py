"""logs.py: a logger taken before configure() obeys it; secrets never reach a line."""

import json
from collections.abc import Iterator

import pytest
import structlog

from sipclient import logs

early = logs.get_logger("early.module")  # taken at import time, like every module does


@pytest.fixture(autouse=True)
def _structlog_as_before() -> Iterator[None]:
    """configure() here writes to this test's captured stdout, closed after it: left
    so, every later log line of the session raised (a server under test answered 500
    to everything when this file ran before tests/server)."""
    yield
    structlog.reset_defaults()


def test_configure_applies_to_loggers_taken_earlier(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure("warning", "json")
    early.info("hidden")
    early.warning("shown", extension="1001")
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["event"] for x in lines] == ["shown"]
    assert lines[0]["module"] == "early.module"
    assert lines[0]["extension"] == "1001"


def test_passwords_are_redacted(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure("info", "json")
    early.info(
        "account",
        extension="1001",
        password="s3cret",
        Authorization="Digest x",
        client_token="b0x",
    )
    out = capsys.readouterr().out
    assert "s3cret" not in out and "Digest x" not in out and "b0x" not in out
    line = json.loads(out)
    assert line["password"] == logs.REDACTED
    assert line["Authorization"] == logs.REDACTED
    assert line["client_token"] == logs.REDACTED


def test_a_peers_undecodable_bytes_are_logged_as_text(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure("info", "json")
    gbk = "空号".encode("gbk").decode("utf-8", "surrogateescape")  # as SIP parsing keeps it
    early.info("call_ended", reason=gbk)  # raised UnicodeEncodeError inside the call before
    assert json.loads(capsys.readouterr().out)["reason"] == "空号"
