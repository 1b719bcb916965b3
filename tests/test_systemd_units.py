"""The systemd units: the template for several daemons on one box is the single
daemon's unit with an instance's own config and state directory, nothing else."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
UNITS = ROOT / "systemd"


def _settings(path: Path) -> list[tuple[str, str, str]]:
    """(section, key, value) of every setting, comments and blank lines left out."""
    out, section = [], ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.append((section, key.strip(), value.strip()))
    return out


def test_the_template_differs_from_the_single_unit_only_by_the_instance() -> None:
    single = _settings(UNITS / "sipclient.service")
    template = _settings(UNITS / "sipclient@.service")
    assert len(single) == len(template)
    differ = {
        key: (a_val, b_val)
        for (_, key, a_val), (_, _, b_val) in zip(single, template, strict=True)
        if a_val != b_val
    }
    assert differ == {
        "Description": (
            "sipclient SIP dialing daemon (empty-number detection)",
            "sipclient SIP dialing daemon %i (empty-number detection)",
        ),
        "ExecStart": (
            "/opt/sipclient/.venv/bin/sipclient run --config /etc/sipclient/config.yaml",
            "/opt/sipclient/.venv/bin/sipclient run --config /etc/sipclient/%i.yaml",
        ),
        "StateDirectory": ("sipclient", "sipclient/%i"),
        "WorkingDirectory": ("/var/lib/sipclient", "/var/lib/sipclient/%i"),
    }
    # what makes it a notify service with a watchdog, as the single one
    assert ("Service", "Type", "notify") in template
    assert any(k == "WatchdogSec" for _, k, _ in template)


# ----------------------------------------------------- MemoryDenyWriteExecute


def _confined(code: str) -> subprocess.CompletedProcess[str]:
    """`code` run by Python under `sipclient.lab.confine` (the unit's W^X rule)."""
    return subprocess.run(
        [sys.executable, "-m", "sipclient.lab.confine", sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def test_the_units_deny_write_execute_memory() -> None:
    # what the lab's confinement stands for; without it the lab proves nothing
    for unit in ("sipclient.service", "sipclient@.service"):
        assert ("Service", "MemoryDenyWriteExecute", "yes") in _settings(UNITS / unit)


def test_confine_refuses_write_execute_memory_as_systemd_does() -> None:
    probe = """
import ctypes, mmap
try:
    mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    print("wx mapped")
except PermissionError:
    print("wx refused")
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                      ctypes.c_int, ctypes.c_long]
page = libc.mmap(None, mmap.PAGESIZE, mmap.PROT_READ | mmap.PROT_WRITE,
                 mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
rc = libc.mprotect(ctypes.c_void_p(page), mmap.PAGESIZE, mmap.PROT_READ | mmap.PROT_EXEC)
print("exec added" if rc == 0 else f"exec refused {ctypes.get_errno()}")
mmap.mmap(-1, mmap.PAGESIZE).write(b"rw")  # ordinary memory still works
print("ctypes callback", ctypes.CFUNCTYPE(ctypes.c_int)(lambda: 7)())
"""
    done = _confined(probe)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:3] == ["wx refused", "exec refused 1", "ctypes callback 7"]
    # and the same probe unconfined maps it: the refusal is the filter's doing
    free = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert free.stdout.split("\n")[:2] == ["wx mapped", "exec added"]


def test_an_in_memory_recording_is_written_under_the_units_memory_rule(tmp_path: Path) -> None:
    # soundfile writing to a file object needs W+X memory (cffi callbacks): under
    # systemd every call of a daemon with recordings.keep off failed with MemoryError
    out = tmp_path / "got.wav"
    done = _confined(
        f"""
import pathlib
import numpy as np
from sipclient.media.frames import AudioFrame
from sipclient.media.recorder import Recorder
rec = Recorder({str(tmp_path / "call.wav")!r}, in_memory=True)
rec.feed(AudioFrame(0, (np.arange(20000) % 100).astype(np.int16)))
pathlib.Path({str(out)!r}).write_bytes(rec.close().data)
"""
    )
    assert done.returncode == 0, done.stderr
    data, rate = sf.read(str(out), dtype="int16")
    assert rate == 8000 and np.array_equal(data, (np.arange(20000) % 100).astype(np.int16))
    assert not (tmp_path / "call.wav").exists()
