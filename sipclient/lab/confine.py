"""Run a command under systemd's MemoryDenyWriteExecute=yes, outside systemd.

``python -m sipclient.lab.confine PROGRAM [ARG...]`` installs the seccomp
filter that rule stands for, then execs PROGRAM (the filter holds across exec
and in every child). The lab starts the daemon through it (`sipclient demo`,
the tests, the benches), so code that needs memory both writable and
executable fails here as it would under `systemd/sipclient.service`: soundfile
writing to a file object through cffi callbacks did, for every call of a
daemon run by systemd, and no test saw it.

The filter is systemd's (`seccomp_memory_deny_write_execute` in its sources,
read, not copied): `mmap` with PROT_WRITE and PROT_EXEC together, `mprotect` and
`pkey_mprotect` adding PROT_EXEC, and `shmat` with SHM_EXEC fail with EPERM.
Written here as a dozen BPF instructions through ctypes, on x86_64 and aarch64;
any other architecture, or a kernel without seccomp, runs PROGRAM unconfined
and says so on stderr. After installing it, the filter is checked: a writable
and executable anonymous mapping must be refused, or nothing runs (exit 126).
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import platform
import sys

PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ERRNO = 0x00050000

PROT_WRITE = 0x2
PROT_EXEC = 0x4
SHM_EXEC = 0o100000

# BPF opcodes (linux/filter.h)
_LD_W_ABS = 0x20
_JEQ_K = 0x15
_AND_K = 0x54
_RET_K = 0x06

# struct seccomp_data: nr (u32) at 0, arch (u32) at 4, args[i] (u64) at 16 + 8 i;
# the low 32 bits of an argument come first (both architectures are little-endian)
_NR, _ARCH = 0, 4


def _arg(i: int) -> int:
    return 16 + 8 * i


ARCHES: dict[str, tuple[int, dict[str, int]]] = {
    # machine: (AUDIT_ARCH_*, syscall numbers)
    "x86_64": (0xC000003E, {"mmap": 9, "mprotect": 10, "pkey_mprotect": 329, "shmat": 30}),
    "aarch64": (0xC00000B7, {"mmap": 222, "mprotect": 226, "pkey_mprotect": 288, "shmat": 196}),
}


class _SockFilter(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_ushort),
        ("jt", ctypes.c_ubyte),
        ("jf", ctypes.c_ubyte),
        ("k", ctypes.c_uint),
    ]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


def program(machine: str) -> list[tuple[int, int, int, int]]:
    """The filter for `machine` as (code, jt, jf, k) instructions.

    A call of another architecture (a 32-bit one on x86_64) is let through:
    systemd adds a filter per architecture it knows; the daemon is native."""
    audit_arch, nr = ARCHES[machine]
    deny = (_RET_K, 0, 0, SECCOMP_RET_ERRNO | errno.EPERM)
    allow = (_RET_K, 0, 0, SECCOMP_RET_ALLOW)
    # jt/jf count the instructions skipped; the checks below are laid out so that
    # each syscall's test jumps to its own three-instruction block
    return [
        (_LD_W_ABS, 0, 0, _ARCH),
        (_JEQ_K, 0, 16, audit_arch),  # other arch: allow (18, the last)
        (_LD_W_ABS, 0, 0, _NR),
        (_JEQ_K, 4, 0, nr["mmap"]),  # -> mmap block (8)
        (_JEQ_K, 6, 0, nr["mprotect"]),  # -> mprotect block (11)
        (_JEQ_K, 5, 0, nr["pkey_mprotect"]),  # -> mprotect block (11)
        (_JEQ_K, 7, 0, nr["shmat"]),  # -> shmat block (14)
        allow,
        # 8: mmap(addr, len, prot, ...): both PROT_WRITE and PROT_EXEC
        (_LD_W_ABS, 0, 0, _arg(2)),
        (_AND_K, 0, 0, PROT_WRITE | PROT_EXEC),
        (_JEQ_K, 6, 7, PROT_WRITE | PROT_EXEC),  # -> deny (17) / allow (18)
        # 11: mprotect(addr, len, prot) / pkey_mprotect(addr, len, prot, pkey)
        (_LD_W_ABS, 0, 0, _arg(2)),
        (_AND_K, 0, 0, PROT_EXEC),
        (_JEQ_K, 3, 4, PROT_EXEC),  # -> deny (17) / allow (18)
        # 14: shmat(id, addr, shmflg)
        (_LD_W_ABS, 0, 0, _arg(2)),
        (_AND_K, 0, 0, SHM_EXEC),
        (_JEQ_K, 0, 1, SHM_EXEC),  # -> deny (17) / allow (18)
        deny,
        allow,
    ]


def install() -> bool:
    """Confine this process (and what it execs); False where it can't be done."""
    machine = platform.machine()
    if machine not in ARCHES or not sys.platform.startswith("linux"):
        return False
    insns = program(machine)
    filters = (_SockFilter * len(insns))(*(_SockFilter(*i) for i in insns))
    prog = _SockFprog(len(insns), filters)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        return False
    return bool(libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0) == 0)


def write_execute_refused() -> bool:
    """Whether this process is refused memory both writable and executable."""
    try:
        m = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    except PermissionError:
        return True
    m.close()
    return False


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args:
        print("usage: python -m sipclient.lab.confine PROGRAM [ARG...]", file=sys.stderr)
        return 2
    if not install():
        print(
            f"sipclient.lab.confine: no seccomp filter on {platform.machine()}: running unconfined",
            file=sys.stderr,
        )
    elif not write_execute_refused():
        print("sipclient.lab.confine: the filter let W+X memory through", file=sys.stderr)
        return 126
    os.execvp(args[0], args)
    return 127  # not reached: execvp raises on failure


if __name__ == "__main__":
    sys.exit(main())
