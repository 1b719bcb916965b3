"""`sipclient demo` as `make demo` runs it: the real command, every process it starts."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.peers


def _processes_mentioning(text: str) -> list[str]:
    """Command lines of running processes that name `text` (the demo's folder)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue  # gone meanwhile, or not ours to read
        if text in cmdline:
            found.append(f"{pid}: {cmdline[:200]}")
    return found


def test_the_demo_command_gets_every_number_right_and_leaves_nothing_running(
    tmp_path: Path,
) -> None:
    workdir = tmp_path / "demo"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "sipclient.cli",
            "demo",
            "--numbers",
            "11",
            "--lines",
            "4",
            "--workdir",
            str(workdir),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # one line per verdict as it arrives, then the summary
    assert len(re.findall(r"^  \d+ +\w+ +ok ", done.stdout, re.M)) == 11, done.stdout
    assert "WRONG" not in done.stdout
    assert re.search(r"^11/11 numbers finished in [\d.]+ s: 11 right, 0 wrong;", done.stdout, re.M)
    # server, kamailio, the carriers and the daemon were all stopped
    assert _processes_mentioning(str(workdir)) == []
