"""Run a program under a systemd unit's seccomp rules, outside systemd.

``python -m sipclient.lab.confine --unit systemd/sipclient.service PROGRAM [ARG...]``
reads the unit's `SystemCallFilter=`, `SystemCallErrorNumber=`,
`MemoryDenyWriteExecute=` and `RestrictAddressFamilies=`, installs the seccomp
filters systemd would build from them, then execs PROGRAM (filters hold across
exec and in every child).
The lab starts the daemon through it (`sipclient demo`, the e2e tests, the
benches), so what the unit forbids fails here as it would under systemd. Two
things did, and no test saw them until session 12: soundfile writing to a file
object through cffi callbacks (W+X memory: every call of a daemon with
`recordings.keep` off failed), and numpy's OpenBLAS calling `mbind` (in
`@resources`, which the unit denies) at import: SIGSYS, the daemon killed
before READY=1, restarted every 2 s for ever.

How the filters are made, as systemd.exec(5) describes them, with libseccomp
(`libseccomp2`, which systemd itself links) through ctypes:

- `SystemCallFilter=`: the groups are expanded by this box's
  `systemd-analyze syscall-filter`, so `@system-service` means what the
  installed systemd means by it. A first list without ``~`` is an allow-list;
  ``~`` lists take their calls out of it. A call outside the result gets
  `SystemCallErrorNumber=`'s errno, or kills the process (SIGSYS) if unset.
  Calls of another architecture are refused (`SystemCallArchitectures=native`).
- `MemoryDenyWriteExecute=yes`: `mmap` with PROT_WRITE and PROT_EXEC together,
  `mprotect` and `pkey_mprotect` adding PROT_EXEC, and `shmat` with SHM_EXEC
  fail with EPERM; a second filter, as systemd loads it.
- `RestrictAddressFamilies=`: `socket()` of a family outside the list fails
  with EAFNOSUPPORT (`socketpair()` is not filtered, as in systemd); a third
  filter. Under the units' list (AF_INET AF_INET6 AF_UNIX) a daemon or
  library that reached for another family (netlink, packet) would fail only
  under systemd. glibc's `getaddrinfo` with AI_ADDRCONFIG (aiohttp's resolver
  asks for it) opens an AF_NETLINK socket to learn the box's addresses; it
  still answers when that is refused (tests/test_systemd_units.py checks).

After installing them the rule is checked: a writable and executable mapping
must be refused, or nothing runs (exit 126). Without libseccomp or
`systemd-analyze` nothing runs (exit 125; `make install` installs both).

The file system (session 15): with `ProtectSystem=strict` the program gets a
mount namespace of its own in which the whole tree is read-only but for the
API file systems (/dev, /proc, /sys: mounts of their own, left as they are),
the paths given with `--writable` (what the unit's `StateDirectory=`,
`RuntimeDirectory=` and `ReadWritePaths=` are in this run: the lab passes the
program's own folder), and /tmp and /var/tmp when the unit has
`PrivateTmp=yes` (systemd gives it a private writable /tmp; the lab keeps the
shared one, where its folders live). `ProtectHome=yes` is applied as
`read-only`: the lab's Python lives under /root. So a write outside the
places the unit allows fails here with EROFS as it would under systemd
(where, with the home hidden, it would fail sooner). This needs root (a mount
namespace); without it the rules are not applied, said on stderr, and the
program runs without them. Not emulated: users, the other namespace and
`Protect*` settings.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import errno
import mmap
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

SCMP_ACT_KILL_PROCESS = 0x80000000
SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_CMP_EQ = 4
SCMP_CMP_MASKED_EQ = 7
FAMILIES_MAX = 64
"""Address families 0..FAMILIES_MAX-1 are filtered (Linux 6.1 knows 46)."""
SHM_EXEC = 0o100000


def scmp_act_errno(code: int) -> int:
    return 0x00050000 | (code & 0xFFFF)


def unit_settings(path: Path) -> list[tuple[str, str, str]]:
    """(section, key, value) of every setting of a unit file, in order; comments and
    blank lines left out."""
    out, section = [], ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.append((section, key.strip(), value.strip()))
    return out


class UnitRules:
    """The seccomp-relevant settings of one unit file's [Service] section."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.filters: list[str] = []  # each SystemCallFilter= value, in order
        self.error_number: int | None = None
        self.deny_write_execute = False
        self.families: list[str] = []  # each RestrictAddressFamilies= value, in order
        self.protect_system = ""
        self.private_tmp = False
        self.read_write_paths: list[str] = []
        for section, key, value in unit_settings(path):
            if section != "Service":
                continue
            if key == "SystemCallFilter":
                self.filters.append(value)
            elif key == "SystemCallErrorNumber":
                self.error_number = getattr(errno, value) if not value.isdigit() else int(value)
            elif key == "MemoryDenyWriteExecute":
                self.deny_write_execute = value.lower() in ("yes", "true", "1", "on")
            elif key == "RestrictAddressFamilies":
                self.families.append(value)
            elif key == "ProtectSystem":
                self.protect_system = value.lower()
            elif key == "PrivateTmp":
                self.private_tmp = value.lower() in ("yes", "true", "1", "on")
            elif key == "ReadWritePaths":
                self.read_write_paths.extend(value.split())

    def allowed_families(self) -> set[int] | None:
        """The address families `socket()` may create (None: no restriction).

        As systemd.exec(5) reads the lines: "none" allows none, a plain list
        allows its families (later plain lists add theirs), a "~" list denies
        its families (first: every other family is allowed)."""
        allowed: set[int] | None = None
        every = set(range(FAMILIES_MAX))
        for value in self.families:
            if value == "none":
                allowed = set()
                continue
            names = value.lstrip("~").split()
            unknown = [n for n in names if not isinstance(getattr(socket, n, None), int)]
            if unknown:
                raise SystemExit(f"{self.path}: unknown address family {' '.join(unknown)}")
            numbers = {int(getattr(socket, n)) for n in names}
            if value.startswith("~"):
                allowed = (every if allowed is None else allowed) - numbers
            else:
                allowed = numbers if allowed is None else allowed | numbers
        return allowed

    def allowed(self, groups: dict[str, list[str]]) -> set[str] | None:
        """The calls the unit allows (None: no SystemCallFilter, everything): the first
        list is the allow-list, a later "~" list takes its calls out, a later plain
        list adds them back. A unit whose first list is a "~" one (deny-list mode)
        is not emulated."""
        allowed: set[str] | None = None
        for value in self.filters:
            names = set().union(*(expand(n, groups) for n in value.lstrip("~").split()))
            if value.startswith("~"):
                if allowed is None:
                    raise SystemExit(f"{self.path}: a deny-list SystemCallFilter is not emulated")
                allowed -= names
            elif allowed is None:
                allowed = names
            else:
                allowed |= names
        return allowed


def syscall_groups() -> dict[str, list[str]]:
    """`systemd-analyze syscall-filter`'s groups: name -> members (calls or @groups)."""
    out = subprocess.run(
        ["systemd-analyze", "syscall-filter", "--no-pager"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    groups: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in out.splitlines():
        if line.startswith("@"):
            current = groups.setdefault(line.strip(), [])
        elif line.startswith("    ") and current is not None:
            item = line.strip()
            if item and not item.startswith("#"):
                current.append(item)
        elif not line.strip():
            current = None
    return groups


def expand(name: str, groups: dict[str, list[str]]) -> set[str]:
    if not name.startswith("@"):
        return {name}
    if name not in groups:
        raise SystemExit(f"systemd-analyze knows no group {name}")
    return set().union(*(expand(n, groups) for n in groups[name]))


Condition = tuple[int, int, int, int]
"""(argument, libseccomp comparison, datum_a, datum_b) of a rule."""
Rule = tuple[int, str, list[Condition]]
"""(action, call, conditions that must all hold)."""


class _ArgCmp(ctypes.Structure):
    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


class Seccomp:
    """The few libseccomp calls a filter takes."""

    def __init__(self) -> None:
        name = ctypes.util.find_library("seccomp") or "libseccomp.so.2"
        lib = ctypes.CDLL(name, use_errno=True)
        lib.seccomp_init.restype = ctypes.c_void_p
        lib.seccomp_init.argtypes = [ctypes.c_uint32]
        lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
        lib.seccomp_rule_add_array.argtypes = [
            ctypes.c_void_p,
            ctypes.c_uint32,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.POINTER(_ArgCmp),
        ]
        lib.seccomp_load.argtypes = [ctypes.c_void_p]
        lib.seccomp_release.argtypes = [ctypes.c_void_p]
        self.lib = lib

    def number(self, name: str) -> int | None:
        nr = int(self.lib.seccomp_syscall_resolve_name(name.encode()))
        return None if nr < 0 else nr  # unknown here, or not of this architecture

    def load(self, default: int, rules: list[Rule]) -> None:
        """One filter: `default` action, and the rules that take other actions."""
        ctx = self.lib.seccomp_init(default)
        if not ctx:
            raise OSError("seccomp_init failed")
        try:
            for action, name, conditions in rules:
                nr = self.number(name)
                if nr is None:
                    continue
                cmps = (_ArgCmp * max(1, len(conditions)))(
                    *(_ArgCmp(arg, op, a, b) for arg, op, a, b in conditions)
                )
                rc = self.lib.seccomp_rule_add_array(ctx, action, nr, len(conditions), cmps)
                if rc != 0:
                    raise OSError(-rc, f"seccomp_rule_add {name}: {os.strerror(-rc)}")
            rc = self.lib.seccomp_load(ctx)
            if rc != 0:
                raise OSError(-rc, f"seccomp_load: {os.strerror(-rc)}")
        finally:
            self.lib.seccomp_release(ctx)


def _bits(arg: int, mask: int) -> Condition:
    """Argument `arg` has every bit of `mask` set."""
    return (arg, SCMP_CMP_MASKED_EQ, mask, mask)


def write_execute_rules() -> list[Rule]:
    deny = scmp_act_errno(errno.EPERM)
    wx = mmap.PROT_WRITE | mmap.PROT_EXEC
    return [
        (deny, "mmap", [_bits(2, wx)]),
        (deny, "mprotect", [_bits(2, mmap.PROT_EXEC)]),
        (deny, "pkey_mprotect", [_bits(2, mmap.PROT_EXEC)]),
        (deny, "shmat", [_bits(2, SHM_EXEC)]),
    ]


def address_family_rules(allowed: set[int]) -> list[Rule]:
    """socket() of each family not in `allowed` fails with EAFNOSUPPORT."""
    deny = scmp_act_errno(errno.EAFNOSUPPORT)
    return [
        (deny, "socket", [(0, SCMP_CMP_EQ, family, 0)])
        for family in range(FAMILIES_MAX)
        if family not in allowed
    ]


def install(rules: UnitRules) -> None:
    """Load the unit's filters into this process."""
    sc = Seccomp()
    # these first: the allow-list may refuse the seccomp() call that loads a next
    if rules.deny_write_execute:
        sc.load(SCMP_ACT_ALLOW, write_execute_rules())
    families = rules.allowed_families()
    if families is not None:
        sc.load(SCMP_ACT_ALLOW, address_family_rules(families))
    if rules.filters:
        allowed = rules.allowed(syscall_groups())
        if allowed is not None:
            default = (
                SCMP_ACT_KILL_PROCESS
                if rules.error_number is None
                else scmp_act_errno(rules.error_number)
            )
            sc.load(default, [(SCMP_ACT_ALLOW, name, []) for name in sorted(allowed)])


CLONE_NEWNS = 0x00020000
MS_RDONLY = 1
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18


def writable_paths(rules: UnitRules, given: list[Path]) -> list[Path]:
    """What stays writable under the unit's `ProtectSystem=strict` in this run."""
    paths = [*given, *(Path(p.lstrip("-")) for p in rules.read_write_paths)]
    if rules.private_tmp:
        paths += [Path("/tmp"), Path("/var/tmp")]
    return paths


def read_only_system(rules: UnitRules, writable: list[Path]) -> str | None:
    """Make this process's view of the tree read-only but for `writable` (module
    docstring); None when done, else why it could not be."""
    if rules.protect_system != "strict":
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [
        ctypes.c_char_p,
        ctypes.c_char_p,
        ctypes.c_char_p,
        ctypes.c_ulong,
        ctypes.c_void_p,
    ]

    def mount(source: str | None, target: str, flags: int) -> None:
        src = source.encode() if source is not None else None
        if libc.mount(src, target.encode(), None, flags, None) != 0:
            code = ctypes.get_errno()
            raise OSError(code, f"mount {target}: {os.strerror(code)}")

    if libc.unshare(CLONE_NEWNS) != 0:
        code = ctypes.get_errno()
        return f"unshare(CLONE_NEWNS): {os.strerror(code)} (a mount namespace needs root)"
    mount(None, "/", MS_REC | MS_PRIVATE)  # nothing done here reaches the host's tree
    keep = set()
    for path in writable:
        if path.exists():
            real = str(path.resolve())
            mount(real, real, MS_BIND | MS_REC)  # a mount of its own: stays writable
            keep.add(real)
    # every other mount read-only, / and any below it (/home, /var on their own
    # disks), as systemd does: a remount of / alone leaves the others writable
    for point in _mount_points():
        inside_kept = any(point == k or point.startswith(k.rstrip("/") + "/") for k in keep)
        if inside_kept or point.split("/")[1] in _API_FILE_SYSTEMS:
            continue
        try:
            mount(None, point, MS_REMOUNT | MS_BIND | MS_RDONLY)
        except OSError as exc:  # a mount the kernel will not remount: said, not fatal
            print(f"confine: left writable: {exc}", file=sys.stderr)
    return None


_OCTAL = re.compile(r"\\([0-7]{3})")
_API_FILE_SYSTEMS = {"proc", "sys", "dev"}
"""ProtectSystem=strict leaves /proc, /sys and /dev (and what is below them) as they are."""


def _mount_points() -> list[str]:
    """This process's mount points (/proc/self/mountinfo's fifth field, unescaped)."""
    out = []
    with open("/proc/self/mountinfo", encoding="utf-8") as fh:
        for line in fh:
            # the kernel writes a space, tab, newline or backslash as \ooo (octal)
            out.append(_OCTAL.sub(lambda m: chr(int(m.group(1), 8)), line.split()[4]))
    return out


def write_execute_refused() -> bool:
    """Whether this process is refused memory both writable and executable."""
    try:
        m = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    except PermissionError:
        return True
    m.close()
    return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sipclient.lab.confine")
    parser.add_argument("--unit", type=Path, required=True, help="the systemd unit file")
    parser.add_argument(
        "--writable",
        type=Path,
        action="append",
        default=[],
        help="a path left writable under ProtectSystem=strict (the unit's state and"
        " runtime directories in this run); may be given more than once",
    )
    parser.add_argument("program", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if not args.program:
        parser.error("no PROGRAM")
    rules = UnitRules(args.unit)
    missing = [] if shutil.which("systemd-analyze") else ["systemd-analyze"]
    if not ctypes.util.find_library("seccomp"):
        missing.append("libseccomp")
    if missing:
        # `make install` installs both (Debian's systemd and libseccomp2)
        print(f"confine: no {' or '.join(missing)}: can't apply {args.unit}", file=sys.stderr)
        return 125
    try:
        why = read_only_system(rules, writable_paths(rules, args.writable))
    except OSError as exc:
        print(f"confine: can't apply ProtectSystem=strict: {exc}", file=sys.stderr)
        return 125
    if why is not None:
        print(f"confine: ProtectSystem=strict not applied: {why}", file=sys.stderr)
    install(rules)
    if rules.deny_write_execute and not write_execute_refused():
        print("confine: the filter let W+X memory through", file=sys.stderr)
        return 126
    os.execvp(args.program[0], args.program)
    return 127  # not reached: execvp raises on failure


if __name__ == "__main__":
    sys.exit(main())
