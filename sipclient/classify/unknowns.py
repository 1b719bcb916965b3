"""Announcements no template matched, kept to be labelled once.

`UnknownStore(folder)` keeps, per call whose sound matched nothing, its
landmark hashes (`<id>.npz`), the first seconds of audio (`<id>.wav`, to
listen to and then `sipclient templates add <id>.wav --verdict ...`) and a
little metadata (`<id>.json`). `groups()` clusters them by fingerprint
similarity: the same unknown recording heard 200 times is one group of 200.
Similarity is the template matcher's: hashes agreeing on one time offset.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from sipclient.classify.audio import RATE
from sipclient.logs import get_logger

SAME_MIN_VOTES = 10
"""Hashes on one offset that make two unknowns the same recording."""
SAME_MIN_SHARE = 0.05
"""...and at least this share of the smaller one's hashes."""


@dataclass
class UnknownGroup:
    """Unknown recordings that are the same announcement."""

    ids: list[str] = field(default_factory=list)
    example_wav: str = ""
    first_seen: float = 0.0
    last_seen: float = 0.0

    def as_json(self) -> dict[str, Any]:
        """The form `sipclient templates unknown` prints."""
        return {
            "count": len(self.ids),
            "example": self.example_wav,
            "ids": self.ids,
            "first_seen": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.first_seen)),
            "last_seen": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.last_seen)),
        }


def similarity(
    a: tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]],
    b: tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]],
) -> int:
    """Votes on the best common offset between two fingerprints (hashes, times)."""
    ha, ta = a
    hb, tb = b
    if len(ha) == 0 or len(hb) == 0:
        return 0
    order = np.argsort(hb, kind="stable")
    hb, tb = hb[order], tb[order]
    lo = np.searchsorted(hb, ha, side="left")
    hi = np.searchsorted(hb, ha, side="right")
    n = hi - lo
    total = int(n.sum())
    if total == 0:
        return 0
    qa = np.repeat(np.arange(len(ha)), n)
    idx = np.repeat(lo - np.cumsum(n) + n, n) + np.arange(total)
    offsets = (tb[idx] - ta[qa]) // 4  # 20 ms buckets (fine frames are 5 ms)
    offsets = offsets - offsets.min()
    counts = np.bincount(offsets)
    # a frame of slip either way counts (jitter buffers)
    padded = np.concatenate([[0], counts, [0]])
    return int((padded[:-2] + padded[1:-1] + padded[2:]).max())


MAX_KEPT = 10_000
"""Recordings a store keeps at most (~0.5 MB each with its 30 s clip: 5 GB). A
carrier that starts playing a new announcement makes every call to it an
unknown: a tenth of a million numbers a day is 50 GB a day, and the first ten
thousand are more than enough to label it. Past the cap `add` keeps nothing
and says so once in the log (`unknown_store_full`)."""
RECOUNT_S = 60.0
"""While full, the folder is counted again at most this often (it may have been cleared)."""


class UnknownStore:
    """A folder of unmatched announcements (module docstring)."""

    def __init__(self, folder: Path, *, max_kept: int = MAX_KEPT) -> None:
        self.folder = Path(folder)
        self.max_kept = max_kept
        self._kept: int | None = None  # counted from the folder, then kept up to date
        self._recount_at = 0.0
        self._full_logged = False

    def add(
        self,
        hashes: npt.NDArray[np.int64],
        times: npt.NDArray[np.int64],
        pcm: npt.NDArray[np.int16],
        meta: dict[str, Any] | None = None,
    ) -> str | None:
        """Keep one unmatched recording; returns its id (None: the store is full)."""
        import soundfile as sf

        now = time.monotonic()
        if self._kept is None or (self._kept >= self.max_kept and now >= self._recount_at):
            # counted from the folder at first, and again at most once a minute while
            # full: a person who labelled and cleared it needs no restart
            self._kept = len(self.ids())
            self._recount_at = now + RECOUNT_S
            if self._kept < self.max_kept:
                self._full_logged = False
        if self._kept >= self.max_kept:
            if not self._full_logged:
                self._full_logged = True
                get_logger(__name__).warning(
                    "unknown_store_full",
                    folder=str(self.folder),
                    kept=self._kept,
                    hint="label some (sipclient templates unknown) and clear the folder",
                )
            return None
        self._kept += 1
        self.folder.mkdir(parents=True, exist_ok=True)
        uid = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:8]
        tmp = self.folder / f".{uid}.npz"
        np.savez(tmp, hashes=np.asarray(hashes, np.int64), times=np.asarray(times, np.int64))
        os.replace(tmp, self.folder / f"{uid}.npz")
        if len(pcm):
            sf.write(str(self.folder / f"{uid}.wav"), np.asarray(pcm, np.int16), RATE, "PCM_16")
        doc = dict(meta or {})
        doc["time"] = time.time()
        (self.folder / f"{uid}.json").write_text(json.dumps(doc) + "\n", encoding="utf-8")
        return uid

    def ids(self) -> list[str]:
        """Every kept recording, oldest first."""
        if not self.folder.is_dir():
            return []
        return sorted(p.stem for p in self.folder.glob("*.npz") if not p.name.startswith("."))

    def fingerprint(self, uid: str) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """The (hashes, times) kept for `uid`."""
        with np.load(self.folder / f"{uid}.npz", allow_pickle=False) as z:
            return z["hashes"].astype(np.int64), z["times"].astype(np.int64)

    def groups(self) -> list[UnknownGroup]:
        """The kept recordings clustered by similarity, biggest group first."""
        reps: list[tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]] = []
        groups: list[UnknownGroup] = []
        for uid in self.ids():
            try:
                fp = self.fingerprint(uid)
            except (OSError, KeyError, ValueError):
                continue  # a half-written or damaged entry: skip it, never fail the listing
            when = self._time(uid)
            for rep, g in zip(reps, groups, strict=True):
                v = similarity(fp, rep)
                if v >= SAME_MIN_VOTES and v >= SAME_MIN_SHARE * min(len(fp[0]), len(rep[0])):
                    g.ids.append(uid)
                    g.last_seen = max(g.last_seen, when)
                    g.first_seen = min(g.first_seen, when)
                    break
            else:
                wav = self.folder / f"{uid}.wav"
                reps.append(fp)
                groups.append(UnknownGroup([uid], str(wav) if wav.exists() else "", when, when))
        groups.sort(key=lambda g: -len(g.ids))
        return groups

    def _time(self, uid: str) -> float:
        try:
            doc = json.loads((self.folder / f"{uid}.json").read_text(encoding="utf-8"))
            return float(doc.get("time", 0.0))
        except (OSError, ValueError, TypeError):
            return 0.0
