"""sd_notify over a real unix datagram socket, and `sipclient server` as systemd runs it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sipclient import sdnotify


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(20)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield sock
    sock.close()


def test_messages_reach_the_socket(notify_socket: socket.socket) -> None:
    assert sdnotify.ready("up")
    assert notify_socket.recv(4096) == b"READY=1\nSTATUS=up"
    assert sdnotify.status("busy")
    assert notify_socket.recv(4096) == b"STATUS=busy"
    assert sdnotify.watchdog()
    assert notify_socket.recv(4096) == b"WATCHDOG=1"
    assert sdnotify.stopping()
    assert notify_socket.recv(4096) == b"STOPPING=1"


def test_no_socket_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.ready() is False
    monkeypatch.setenv("NOTIFY_SOCKET", "/nonexistent/socket")
    assert sdnotify.ready() is False


def test_watchdog_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    assert sdnotify.watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_USEC", "20000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert sdnotify.watchdog_interval() == 10.0
    monkeypatch.setenv("WATCHDOG_PID", "1")
    assert sdnotify.watchdog_interval() is None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_server_command_notifies_ready_and_stops_on_sigterm(
    tmp_path: Path, notify_socket: socket.socket
) -> None:
    port = _free_port()
    config = tmp_path / "server.yaml"
    config.write_text(
        f"listen: 127.0.0.1:{port}\n"
        f"database: sqlite:///{tmp_path / 'db.sqlite'}\n"
        f"recordings:\n  dir: {tmp_path / 'rec'}\n"
        "log:\n  format: json\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "sipclient.cli", "server", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "NOTIFY_SOCKET": notify_socket.getsockname()},
    )
    try:
        ready = notify_socket.recv(4096)
        assert ready.startswith(b"READY=1"), ready
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            conn.sendall(b"GET /notify HTTP/1.0\r\nHost: x\r\n\r\n")
            answer = conn.recv(4096)
        assert b"200 OK" in answer and b"clientId" in answer
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        assert notify_socket.recv(4096) == b"STOPPING=1"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()
        proc.stderr.close()
    assert (tmp_path / "db.sqlite").exists()


def test_server_command_fails_cleanly_when_port_taken(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config = tmp_path / "server.yaml"
        config.write_text(
            f"listen: 127.0.0.1:{port}\ndatabase: sqlite:///{tmp_path / 'db.sqlite'}\n"
            f"recordings:\n  dir: {tmp_path / 'rec'}\n"
        )
        out = subprocess.run(
            [sys.executable, "-m", "sipclient.cli", "server", "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert out.returncode == 1, (out.stdout, out.stderr)
    assert "cannot listen" in out.stdout + out.stderr
