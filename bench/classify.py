"""Benchmark the streaming classifier on the corpus's test part (docs/corpus.md).

    python bench/classify.py [--corpus bench/corpus/out] [--library DIR] [--workers 2]

Every test capture is streamed through `CallClassifier` the way the daemon
does it: the signalling the capture implies first (180 for ringback and
colour ring-back, 183 for the rest), then 20 ms frames; the first Decision
`feed` returns is the verdict (the daemon CANCELs there); a capture that
ends undecided gets `finish` with the call's final response (487 after our
CANCEL, or the 4xx/5xx of a silent call). Prints accuracy per verdict, the
confusion matrix (also bench/out/confusion.png), decision time after the
evidence starts (median, p95; for an announcement the evidence starts where
its recording first differs from every other verdict's recordings,
labels.csv `distinct_ms`: identical opening words cannot be told apart, so
the figure from the announcement's start is printed beside it, labelled),
the real-time factor (CPU seconds per second
of audio fed, `time.process_time` in the worker) and how many live numbers
were called anything else. Figures go to bench/out/classify.json, one row
per capture to bench/out/classify_files.csv.

The library is built from the corpus's templates into bench/out/library
(bench/corpus/build_library.py) unless --library names one, e.g. the shipped
sipclient/classify/library, a subset: captures of recordings it lacks then
measure announcements the library has never heard.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import statistics
import sys
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT / "corpus"))

from sipclient.classify.verdicts import Decision, Signalling, Verdict  # noqa: E402

FRAME = 160
RATE = 8000
GOALS = {"accuracy": 0.99, "live_misjudged": 0, "median_decision_s": 1.0, "rtf": 0.01}

_LIBRARY: Any = None  # per worker process


def parse_signalling(text: str, base: Signalling | None = None) -> Signalling:
    """`sip_code=487;cancelled_by_us=1;ringing=1` (a labels.csv column) -> Signalling.

    Flags not named keep their value from `base` (the final response of a call
    that rang still knows it rang).
    """
    fields: dict[str, Any] = {}
    if base is not None:
        fields = {"ringing": base.ringing, "early_media": base.early_media}
    for part in filter(None, text.split(";")):
        key, _, value = part.partition("=")
        if key in ("sip_code", "q850_cause"):
            fields[key] = int(value)
        elif key in ("ringing", "early_media", "answered", "cancelled_by_us"):
            fields[key] = value == "1"
        elif key == "sip_reason":
            fields[key] = value
        else:
            raise ValueError(f"unknown signalling field {key!r} in {text!r}")
    return Signalling(**fields)


def _init_worker(library_dir: str) -> None:
    global _LIBRARY
    from sipclient.classify.templates import TemplateLibrary

    _LIBRARY = TemplateLibrary.load(Path(library_dir))


def stream_one(path: str, signalling: str, final: str) -> dict[str, Any]:
    """Stream one capture through a fresh CallClassifier; the decision and its cost."""
    from sipclient.classify.decide import CallClassifier

    pcm, rate = sf.read(path, dtype="int16")
    if rate != RATE or pcm.ndim != 1:
        raise ValueError(f"{path}: not 8 kHz mono")
    sig = parse_signalling(signalling)
    end = parse_signalling(final, sig)
    t0 = time.process_time()
    clf = CallClassifier(_LIBRARY)
    d: Decision | None = clf.on_signalling(sig, 0)
    fed = 0
    if d is None:
        for i in range(0, len(pcm) - FRAME + 1, FRAME):
            d = clf.feed(pcm[i : i + FRAME])
            fed += FRAME
            if d is not None:
                break
    streamed = d is not None
    if d is None:
        d = clf.finish(end)
    cpu = time.process_time() - t0
    return {
        "verdict": d.verdict.value,
        "confidence": d.confidence,
        "decided_ms": d.decided_ms,
        "label": d.label,
        "streamed": streamed,
        "evidence": json.dumps(d.evidence, ensure_ascii=False, default=str),
        "cpu_s": cpu,
        "audio_s": fed / RATE,
    }


def ensure_library(corpus: Path, dest: Path) -> Path:
    """Build the bench's library from the corpus templates (unless it is up to date)."""
    from build_library import build

    stamp = dest / ".built-from"
    labels = corpus / "labels.csv"
    key = f"{labels.resolve()}:{labels.stat().st_mtime_ns}"
    if stamp.is_file() and stamp.read_text() == key:
        return dest
    build(corpus, dest, subset=False, replace=True)
    stamp.write_text(key)
    return dest


def fmt(x: float | None) -> str:
    """Seconds for the report, '-' for no data."""
    return "-" if x is None else f"{x:.2f} s"


def library_sources(library: Path) -> set[str]:
    """The corpus recording ids (file stems) a library folder's manifest holds."""
    manifest = library / "templates.json"
    if not manifest.is_file():
        return set()
    doc = json.loads(manifest.read_text(encoding="utf-8"))
    return {Path(t["file"]).stem for t in doc.get("templates", [])}


def confusion_png(names: list[str], matrix: np.ndarray, path: Path, title: str) -> None:
    """The confusion matrix (rows: expected, columns: decided) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 8))
    ax.imshow(np.log1p(matrix), cmap="Blues")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("decided")
    ax.set_ylabel("expected")
    ax.set_title(title, fontsize=9)
    for i in range(len(names)):
        for j in range(len(names)):
            if matrix[i, j]:
                color = "white" if i == j else "red"
                ax.text(j, i, str(matrix[i, j]), ha="center", va="center", color=color)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def pct(xs: list[float], q: float) -> float | None:
    """The q-th percentile (nearest rank), None for no data."""
    if not xs:
        return None
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, int(np.ceil(q / 100 * len(s))) - 1))]


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; exit 0 (figures are reported, not asserted)."""
    ap = argparse.ArgumentParser(description="classifier benchmark on the corpus test part")
    ap.add_argument("--corpus", type=Path, default=ROOT / "corpus" / "out")
    ap.add_argument(
        "--library",
        type=Path,
        default=None,
        help="template library folder (default: built from the corpus templates)",
    )
    ap.add_argument("--out", type=Path, default=ROOT / "out")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--tag", default="classify", help="output names: OUT/TAG.json ...")
    a = ap.parse_args(argv)

    labels = a.corpus / "labels.csv"
    if not labels.is_file():
        print(f"no corpus at {a.corpus}: run bench/corpus/make.py first", file=sys.stderr)
        return 2
    a.out.mkdir(parents=True, exist_ok=True)
    library = a.library or ensure_library(a.corpus, a.out / "library")
    rows = [r for r in csv.DictReader(labels.open(encoding="utf-8")) if r["split"] == "test"]

    t_wall = time.monotonic()
    with ProcessPoolExecutor(a.workers, initializer=_init_worker, initargs=(str(library),)) as pool:
        futs = [
            pool.submit(stream_one, str(a.corpus / r["file"]), r["signalling"], r["final"])
            for r in rows
        ]
        results = [f.result() for f in futs]
    wall = time.monotonic() - t_wall

    names = [v.value for v in Verdict]
    idx = {n: i for i, n in enumerate(names)}
    matrix = np.zeros((len(names), len(names)), dtype=int)
    per_verdict: dict[str, list[int]] = {}
    per_label: dict[str, list[int]] = {}
    delays: list[float] = []
    delays_by_kind: dict[str, list[float]] = {}
    from_start: list[float] = []  # announcements, from their start (not their distinct point)
    labels_right = labels_total = 0
    late: list[str] = []
    wrong: list[dict[str, Any]] = []
    live_misjudged = 0
    cpu = sum(r["cpu_s"] for r in results)
    audio = sum(r["audio_s"] for r in results)
    for row, res in zip(rows, results, strict=True):
        exp, got = row["verdict"], res["verdict"]
        ok = exp == got
        matrix[idx[exp], idx[got]] += 1
        per_verdict.setdefault(exp, [0, 0])[0] += ok
        per_verdict[exp][1] += 1
        per_label.setdefault(row["label"], [0, 0])[0] += ok
        per_label[row["label"]][1] += 1
        if exp == "ringing" and not ok:
            live_misjudged += 1
        if ok and res["decided_ms"] is not None and row["evidence_start_ms"]:
            start = int(row["evidence_start_ms"])
            distinct = row.get("distinct_ms", "")
            # an announcement is evidence from the point where it differs from every
            # other verdict's recordings: identical audio cannot be told apart before
            evidence = int(distinct) if distinct not in ("", "-1") else start
            dt = (res["decided_ms"] - evidence) / 1000
            delays.append(dt)
            delays_by_kind.setdefault(row["kind"], []).append(dt)
            if row["kind"] == "announcement":
                from_start.append((res["decided_ms"] - start) / 1000)
                if dt > 1.0:
                    late.append(f"{row['file']} {dt:.2f}s")
        if row["kind"] == "announcement":
            labels_total += 1
            labels_right += res["label"] == row["label"]
        res["ok"] = ok
        if not ok:
            wrong.append(
                {
                    "file": row["file"],
                    "expected": exp,
                    "got": got,
                    "label": row["label"],
                    "got_label": res["label"],
                    "degradations": row["degradations"],
                    "evidence": res["evidence"],
                }
            )

    right = sum(v[0] for v in per_verdict.values())
    # announcement captures whose source recording the library holds vs lacks
    held = library_sources(Path(library))
    seen: dict[str, Counter[str]] = {"held": Counter(), "not_held": Counter()}
    for row, res in zip(rows, results, strict=True):
        if row["kind"] != "announcement":
            continue
        part = "held" if row["source"] in held else "not_held"
        outcome = "right" if res["ok"] else "unknown" if res["verdict"] == "unknown" else "wrong"
        seen[part][outcome] += 1
    figures: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": f"{platform.machine()} {platform.python_version()}, 2 cores shared with "
        "other jobs (figures measured under contention)",
        "corpus": str(a.corpus),
        "library": str(library),
        "captures": len(rows),
        "accuracy": right / len(rows) if rows else None,
        "right": right,
        "per_verdict": {
            k: {"right": v[0], "total": v[1], "accuracy": v[0] / v[1]}
            for k, v in sorted(per_verdict.items())
        },
        "per_label": {k: {"right": v[0], "total": v[1]} for k, v in sorted(per_label.items())},
        "live_misjudged": live_misjudged,
        "announcements_by_library": {k: dict(v) for k, v in seen.items()},
        "decided_while_streaming": sum(r["streamed"] for r in results),
        "decision_s_after_evidence": {
            "n": len(delays),
            "median": statistics.median(delays) if delays else None,
            "p95": pct(delays, 95),
            "max": max(delays) if delays else None,
        },
        "decision_s_by_kind": {
            k: {"n": len(v), "median": statistics.median(v), "p95": pct(v, 95)}
            for k, v in sorted(delays_by_kind.items())
        },
        "evidence_point": "tones, colour ring-back, silence: evidence_start_ms; announcements: "
        "distinct_ms, where the recording first differs from every other verdict's recordings",
        "announcement_decision_s_from_start": {
            "n": len(from_start),
            "median": statistics.median(from_start) if from_start else None,
            "p95": pct(from_start, 95),
        },
        "announcements_decided_before_distinct": sum(
            x < 0 for x in delays_by_kind.get("announcement", [])
        ),
        "announcement_labels_right": {"right": labels_right, "total": labels_total},
        "rtf": cpu / audio if audio else None,
        "cpu_s": cpu,
        "audio_s": audio,
        "wall_s": wall,
        "confusion": {"names": names, "matrix": matrix.tolist()},
        "wrong": wrong,
        "goals": GOALS,
    }
    med = figures["decision_s_after_evidence"]["median"]
    figures["goals_met"] = {
        "accuracy": figures["accuracy"] is not None and figures["accuracy"] >= GOALS["accuracy"],
        "live_misjudged": live_misjudged == 0,
        "median_decision_s": med is not None and med <= GOALS["median_decision_s"],
        "rtf": figures["rtf"] is not None and figures["rtf"] <= GOALS["rtf"],
    }
    (a.out / f"{a.tag}.json").write_text(json.dumps(figures, ensure_ascii=False, indent=1))
    with (a.out / f"{a.tag}_files.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "file",
                "expected",
                "got",
                "ok",
                "label",
                "got_label",
                "decided_ms",
                "evidence_start_ms",
                "streamed",
                "cpu_s",
                "audio_s",
                "evidence",
            ]
        )
        for row, res in zip(rows, results, strict=True):
            w.writerow(
                [
                    row["file"],
                    row["verdict"],
                    res["verdict"],
                    int(res["ok"]),
                    row["label"],
                    res["label"],
                    res["decided_ms"],
                    row["evidence_start_ms"],
                    int(res["streamed"]),
                    f"{res['cpu_s']:.4f}",
                    f"{res['audio_s']:.2f}",
                    res["evidence"],
                ]
            )
    used = [n for n in names if matrix[idx[n]].sum() or matrix[:, idx[n]].sum()]
    sub = matrix[np.ix_([idx[n] for n in used], [idx[n] for n in used])]
    confusion_png(
        used,
        sub,
        a.out / f"{a.tag.replace('classify', 'confusion')}.png",
        f"{a.tag}: {right}/{len(rows)} right, library {library.name}",
    )

    print(f"{len(rows)} captures, library {library}")
    print(f"accuracy {right}/{len(rows)} = {figures['accuracy']:.3%}  (goal >= 99 %)")
    for k, v in sorted(per_verdict.items()):
        print(f"  {k:12s} {v[0]:4d}/{v[1]:<4d} {v[0] / v[1]:.1%}")
    print("confusion (rows expected, columns decided):")
    print("             " + " ".join(f"{n[:6]:>6s}" for n in used))
    for n, line in zip(used, sub, strict=True):
        print(f"  {n:10s} " + " ".join(f"{c:6d}" for c in line))
    d = figures["decision_s_after_evidence"]
    print(
        f"decision after the evidence starts (announcements: from where the recording becomes "
        f"distinct, labels.csv distinct_ms): median {fmt(d['median'])}, p95 {fmt(d['p95'])}, "
        f"max {fmt(d['max'])} (n={d['n']}; goal median <= 1.0 s)"
    )
    for k, v in figures["decision_s_by_kind"].items():
        what = " (after distinct_ms)" if k == "announcement" else ""
        print(f"  {k + what:32s} median {fmt(v['median'])}, p95 {fmt(v['p95'])} (n={v['n']})")
    ad = figures["announcement_decision_s_from_start"]
    print(
        f"  {'announcement (from its start)':32s} median {fmt(ad['median'])}, p95 {fmt(ad['p95'])} "
        f"(n={ad['n']}; includes the opening words shared with other verdicts; decided "
        f"before distinct_ms: {figures['announcements_decided_before_distinct']})"
    )
    print(f"announcement labels right (空号 vs 拨号方式不正确 ...): {labels_right}/{labels_total}")
    print(
        f"real-time factor {figures['rtf']:.5f} CPU s per audio s (goal <= 0.01; "
        f"{cpu:.1f} CPU s over {audio:.0f} s fed; 2 busy cores, under contention)"
    )
    for part, c in seen.items():
        if sum(c.values()):
            print(
                f"announcement captures, recording {part.replace('_', ' ')} by the library: "
                f"{c['right']} right, {c['unknown']} unknown, {c['wrong']} wrong"
            )
    print(f"live numbers called anything else: {live_misjudged} (goal 0)")
    print(f"decided while streaming: {figures['decided_while_streaming']}/{len(rows)}")
    for w_ in wrong[:25]:
        print(
            f"  WRONG {w_['file']}: expected {w_['expected']} got {w_['got']} "
            f"({w_['got_label']}) {w_['degradations']}"
        )
    if late:
        print(
            f"{len(late)} announcements right but later than 1 s after distinct_ms, e.g. {late[:5]}"
        )
    print(f"figures: {a.out / (a.tag + '.json')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
