"""The call journal (agent/leftovers.py): what a dead daemon left up, on a real file,
and its requests sent over real loopback sockets."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

import pytest

from sipclient.agent import leftovers
from sipclient.agent.leftovers import JOURNAL, CallJournal, Leftover, end_leftovers


def _left(call_id: str, method: str = "CANCEL", port: int = 5060) -> Leftover:
    data = f"{method} sip:1@pbx SIP/2.0\r\nCall-ID: {call_id}\r\n\r\n".encode()
    return Leftover(call_id, method, "127.0.0.1", port, "udp", data)


def test_a_run_that_died_leaves_the_calls_still_up_with_their_latest_request(
    tmp_path: Path,
) -> None:
    journal, left = CallJournal.open(tmp_path)
    assert left == []
    journal.record(_left("a"))
    journal.record(_left("b"))
    journal.record(_left("c"))
    journal.forget("a")  # ended
    journal.record(_left("b", "BYE"))  # answered: its BYE now ends it
    # killed: no close; the last line cut short by the kill
    with (tmp_path / JOURNAL).open("a") as f:
        f.write('{"call": "d", "meth')
    journal2, left = CallJournal.open(tmp_path)
    assert sorted((x.call_id, x.method) for x in left) == [("b", "BYE"), ("c", "CANCEL")]
    assert next(x for x in left if x.call_id == "b").data.startswith(b"BYE ")
    # the next run starts afresh: the same leftovers are not ended twice
    journal2.close()
    assert CallJournal.open(tmp_path)[1] == []


def test_the_journal_is_written_again_with_the_calls_up_past_its_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(leftovers, "JOURNAL_MAX", 2000)
    journal, _ = CallJournal.open(tmp_path)
    for n in range(100):  # ~200 bytes a line
        journal.record(_left(f"c{n}"))
        if n != 99:
            journal.forget(f"c{n}")
        assert (tmp_path / JOURNAL).stat().st_size < 2000 + 400
    _, left = CallJournal.open(tmp_path)
    assert [x.call_id for x in left] == ["c99"]


def test_a_journal_that_cannot_be_written_is_switched_off_without_raising(
    tmp_path: Path,
) -> None:
    journal, _ = CallJournal.open(tmp_path)
    os.close(journal._fd)  # the disk gone from under it
    journal.record(_left("a"))  # EBADF: logged, off
    assert journal.failed
    journal.record(_left("b"))
    journal.forget("a")
    blocked = tmp_path / "file"
    blocked.write_text("")
    other, left = CallJournal.open(blocked)  # a folder that is a file: off, no leftovers
    assert left == [] and other.failed


async def test_each_leftover_goes_out_three_times_over_udp_and_once_over_tcp() -> None:
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    udp.setblocking(False)
    got_tcp: list[bytes] = []

    async def on_tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        got_tcp.append(await reader.read(4096))
        writer.close()

    server = await asyncio.start_server(on_tcp, "127.0.0.1", 0)
    tcp_port = server.sockets[0].getsockname()[1]
    try:
        loop = asyncio.get_running_loop()
        cancel = _left("x", port=udp.getsockname()[1])
        bye = Leftover("y", "BYE", "127.0.0.1", tcp_port, "tcp", b"BYE sip:far SIP/2.0\r\n\r\n")
        sent = await end_leftovers([cancel, bye])
        assert sent == 2
        copies = []
        for _ in range(3):
            data = await asyncio.wait_for(loop.sock_recv(udp, 4096), 2.0)
            copies.append(data)
        assert copies == [cancel.data] * 3
        assert got_tcp == [bye.data]
    finally:
        server.close()
        await server.wait_closed()
        udp.close()


async def test_a_pbx_that_cannot_be_reached_is_logged_not_raised() -> None:
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there now
    gone = Leftover("z", "BYE", "127.0.0.1", port, "tcp", b"BYE sip:far SIP/2.0\r\n\r\n")
    assert await end_leftovers([gone]) == 0
    assert await end_leftovers([]) == 0
