"""The benchmark corpus generator (bench/corpus/make.py) and its degradations.

One small corpus (--per-class 1, real espeak-ng and sox) is generated per
module run; the rest are checks on its labels and on the degradation
functions with known inputs.
"""

from __future__ import annotations

import csv
import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from sipclient.classify.verdicts import Verdict

ROOT = Path(__file__).resolve().parents[2]
CORPUS_DIR = ROOT / "bench" / "corpus"

pytestmark = pytest.mark.peers


def _load(name: str) -> ModuleType:
    if str(CORPUS_DIR) not in sys.path:
        sys.path.insert(0, str(CORPUS_DIR))
    spec = importlib.util.spec_from_file_location(f"corpus_{name}", CORPUS_DIR / f"{name}.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


make = _load("make")
degrade = _load("degrade")


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, str]]]:
    out = tmp_path_factory.mktemp("corpus")
    proc = subprocess.run(
        [
            sys.executable,
            str(CORPUS_DIR / "make.py"),
            "--out",
            str(out),
            "--per-class",
            "1",
            "--seed",
            "7",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "templates" in proc.stdout
    with (out / "labels.csv").open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return out, rows


def _degr(row: dict[str, str]) -> dict[str, str]:
    return dict(p.split("=", 1) for p in row["degradations"].split(";") if p)


def test_corpus_labels_match_files_on_disk(small_corpus: tuple[Path, list[dict[str, str]]]) -> None:
    out, rows = small_corpus
    assert tuple(rows[0].keys()) == make.COLUMNS
    listed = {r["file"] for r in rows}
    on_disk = {
        str(p.relative_to(out)) for sub in ("templates", "test") for p in (out / sub).glob("*.wav")
    }
    assert listed == on_disk
    verdicts = {v.value for v in Verdict}
    for r in rows:
        info = sf.info(str(out / r["file"]))
        assert (info.samplerate, info.channels, info.subtype) == (8000, 1, "PCM_16"), r["file"]
        assert abs(info.frames * 1000 // 8000 - int(r["duration_ms"])) <= 1
        assert r["verdict"] in verdicts
        assert r["split"] in ("templates", "test")
        assert r["kind"] in ("announcement", "tone", "crbt", "silence")
        if r["kind"] == "silence":
            assert r["evidence_start_ms"] == ""
        else:
            assert 0 <= int(r["evidence_start_ms"]) < int(r["duration_ms"])
        if r["kind"] == "announcement":
            assert int(r["evidence_start_ms"]) <= int(r["distinct_ms"]) < int(r["duration_ms"])
        else:
            assert r["distinct_ms"] == ""


def test_corpus_distinct_ms_marks_phrases_other_verdicts_share(
    small_corpus: tuple[Path, list[dict[str, str]]],
) -> None:
    _, rows = small_corpus
    t = {r["source"]: int(r["distinct_ms"]) for r in rows if r["split"] == "templates"}
    # 您拨打的号码是空号 / 您拨打的号码拨号方式不正确 (also empty) but 您拨打的电话已停机 ... :
    # the first ~1 s is said word for word by recordings of other verdicts
    for voice in make.VOICES:
        assert t[f"kong_p0_{voice.key}"] >= 700
        # 对不起，您拨打的电话已关机 vs 对不起，您拨打的号码已停机: only 关 tells them apart
        assert t[f"guanji_p0_{voice.key}"] >= 1500
    assert min(t.values()) >= 0


def test_corpus_first_distinct_walks_the_loop() -> None:
    mask = np.zeros(100, dtype=bool)
    mask[60:70] = True
    loop = 120 * 160  # recording of 100 frames + 20 frames of pause
    assert make.first_distinct_ms(mask, 0, loop, 500) == 500 + 60 * 20
    assert make.first_distinct_ms(mask, 65 * 160, loop, 0) == 0
    # starting after the distinct part: through the pause, round to the next repeat
    assert make.first_distinct_ms(mask, 80 * 160, loop, 0) == (40 + 60) * 20
    assert make.first_distinct_ms(np.zeros(100, dtype=bool), 0, loop, 0) == -1


def test_corpus_has_every_class_and_the_documented_mapping(
    small_corpus: tuple[Path, list[dict[str, str]]],
) -> None:
    _, rows = small_corpus
    test = [r for r in rows if r["split"] == "test"]
    labels = {r["label"] for r in test}
    for cat in make.CATEGORIES:
        assert cat.label in labels
    for tone in make.TONES:
        assert tone.name in labels
    assert {"crbt_music", "crbt_ad"} <= labels
    expect = {
        "空号": "empty",
        "关机": "powered_off",
        "停机": "suspended",
        "欠费": "suspended",
        "暂时无法接通": "unreachable",
        "不在服务区": "unreachable",
        "正在通话中": "busy",
        "呼叫受限": "restricted",
        "改号": "changed",
        "网络忙": "failed",
        "拨号方式不正确": "empty",
        "来电提醒": "powered_off",
        "呼叫转移失败": "unreachable",
        "cn_ringback": "ringing",
        "na_ringback": "ringing",
        "crbt_music": "ringing",
        "crbt_ad": "ringing",
        "cn_busy": "busy",
        "na_busy": "busy",
        "cn_empty": "empty",
    }
    for r in test:
        if r["label"] in expect:
            assert r["verdict"] == expect[r["label"]], r
        if r["verdict"] == "ringing":
            assert "ringing=1" in r["signalling"]
        if r["kind"] == "announcement":
            assert r["signalling"] == "early_media=1"
    assert {r["transient"] for r in test if r["label"] == "网络忙"} == {"1"}


def test_corpus_test_part_shares_no_file_with_templates(
    small_corpus: tuple[Path, list[dict[str, str]]],
) -> None:
    out, rows = small_corpus
    templates = {r["source"]: r for r in rows if r["split"] == "templates"}
    tbytes = {k: (out / v["file"]).read_bytes() for k, v in templates.items()}
    digests = {hash(b) for b in tbytes.values()}
    for r in rows:
        if r["split"] != "test":
            continue
        data = (out / r["file"]).read_bytes()
        assert hash(data) not in digests
        if r["kind"] != "announcement":
            assert r["source"] == ""
            continue
        # every announcement capture comes from a template's recording, same class ...
        src = templates[r["source"]]
        assert (src["label"], src["verdict"]) == (r["label"], r["verdict"])
        # ... but is a degraded rendering: not even 50 ms of it is the template's samples
        pcm, _ = sf.read(str(out / r["file"]), dtype="int16")
        start = int(r["evidence_start_ms"]) * 8 + 4000
        for k in range(3):
            chunk = pcm[start + k * 800 : start + k * 800 + 400].tobytes()
            assert len(chunk) == 800
            assert tbytes[r["source"]].find(chunk) == -1


def test_corpus_files_carry_the_claimed_level_and_loss(
    small_corpus: tuple[Path, list[dict[str, str]]],
) -> None:
    out, rows = small_corpus
    checked = 0
    for r in rows:
        if r["split"] != "test" or r["kind"] != "tone":
            continue
        d = _degr(r)
        x, _ = sf.read(str(out / r["file"]), dtype="float64")
        n = len(x) // 160
        power = np.mean(x[: n * 160].reshape(n, 160) ** 2, axis=1)
        # the tone's 'on' frames (the loudest ones, every tone here is on > 10 % of the
        # time) were at TARGET_DBFS; noise at >= 10 dB SNR adds < 0.5 dB
        level = 10 * np.log10(np.percentile(power, 90))
        assert abs(level - (make.TARGET_DBFS + float(d["level_db"]))) < 1.5, (r["file"], level)
        zero = int(np.sum(np.all(x[: n * 160].reshape(n, 160) == 0.0, axis=1)))
        lost, dup, drop = int(d["lost_frames"]), int(d["dup_frames"]), int(d["drop_frames"])
        assert lost - drop <= zero <= lost + dup, (r["file"], zero, lost, dup, drop)
        assert d["codec"] in ("ulaw", "alaw")
        assert 10.0 <= float(d["snr_db"]) <= 30.0
        assert 20.0 <= float(d["jitter_ms"]) <= 60.0
        checked += 1
    assert checked == len(make.TONES)


def test_corpus_g711_copies_are_whole_ulaw_packets(
    small_corpus: tuple[Path, list[dict[str, str]]],
) -> None:
    out, _ = small_corpus
    with (out / "g711" / "index.csv").open(encoding="utf-8") as f:
        index = list(csv.DictReader(f))
    assert len(index) >= 5
    for row in index:
        raw = np.frombuffer((out / row["file"]).read_bytes(), dtype=np.uint8)
        assert len(raw) > 0 and len(raw) % 160 == 0
        if row["source"]:  # announcements: a recording the shipped library holds
            assert make.shipped(row["source"])
        pcm, _ = sf.read(str(out / row["from"]), dtype="int16")
        back = degrade.ulaw_decode(raw).astype(np.float64)
        ref = pcm[: len(back)].astype(np.float64)
        err = float(np.mean((back - ref) ** 2)) / max(float(np.mean(ref**2)), 1e-9)
        assert err < 0.01  # µ-law keeps speech/tones within ~30 dB SQNR


def test_corpus_noise_is_added_at_the_requested_snr() -> None:
    rng = np.random.default_rng(3)
    t = np.arange(16000) / 8000
    clean = 0.1 * np.sin(2 * np.pi * 450 * t) * (np.sin(2 * np.pi * 0.5 * t) > 0)
    for snr in (10.0, 20.0, 30.0):
        noisy = degrade.add_noise(clean, snr, rng)
        assert abs(degrade.snr_db(clean, noisy) - snr) < 0.3


def test_corpus_level_drop_and_jitter_do_what_they_say() -> None:
    rng = np.random.default_rng(5)
    x = rng.uniform(-0.5, 0.5, 8000 * 4)
    y = degrade.set_level(x, -20.0)
    assert np.allclose(y, x * 0.1)
    z, lost = degrade.drop_frames(x, 0.05, rng)
    frames = z.reshape(-1, 160)
    assert int(np.sum(np.all(frames == 0.0, axis=1))) == lost > 0
    j, dup, _ = degrade.jitter_buffer(x, 60.0, rng)
    assert len(j) == len(x)
    assert dup > 0
    assert not np.array_equal(j, x)
    # frames stay whole: every output frame is some input frame (or silence)
    inframes = {x[i * 160 : (i + 1) * 160].tobytes() for i in range(len(x) // 160)}
    inframes.add(np.zeros(160).tobytes())
    assert all(j[i * 160 : (i + 1) * 160].tobytes() in inframes for i in range(len(j) // 160))


def test_corpus_g711_round_trip_is_close_but_not_identical() -> None:
    t = np.arange(8000) / 8000
    x = 0.3 * np.sin(2 * np.pi * 1000 * t)
    for law in ("ulaw", "alaw"):
        y = degrade.g711_round_trip(x, law)
        assert not np.array_equal(y, x)
        sqnr = degrade.snr_db(x, y)
        assert 30.0 < sqnr < 50.0, (law, sqnr)
    codes = np.arange(256, dtype=np.uint8)
    # decoding then encoding is the identity on every code but µ-law's two zeros
    assert np.sum(degrade.ulaw_encode(degrade.ulaw_decode(codes)) != codes) <= 1
    assert np.array_equal(degrade.alaw_encode(degrade.alaw_decode(codes)), codes)


def test_corpus_tone_captures_repeat_exactly_for_a_seed(tmp_path: Path) -> None:
    cap: Any = make.Capture("tone_cn_busy_000", "tone", "cn_busy", "busy", False)
    a, fa = make.make_capture(cap, 11, tmp_path, tmp_path)
    b, fb = make.make_capture(cap, 11, tmp_path, tmp_path)
    c, _ = make.make_capture(cap, 12, tmp_path, tmp_path)
    assert np.array_equal(a, b) and fa == fb
    assert not np.array_equal(a[: len(c)], c[: len(a)])


def test_corpus_build_library_adds_the_subset_through_the_classifier(
    small_corpus: tuple[Path, list[dict[str, str]]], tmp_path: Path
) -> None:
    from sipclient.classify.templates import TemplateLibrary

    out, rows = small_corpus
    build_library = _load("build_library")
    dest = tmp_path / "lib"
    n = build_library.build(out, dest, subset=True)
    templates = {r["source"]: r for r in rows if r["split"] == "templates"}
    assert n == len(templates) // 3  # one voice of three per (category, phrasing)
    lib = TemplateLibrary.load(dest)
    assert len(lib) == n
    voices = set()
    for e in lib.entries():
        src = templates[Path(e.file).stem]
        assert (e.verdict.value, e.label) == (src["verdict"], src["label"])
        voices.add(Path(e.file).stem.rsplit("_", 1)[1])
    assert voices == {v.key for v in make.VOICES}
    # rebuilding replaces, it does not pile up
    assert build_library.build(out, dest, subset=True) == n
    assert len(TemplateLibrary.load(dest)) == n


def test_corpus_bench_reads_the_signalling_columns() -> None:
    bench = _load_bench()
    start = bench.parse_signalling("ringing=1;early_media=1")
    assert (start.ringing, start.early_media, start.sip_code) == (True, True, None)
    end = bench.parse_signalling("sip_code=487;cancelled_by_us=1", start)
    assert (end.sip_code, end.cancelled_by_us, end.ringing) == (487, True, True)
    silent = bench.parse_signalling("sip_code=404;q850_cause=1")
    assert (silent.sip_code, silent.q850_cause, silent.ringing) == (404, 1, False)
    with pytest.raises(ValueError, match="unknown signalling field"):
        bench.parse_signalling("sipcode=404")


def _load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_classify", ROOT / "bench" / "classify.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod
