"""The template library: labelled carrier announcements and their fingerprint index.

A library is a folder of WAV files plus `templates.json`, the manifest
(`{"templates": [{"file", "verdict", "label"}, ...]}`); the index (every
template's landmark hashes, fingerprint.py) is built from the WAVs when the
library is loaded and cached beside them in `index.npz` when the folder is
writable (rebuilt whenever the manifest or a WAV changes).

`TemplateLibrary.default()` is the folder shipped in the package
(sipclient/classify/library/); `TemplateLibrary.load(folder)` any other.

Labels map onto verdicts (PROTOCOL.md "Verdicts") through `LABELS`, the one
table of it; `add(..., verdict=None)` takes the verdict from it:

| label | verdict | transient |
| --- | --- | --- |
| 空号, 拨号方式不正确, not in service, invalid number | empty | |
| 关机, 来电提醒, powered off | powered_off | |
| 停机, 欠费, suspended | suspended | |
| 暂时无法接通, 不在服务区, 呼叫转移失败, unreachable | unreachable | |
| 正在通话中, busy | busy | |
| 无人接听, no answer | no_answer | |
| 呼叫受限, restricted | restricted | |
| 改号, changed | changed | |
| 网络忙, network busy | failed | yes |
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from sipclient.classify.audio import FRAME, RATE, AudioError, load_pcm
from sipclient.classify.fingerprint import HOP, fingerprint_pcm
from sipclient.classify.fingerprint import VERSION as FP_VERSION
from sipclient.classify.verdicts import Verdict

V = Verdict

LABELS: dict[str, tuple[Verdict, bool]] = {
    "空号": (V.EMPTY, False),
    "拨号方式不正确": (V.EMPTY, False),
    "not in service": (V.EMPTY, False),
    "invalid number": (V.EMPTY, False),
    "关机": (V.POWERED_OFF, False),
    "来电提醒": (V.POWERED_OFF, False),
    "powered off": (V.POWERED_OFF, False),
    "停机": (V.SUSPENDED, False),
    "欠费": (V.SUSPENDED, False),
    "suspended": (V.SUSPENDED, False),
    "暂时无法接通": (V.UNREACHABLE, False),
    "不在服务区": (V.UNREACHABLE, False),
    "呼叫转移失败": (V.UNREACHABLE, False),
    "unreachable": (V.UNREACHABLE, False),
    "正在通话中": (V.BUSY, False),
    "busy": (V.BUSY, False),
    "无人接听": (V.NO_ANSWER, False),
    "no answer": (V.NO_ANSWER, False),
    "呼叫受限": (V.RESTRICTED, False),
    "restricted": (V.RESTRICTED, False),
    "改号": (V.CHANGED, False),
    "changed": (V.CHANGED, False),
    "网络忙": (V.FAILED, True),
    "network busy": (V.FAILED, True),
}
"""Announcement label -> (verdict, transient). Labels not listed need an explicit verdict."""

TRANSIENT_LABELS = frozenset(k for k, (_, t) in LABELS.items() if t)

MANIFEST = "templates.json"
INDEX = "index.npz"
MAX_POSTINGS = 40
"""Hashes found more often than this in the library say nothing and are dropped."""

SHARED_MIN = 6
"""Common hashes on one offset that make two templates share a stretch of audio."""

_PACKAGE_DIR = Path(__file__).resolve().parent / "library"


class LibraryError(Exception):
    """The library folder or a template cannot be used; the message says why."""


@dataclass(frozen=True)
class TemplateEntry:
    """One labelled template."""

    index: int
    file: str
    verdict: Verdict
    label: str
    duration_ms: int
    hashes: int

    @property
    def transient(self) -> bool:
        """Whether this announcement means "dial again" (网络忙)."""
        return self.label in TRANSIENT_LABELS or self.label.lower() in TRANSIENT_LABELS


def verdict_for_label(label: str) -> Verdict | None:
    """The verdict a known label maps to (case-insensitive for the English ones)."""
    hit = LABELS.get(label) or LABELS.get(label.strip().lower())
    return hit[0] if hit else None


class TemplateLibrary:
    """Labelled templates and a sorted hash index over all of them."""

    def __init__(self, folder: Path | None, entries: list[TemplateEntry]) -> None:
        self.folder = folder
        self._entries = entries
        self._hashes: npt.NDArray[np.int64] = np.zeros(0, dtype=np.int64)
        self._tids: npt.NDArray[np.int32] = np.zeros(0, dtype=np.int32)
        self._times: npt.NDArray[np.int32] = np.zeros(0, dtype=np.int32)
        self.shared_postings = 0
        """Postings left out of the index as shared with another verdict's template."""
        # file name -> (hashes, anchor frames, duration ms): fingerprints already made
        self._fps: dict[str, tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], int]] = {}
        self._density: dict[int, npt.NDArray[np.int64]] = {}

    # -- construction ---------------------------------------------------------------

    @classmethod
    def empty(cls) -> TemplateLibrary:
        """A library with no template (tones and signalling still work)."""
        return cls(None, [])

    @classmethod
    def default(cls) -> TemplateLibrary:
        """The library shipped in the package (empty if it has no manifest yet)."""
        if not _PACKAGE_DIR.is_dir():
            return cls.empty()
        return cls.load(_PACKAGE_DIR, create=False)

    @classmethod
    def load(cls, folder: Path, *, create: bool = False) -> TemplateLibrary:
        """Load (and index) the library in `folder`; `create` makes an empty one."""
        folder = Path(folder)
        if not folder.is_dir():
            if not create:
                raise LibraryError(f"template folder {folder} does not exist")
            folder.mkdir(parents=True)
        manifest = folder / MANIFEST
        rows: list[dict[str, str]] = []
        if manifest.exists():
            try:
                doc = json.loads(manifest.read_text(encoding="utf-8"))
                rows = list(doc["templates"])
            except (ValueError, KeyError, TypeError) as exc:
                raise LibraryError(f"{manifest}: not a template manifest ({exc})") from exc
        lib = cls(folder, [])
        lib._build(rows)
        return lib

    def _build(self, rows: list[dict[str, str]]) -> None:
        assert self.folder is not None
        key = self._cache_key(rows)
        cached = self._read_cache(key)
        entries: list[TemplateEntry] = []
        hs: list[npt.NDArray[np.int64]] = []
        ts: list[npt.NDArray[np.int64]] = []
        tids: list[npt.NDArray[np.int32]] = []
        for i, row in enumerate(rows):
            try:
                file, verdict, label = str(row["file"]), Verdict(row["verdict"]), str(row["label"])
            except (KeyError, ValueError) as exc:
                raise LibraryError(f"{self.folder / MANIFEST}: bad entry {row!r}") from exc
            if cached is not None:
                h, t, dur = cached[i]
            elif file in self._fps:
                h, t, dur = self._fps[file]
            else:
                try:
                    pcm = load_pcm(self.folder / file)
                except AudioError as exc:
                    raise LibraryError(f"template {file}: {exc}") from exc
                lm = fingerprint_pcm(pcm)
                h, t, dur = lm.hashes, lm.times, len(pcm) * 1000 // RATE
            self._fps[file] = (h, t, int(dur))
            entries.append(TemplateEntry(i, file, verdict, label, int(dur), len(h)))
            hs.append(h)
            ts.append(t)
            tids.append(np.full(len(h), i, dtype=np.int32))
        self._entries = entries
        if cached is None and rows:
            self._write_cache(key, hs, ts, [e.duration_ms for e in entries])
        self._index(hs, ts, tids)

    def _index(
        self,
        hs: list[npt.NDArray[np.int64]],
        ts: list[npt.NDArray[np.int64]],
        tids: list[npt.NDArray[np.int32]],
    ) -> None:
        if not hs:
            return
        h = np.concatenate(hs)
        t = np.concatenate(ts).astype(np.int32)
        tid = np.concatenate(tids)
        order = np.argsort(h, kind="stable")
        h, t, tid = h[order], t[order], tid[order]
        # drop the hashes too common to tell templates apart
        uniq, start, counts = np.unique(h, return_index=True, return_counts=True)
        common = np.repeat(counts > MAX_POSTINGS, counts)
        keep = ~common
        h, t, tid = h[keep], t[keep], tid[keep]
        shared = self._shared_across_verdicts(h, t, tid)
        self.shared_postings = int(shared.sum())
        self._hashes, self._times, self._tids = h[~shared], t[~shared], tid[~shared]
        self._density = {}
        del uniq, start

    def _shared_across_verdicts(
        self, h: npt.NDArray[np.int64], t: npt.NDArray[np.int32], tid: npt.NDArray[np.int32]
    ) -> npt.NDArray[np.bool_]:
        """Postings in a stretch of audio that a template of another verdict also holds.

        Carriers (and this project's corpus) build announcements from shared
        prompts: "您拨打的用户…", "…请稍后再拨", "Sorry, the subscriber you
        dialed is…". Hashes of such a stretch say nothing about the verdict,
        so they are left out of the index: a posting is shared when another
        verdict's template has the same hash and at least SHARED_MIN hashes at
        the same time offset (a common stretch, not a chance collision).
        """
        n = len(h)
        shared = np.zeros(n, dtype=bool)
        if n == 0:
            return shared
        codes = {v: i for i, v in enumerate(Verdict)}
        verd = np.array([codes[e.verdict] for e in self._entries], dtype=np.int64)[tid]
        lo = np.searchsorted(h, h, side="left")
        hi = np.searchsorted(h, h, side="right")
        cnt = hi - lo
        total = int(cnt.sum())
        i_idx = np.repeat(np.arange(n), cnt)
        j_idx = np.repeat(lo - np.cumsum(cnt) + cnt, cnt) + np.arange(total)
        other = verd[i_idx] != verd[j_idx]
        i_idx, j_idx = i_idx[other], j_idx[other]
        if len(i_idx) == 0:
            return shared
        ntpl = max(len(self._entries), 1)
        d = (t[j_idx].astype(np.int64) - t[i_idx] + (1 << 16)) // 4
        key = (tid[i_idx].astype(np.int64) * ntpl + tid[j_idx]) * (1 << 17) + d
        _, inv, counts = np.unique(key, return_inverse=True, return_counts=True)
        shared[i_idx[counts[inv] >= SHARED_MIN]] = True
        return shared

    def _cache_key(self, rows: list[dict[str, str]]) -> str:
        assert self.folder is not None
        d = hashlib.sha256(json.dumps(rows, sort_keys=True, ensure_ascii=False).encode())
        d.update(f"fp-{FP_VERSION}".encode())
        # The WAVs' contents, not their mtimes: a fresh checkout or a copied library
        # gets new mtimes, and the shipped index (in a package folder that may be
        # read-only) must still be found valid. Hashing a few MB costs milliseconds.
        for row in rows:
            p = self.folder / str(row.get("file", ""))
            try:
                d.update(p.name.encode() + b":" + hashlib.sha256(p.read_bytes()).digest())
            except OSError:
                d.update(b"missing")
        return d.hexdigest()

    def _read_cache(
        self, key: str
    ) -> list[tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], int]] | None:
        assert self.folder is not None
        path = self.folder / INDEX
        try:
            with np.load(path, allow_pickle=False) as z:
                if str(z["key"]) != key:
                    return None
                h, t, n, dur = z["hashes"], z["times"], z["counts"], z["durations"]
        except (OSError, KeyError, ValueError):
            return None
        out = []
        pos = 0
        for k in range(len(n)):
            c = int(n[k])
            out.append(
                (h[pos : pos + c].astype(np.int64), t[pos : pos + c].astype(np.int64), int(dur[k]))
            )
            pos += c
        return out

    def _write_cache(
        self,
        key: str,
        hs: list[npt.NDArray[np.int64]],
        ts: list[npt.NDArray[np.int64]],
        durations: list[int],
    ) -> None:
        assert self.folder is not None
        try:
            fd, tmp = tempfile.mkstemp(dir=self.folder, suffix=".npz.tmp")
            with os.fdopen(fd, "wb") as f:
                np.savez(
                    f,
                    key=np.array(key),
                    hashes=np.concatenate(hs) if hs else np.zeros(0, np.int64),
                    times=np.concatenate(ts).astype(np.int32) if ts else np.zeros(0, np.int32),
                    counts=np.array([len(h) for h in hs], dtype=np.int64),
                    durations=np.array(durations, dtype=np.int64),
                )
            os.chmod(tmp, 0o644)  # mkstemp makes 0600: a daemon under another user must read it
            os.replace(tmp, self.folder / INDEX)
        except OSError:
            pass  # a read-only library is fine: it is indexed in memory each load

    # -- use ----------------------------------------------------------------------------

    def density(self, index: int) -> npt.NDArray[np.int64]:
        """Indexed postings of template `index` per 20 ms of the template (cached).

        What a perfect copy of the template would vote per frame: the
        stretches shared with other verdicts are left out of the index, so
        they expect nothing (announcements.py checks that a candidate's votes
        are not missing where it expects some).
        """
        hit = self._density.get(index)
        if hit is None:
            t = self._times[self._tids == index].astype(np.int64)
            frames = max(1, self._entries[index].duration_ms // 20 + 2)
            hit = np.bincount(np.clip(t * HOP // FRAME, 0, frames - 1), minlength=frames)
            self._density[index] = hit
        return hit

    def entries(self) -> list[TemplateEntry]:
        """The templates, in manifest order."""
        return list(self._entries)

    def entry(self, index: int) -> TemplateEntry:
        """The template with this index."""
        return self._entries[index]

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(
        self, hashes: npt.NDArray[np.int64]
    ) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.int32], npt.NDArray[np.int32]]:
        """All postings of `hashes`: (query position, template index, template frame)."""
        if len(self._hashes) == 0 or len(hashes) == 0:
            z = np.zeros(0, dtype=np.int32)
            return np.zeros(0, dtype=np.intp), z, z
        lo = np.searchsorted(self._hashes, hashes, side="left")
        hi = np.searchsorted(self._hashes, hashes, side="right")
        n = hi - lo
        total = int(n.sum())
        if total == 0:
            z = np.zeros(0, dtype=np.int32)
            return np.zeros(0, dtype=np.intp), z, z
        qpos = np.repeat(np.arange(len(hashes)), n)
        # positions lo[i] .. hi[i]-1 for each query i, flattened
        starts = np.repeat(lo - np.cumsum(n) + n, n)
        idx = starts + np.arange(total)
        return qpos, self._tids[idx], self._times[idx]

    def add(
        self, wav_path: Path, verdict: Verdict | str | None, label: str | None = None
    ) -> TemplateEntry:
        """Copy a WAV into the library under `label` with its verdict; re-index.

        `verdict` None takes it from `LABELS`; `label` None uses the verdict's name.
        """
        if self.folder is None:
            raise LibraryError("this library has no folder to add to")
        if verdict is None:
            if label is None or verdict_for_label(label) is None:
                raise LibraryError(f"no verdict given and label {label!r} is not in the table")
            v = verdict_for_label(label)
            assert v is not None
        else:
            try:
                v = Verdict(verdict)
            except ValueError as exc:
                raise LibraryError(f"unknown verdict {verdict!r}") from exc
        lab = label if label else v.value
        src = Path(wav_path)
        try:
            load_pcm(src)  # refuse what the index could not read
        except AudioError as exc:
            raise LibraryError(f"{src}: {exc}") from exc
        name = src.name
        stem, suffix = src.stem, src.suffix or ".wav"
        k = 1
        while (self.folder / name).exists():
            if (self.folder / name).resolve() == src.resolve():
                break
            name = f"{stem}-{k}{suffix}"
            k += 1
        if (self.folder / name).resolve() != src.resolve():
            shutil.copyfile(src, self.folder / name)
        rows = [
            {"file": e.file, "verdict": e.verdict.value, "label": e.label} for e in self._entries
        ]
        rows.append({"file": name, "verdict": v.value, "label": lab})
        tmp = self.folder / (MANIFEST + ".tmp")  # opened normally: umask decides, as for WAVs
        tmp.write_text(
            json.dumps({"templates": rows}, ensure_ascii=False, indent=1) + "\n", encoding="utf-8"
        )
        os.replace(tmp, self.folder / MANIFEST)
        self._build(rows)
        return self._entries[-1]
