"""The systemd units: the template for several daemons on one box is the single
daemon's unit with an instance's own config and state directory, nothing else."""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

from sipclient.lab.confine import UnitRules, unit_settings

ROOT = Path(__file__).resolve().parents[1]
UNITS = ROOT / "systemd"


def test_the_template_differs_from_the_single_unit_only_by_the_instance() -> None:
    single = unit_settings(UNITS / "sipclient.service")
    template = unit_settings(UNITS / "sipclient@.service")
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
        "RuntimeDirectory": ("sipclient", "sipclient/%i"),
        "WorkingDirectory": ("/var/lib/sipclient", "/var/lib/sipclient/%i"),
    }
    # what makes it a notify service with a watchdog, as the single one
    assert ("Service", "Type", "notify") in template
    assert any(k == "WatchdogSec" for _, k, _ in template)


# ------------------------------------------------ the units' seccomp rules


_CONFINE = [sys.executable, "-m", "sipclient.lab.confine", "--unit"]


def _confined(
    code: str, unit: Path = UNITS / "sipclient.service"
) -> subprocess.CompletedProcess[str]:
    """`code` run by Python under `unit`'s seccomp rules (`sipclient.lab.confine`)."""
    return subprocess.run(
        [*_CONFINE, str(unit), sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


def _unconfined(code: str) -> str:
    """What `code` prints run by Python with no filter."""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    return done.stdout


def test_the_units_deny_write_execute_memory_and_refuse_calls_with_eperm() -> None:
    # what the lab's confinement reads; EPERM, not SIGSYS: see the next tests
    for unit in ("sipclient.service", "sipclient@.service", "sipclient-server.service"):
        rules = UnitRules(UNITS / unit)
        assert rules.deny_write_execute and rules.error_number == errno.EPERM
        assert rules.filters == ["@system-service", "~@privileged @resources"]
        assert rules.families == ["AF_INET AF_INET6 AF_UNIX"]


_PROBE = """
import ctypes, mmap, os
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
try:
    os.setpriority(os.PRIO_PROCESS, 0, os.getpriority(os.PRIO_PROCESS, 0))  # @resources
    print("setpriority done")
except PermissionError:
    print("setpriority refused")
mmap.mmap(-1, mmap.PAGESIZE).write(b"rw")  # ordinary memory still works
print("ctypes callback", ctypes.CFUNCTYPE(ctypes.c_int)(lambda: 7)())
"""


def test_confine_applies_the_units_rules_as_systemd_does() -> None:
    done = _confined(_PROBE)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:4] == [
        "wx refused",
        "exec refused 1",
        "setpriority refused",
        "ctypes callback 7",
    ]
    # the same probe unconfined does all of it: the refusals are the filters' doing
    free = _unconfined(_PROBE)
    assert free.split("\n")[:3] == ["wx mapped", "exec added", "setpriority done"]


_WRITES = """
import os, sys
for path in sys.argv[1:]:
    try:
        with open(path, "w") as f:
            f.write("x")
        os.unlink(path)
        print("written")
    except OSError as exc:
        print("refused", exc.errno)
"""


def test_confine_leaves_writable_only_what_the_unit_lets_it_write(tmp_path: Path) -> None:
    # ProtectSystem=strict: the state directory (the lab's folder of the program) and,
    # with PrivateTmp=yes, /tmp are writable; the rest of the tree (/usr/local here),
    # the home and /var/lib are not. Before session 15 the lab applied
    # only the seccomp rules, and a write the unit refuses showed only under systemd.
    # (Not the checkout itself: a clone under /tmp is writable with PrivateTmp.)
    state = tmp_path / "state"
    state.mkdir()
    probe = f".confine-probe-{os.getpid()}"
    outside = [Path("/usr/local") / probe, Path.home() / probe, Path("/var/lib") / probe]
    targets = [state / "a", tmp_path / "b", *outside]
    writes = [sys.executable, "-c", _WRITES, *map(str, targets)]
    for unit in ("sipclient.service", "sipclient-server.service"):
        rules = UnitRules(UNITS / unit)
        assert (rules.protect_system, rules.private_tmp) == ("strict", True)
        done = subprocess.run(
            [*_CONFINE, str(UNITS / unit), "--writable", str(state), *writes],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.split("\n")[:5] == ["written", "written"] + ["refused 30"] * 3
        assert "not applied" not in done.stderr
    assert not any(p.exists() for p in outside)
    # the unit without ProtectSystem=: the same writes all go through (then removed)
    unit = tmp_path / "no-protect.service"
    text = (UNITS / "sipclient.service").read_text(encoding="utf-8")
    unit.write_text(text.replace("ProtectSystem=strict", ""), encoding="utf-8")
    done = subprocess.run(
        [*_CONFINE, str(unit), *writes],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert done.stdout.split("\n")[:5] == ["written"] * 5, done.stderr


def test_without_an_errno_a_refused_call_kills_and_numpy_makes_one(tmp_path: Path) -> None:
    # systemd's default action is SIGSYS; numpy's OpenBLAS calls mbind (@resources)
    # at import: the unit without SystemCallErrorNumber= killed the daemon at start
    unit = tmp_path / "no-errno.service"
    text = (UNITS / "sipclient.service").read_text(encoding="utf-8")
    unit.write_text(text.replace("SystemCallErrorNumber=EPERM", ""), encoding="utf-8")
    assert UnitRules(unit).error_number is None
    killed = _confined("print('started', flush=True); import numpy; print('imported')", unit)
    assert killed.returncode == -signal.SIGSYS and killed.stdout == "started\n"
    kept = _confined("import numpy, scipy.signal, soundfile, aiohttp; print('imported')")
    assert kept.returncode == 0 and kept.stdout == "imported\n", kept.stderr


def test_an_in_memory_recording_is_written_under_the_units_rules(tmp_path: Path) -> None:
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


_FAMILIES = """
import errno, socket
for name in ("AF_INET", "AF_INET6", "AF_UNIX", "AF_NETLINK"):
    try:
        socket.socket(getattr(socket, name), socket.SOCK_DGRAM).close()
        print(name, "ok")
    except OSError as exc:
        print(name, errno.errorcode[exc.errno])
a, b = socket.socketpair()
print("socketpair ok")
# glibc asks the kernel for the box's addresses over AF_NETLINK under AI_ADDRCONFIG
# (aiohttp's resolver sets it): refused, it must still answer
got = socket.getaddrinfo("localhost", 5060, type=socket.SOCK_DGRAM, flags=socket.AI_ADDRCONFIG)
print("resolved", bool(got))
"""


def test_confine_restricts_address_families_as_the_unit_does() -> None:
    done = _confined(_FAMILIES)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "AF_INET ok",
        "AF_INET6 ok",
        "AF_UNIX ok",
        "AF_NETLINK EAFNOSUPPORT",
        "socketpair ok",
        "resolved True",
    ]
    assert "AF_NETLINK ok" in _unconfined(_FAMILIES).splitlines()


def test_address_family_lines_combine_as_systemd_reads_them(tmp_path: Path) -> None:
    def families(*lines: str) -> set[int] | None:
        unit = tmp_path / "f.service"
        body = "".join(f"RestrictAddressFamilies={line}\n" for line in lines)
        unit.write_text(f"[Service]\n{body}", encoding="utf-8")
        return UnitRules(unit).allowed_families()

    assert families() is None
    assert families("AF_INET AF_UNIX", "AF_INET6") == {
        socket.AF_INET,
        socket.AF_UNIX,
        socket.AF_INET6,
    }
    assert families("AF_INET AF_UNIX", "~AF_UNIX") == {socket.AF_INET}
    denied = families("~AF_PACKET")
    assert denied is not None and socket.AF_PACKET not in denied and socket.AF_INET in denied
    assert families("AF_INET", "none") == set()


def test_filter_lines_combine_as_systemd_reads_them(tmp_path: Path) -> None:
    # the first list says allow-list; "~" takes out of it, a later list adds back
    unit = tmp_path / "x.service"
    unit.write_text(
        "[Unit]\nSystemCallFilter=@ignored\n[Service]\nSystemCallFilter=@a read\n"
        "SystemCallFilter=~@b\nSystemCallFilter=nice\nSystemCallErrorNumber=EACCES\n",
        encoding="utf-8",
    )
    groups = {"@a": ["open", "@b"], "@b": ["nice", "mbind"]}
    rules = UnitRules(unit)
    assert rules.error_number == errno.EACCES and not rules.deny_write_execute
    assert rules.allowed(groups) == {"open", "read", "nice"}


def test_systemd_reads_every_setting_of_the_units(tmp_path: Path) -> None:
    # a misspelt hardening key or an unknown call group is only a warning to
    # systemd, and the protection is silently off: systemd-analyze verify names it
    for unit, name in (
        ("sipclient.service", "sipclient.service"),
        ("sipclient@.service", "sipclient@one.service"),
        ("sipclient-server.service", "sipclient-server.service"),
    ):
        text = (UNITS / unit).read_text(encoding="utf-8")
        # ExecStart must name a program that exists here
        (tmp_path / name).write_text(
            text.replace("/opt/sipclient/.venv/bin/sipclient", sys.executable), encoding="utf-8"
        )
        done = subprocess.run(
            ["systemd-analyze", "verify", str(tmp_path / name)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert (done.returncode, done.stdout + done.stderr) == (0, ""), name
    # and it does name one
    bad = tmp_path / "bad.service"
    bad.write_text(
        f"[Service]\nExecStart={sys.executable}\nMemoryDenyWriteExecut=yes\n", encoding="utf-8"
    )
    done = subprocess.run(
        ["systemd-analyze", "verify", str(bad)], capture_output=True, text=True, timeout=60
    )
    assert "Unknown key 'MemoryDenyWriteExecut'" in done.stdout + done.stderr
