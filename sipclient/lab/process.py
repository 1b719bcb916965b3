"""What every lab peer (kamailio, sipp) shares: stopped by pid, its work directory removed."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from pathlib import Path
from types import TracebackType
from typing import Self


class LabProcess:
    """A peer started with `start()` in its own session; stopped by pid on `stop()`.

    Subclasses set `proc`, `workdir` and `_own_dir`, and say how the program
    is asked to quit (`stop_signal`, `stop_grace` seconds before SIGKILL).
    """

    stop_signal: signal.Signals = signal.SIGTERM
    stop_grace: float = 5.0
    proc: subprocess.Popen[bytes] | None
    workdir: Path
    _own_dir: bool

    def start(self) -> Self:
        raise NotImplementedError

    def freeze(self, frozen: bool = True) -> None:
        """SIGSTOP (or SIGCONT) the program and its children: a peer that is hung,
        whose sockets take datagrams and answer none."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGSTOP if frozen else signal.SIGCONT)

    def stop(self) -> None:
        """Ask the program to quit, then SIGKILL it and its process group."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGCONT)  # a frozen one would not hear the signal
            proc.send_signal(self.stop_signal)
            try:
                proc.wait(timeout=self.stop_grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        # its children share the session we created for it (pgid == its pid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)

    def cleanup(self) -> None:
        """Stop and remove the work directory when we created it."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()
