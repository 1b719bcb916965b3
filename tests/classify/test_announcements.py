"""Announcements matched against a template library, and the unknown store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sipclient.classify.decide import classify_pcm
from sipclient.classify.templates import LABELS, TemplateLibrary, verdict_for_label
from sipclient.classify.unknowns import UnknownStore
from sipclient.classify.verdicts import Signalling, Verdict
from tests.classify.conftest import ANNOUNCEMENTS, Pcm, cadence, degrade, to_int16

EARLY = Signalling(early_media=True)  # a 183 with SDP, nothing else
CANCELLED = Signalling(sip_code=487, early_media=True, cancelled_by_us=True)


def capture(x: Pcm, *, offset_s: float = 0.0, ringback_s: float = 0.0, how: str = "clean") -> Pcm:
    """What the recorder hears: ringback, then the recording looped from `offset_s`."""
    loop = np.concatenate([x, np.zeros(8000)])
    body = np.concatenate([loop[int(offset_s * 8000) :], loop])[: 8 * 8000]
    rb = cadence((450.0,), [(1.0, 4.0)], ringback_s, level_db=-14.0) if ringback_s else np.zeros(0)
    return degrade(np.concatenate([rb, body]), how)


@pytest.mark.parametrize("stem", sorted(ANNOUNCEMENTS))
@pytest.mark.parametrize(
    ("offset_s", "ringback_s", "how"),
    [(0.0, 0.0, "clean"), (0.73, 0.0, "g711"), (1.31, 6.2, "noise"), (0.4, 3.3, "all")],
)
def test_recognised_anywhere_after_ringback_through_degradations(
    library: TemplateLibrary,
    speech_dir: dict[str, Pcm],
    stem: str,
    offset_s: float,
    ringback_s: float,
    how: str,
) -> None:
    x = capture(speech_dir[stem], offset_s=offset_s, ringback_s=ringback_s, how=how)
    d = classify_pcm(to_int16(x), 8000, CANCELLED, library)
    _, verdict, label = ANNOUNCEMENTS[stem]
    assert d.verdict == Verdict(verdict), d.evidence
    assert d.label == label
    assert d.evidence["kind"] == "announcement"
    assert d.decided_ms is not None and d.decided_ms > ringback_s * 1000
    # sure within a few seconds of the announcement starting
    assert d.decided_ms - ringback_s * 1000 <= 4000


def test_unknown_speech_is_unknown_and_kept(
    library: TemplateLibrary, speech_dir: dict[str, Pcm], tmp_path: Path
) -> None:
    store = UnknownStore(tmp_path / "unknown")
    for i in range(3):
        x = capture(speech_dir["unknown"], offset_s=0.3 * i, how="noise" if i else "clean")
        d = classify_pcm(to_int16(x), 8000, CANCELLED, library, unknown_store=store)
        assert d.verdict == Verdict.UNKNOWN
        assert d.evidence["audio"] == "sound matching no template"
        assert "unknown_id" in d.evidence
    x = capture(speech_dir["ad"])
    classify_pcm(to_int16(x), 8000, CANCELLED, library, unknown_store=store)
    groups = store.groups()
    assert [len(g.ids) for g in groups] == [3, 1]
    assert Path(groups[0].example_wav).exists()


def test_the_unknown_store_stops_keeping_at_its_cap_also_across_restarts(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "unknown"
    h = np.arange(50, dtype=np.int64)
    pcm = np.zeros(800, dtype=np.int16)
    store = UnknownStore(folder, max_kept=3)
    kept = [store.add(h, h, pcm) for _ in range(5)]
    assert all(kept[:3]) and kept[3:] == [None, None]
    assert len(store.ids()) == 3
    # a new process (the server restarted) counts what the folder already holds
    assert UnknownStore(folder, max_kept=4).add(h, h, pcm) is not None
    assert UnknownStore(folder, max_kept=4).add(h, h, pcm) is None
    assert len(store.ids()) == 4
    # a person labels them and clears the folder: the store keeps again, no restart
    for f in folder.iterdir():
        f.unlink()
    store._recount_at = 0.0  # (a minute later)
    assert store.add(h, h, pcm) is not None and len(store.ids()) == 1


def test_library_add_list_reload(tmp_path: Path, speech_dir: dict[str, Pcm]) -> None:
    import soundfile as sf

    src = tmp_path / "k.wav"
    sf.write(str(src), speech_dir["kong"], 8000, subtype="PCM_16")
    lib = TemplateLibrary.load(tmp_path / "lib", create=True)
    e = lib.add(src, None, "空号")  # verdict from the label table
    assert e.verdict == Verdict.EMPTY and e.hashes > 100
    e2 = lib.add(src, "failed", "网络忙")
    assert e2.file != e.file and e2.transient
    again = TemplateLibrary.load(tmp_path / "lib")
    assert [(x.file, x.verdict, x.label) for x in again.entries()] == [
        (x.file, x.verdict, x.label) for x in lib.entries()
    ]
    assert (tmp_path / "lib" / "index.npz").exists()


def test_label_table() -> None:
    assert verdict_for_label("欠费") == Verdict.SUSPENDED
    assert verdict_for_label("网络忙") == Verdict.FAILED and LABELS["网络忙"][1]
    assert verdict_for_label("拨号方式不正确") == Verdict.EMPTY
    assert verdict_for_label("Powered Off") == Verdict.POWERED_OFF
    assert verdict_for_label("no such label") is None


def test_bad_library(tmp_path: Path) -> None:
    from sipclient.classify.templates import LibraryError

    with pytest.raises(LibraryError):
        TemplateLibrary.load(tmp_path / "missing")
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "templates.json").write_text("{not json")
    with pytest.raises(LibraryError):
        TemplateLibrary.load(tmp_path / "lib")
    lib = TemplateLibrary.load(tmp_path / "ok", create=True)
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"nope")
    with pytest.raises(LibraryError):
        lib.add(bad, "empty")
    with pytest.raises(LibraryError):
        lib.add(bad, "not-a-verdict")


def test_shipped_index_is_valid_in_a_copy_with_new_mtimes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fresh clone or an installed package has new mtimes: the shipped index must
    still be used (the cache key is the WAVs' contents), not rebuilt in place."""
    import os
    import shutil

    import sipclient.classify.templates as templates

    src = Path(templates.__file__).parent / "library"
    copy = tmp_path / "library"
    shutil.copytree(src, copy)
    for p in copy.iterdir():
        os.utime(p, (1, 1))
    before = (copy / "index.npz").read_bytes()

    def no_fingerprinting(_pcm: object) -> object:
        raise AssertionError("the index was rebuilt")

    monkeypatch.setattr(templates, "fingerprint_pcm", no_fingerprinting)
    lib = TemplateLibrary.load(copy)
    assert len(lib) == len(TemplateLibrary.default())
    assert (copy / "index.npz").read_bytes() == before
    # a changed recording does change the key: its index is made again
    wav = next(copy.glob("*.wav"))
    data = bytearray(wav.read_bytes())
    data[-2:] = b"\x01\x01"
    wav.write_bytes(bytes(data))
    with pytest.raises(AssertionError, match="rebuilt"):
        TemplateLibrary.load(copy)
