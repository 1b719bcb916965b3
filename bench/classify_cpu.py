"""CPU cost of the classifier's per-frame feature extraction, component by component.

    python bench/classify_cpu.py [--corpus bench/corpus/out] [--files 120] [--block 800]
                                 [--library bench/out/library] [--together 20] [--turn 1]

The `CallClassifier.feed` line is the whole streaming path (`feed` in
160-sample packets until it decides, as the daemon fed it until session 21):
the figure to compare two versions of decide.py with, run alternately in one
hour (PYTHONPATH=<tree>). The last line is the daemon's path since then
(agent/analysis.py): --together calls streamed in lockstep, the blocks
completed in --turn rounds of packets analysed together (`analyse_many`).

Streams test captures (all of them, or an even spread of --files) through
`frames.FrameSource` + `tones.classify_frames` and `fingerprint.Fingerprinter`
(with variants, as decide.py uses it) in --block samples per push (800: the
100 ms block decide.py analyses), and prints `time.process_time` per second of
audio for each: the figure the daemon's budget is written in (200 calls under
half a core is 0.0025 CPU s per audio s for everything a call costs). The
best of --repeat passes is printed, to keep other load on the box out of it.

Figures (12:36 UTC, shared 2-core box with two other jobs running; CPU s per
audio s, before -> after the bit-identical rewrite of the three modules):
frames 0.00048-0.00057 -> 0.00032, tones 0.00043-0.00055 -> 0.00040-0.00047,
fingerprint 0.0038-0.0041 -> 0.0025-0.0027, total 0.0047-0.0052 -> 0.0032-0.0035.
Old and new run interleaved push by push (best of 5 each, which keeps the load
out): fingerprint 0.0036 -> 0.0021 (0.60), frames 0.00054 -> 0.00038 (0.70),
tones 0.00035 -> 0.00031 (0.87).

Since then decide.py no longer runs `FrameSource.push`'s FFT: it takes the
frames' spectra from the fingerprinter (`Fingerprinter.frame_power`, the same
windows) and only the RMS from `FrameSource.push_rms`; the frames line here
is what that saves (CallClassifier.feed over 120 captures, cProfile run:
0.0071 -> 0.0067 CPU s per audio s).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt
import soundfile as sf

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

from sipclient.classify.decide import CallClassifier, analyse_many  # noqa: E402
from sipclient.classify.fingerprint import Fingerprinter  # noqa: E402
from sipclient.classify.frames import FrameSource  # noqa: E402
from sipclient.classify.templates import TemplateLibrary  # noqa: E402
from sipclient.classify.tones import classify_frames  # noqa: E402
from sipclient.classify.verdicts import Signalling  # noqa: E402

Pcm = npt.NDArray[np.int16]


def load(corpus: Path, files: int) -> list[Pcm]:
    paths = sorted((corpus / "test").glob("*.wav"))
    if not paths:
        raise SystemExit(f"no captures in {corpus / 'test'} (bench/corpus/make.py makes them)")
    if files and files < len(paths):
        paths = [paths[i * len(paths) // files] for i in range(files)]
    return [np.asarray(sf.read(p, dtype="int16")[0], dtype=np.int16) for p in paths]


def cpu(pcms: list[Pcm], block: int, run: Callable[[Pcm, int], None], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.process_time()
        for x in pcms:
            run(x, block)
        best = min(best, time.process_time() - t0)
    return best


def run_frames(x: Pcm, block: int) -> None:
    fs = FrameSource()
    for i in range(0, len(x), block):
        fs.push(x[i : i + block])


def run_tones(x: Pcm, block: int) -> None:
    fs = FrameSource()
    for i in range(0, len(x), block):
        classify_frames(*fs.push(x[i : i + block]))


def run_fingerprint(x: Pcm, block: int) -> None:
    fp = Fingerprinter(variants=True)
    for i in range(0, len(x), block):
        fp.push(x[i : i + block])


def streamed(pcms: list[Pcm], library: TemplateLibrary, repeat: int) -> tuple[float, float]:
    """The whole streaming path as the daemon drives it: `CallClassifier.feed` in
    160-sample packets until it decides (early media, no 180). (CPU s, audio s fed)."""
    best, fed = float("inf"), 0
    for _ in range(repeat):
        fed = 0
        t0 = time.process_time()
        for x in pcms:
            c = CallClassifier(library)
            c.on_signalling(Signalling(early_media=True), 0)
            for i in range(0, len(x), 160):
                fed += min(160, len(x) - i)
                if c.feed(x[i : i + 160]) is not None:
                    break
        best = min(best, time.process_time() - t0)
    return best, fed / 8000


def together(
    pcms: list[Pcm], library: TemplateLibrary, repeat: int, calls: int, turn: int = 1
) -> tuple[float, float]:
    """The same, the daemon's way since agent/analysis.py: `calls` captures at a time,
    fed 160 samples a packet in lockstep (call j starting j % 5 packets late, so their
    blocks end in different rounds), and after each round of packets the blocks
    completed in it analysed together (`analyse_many`), as one loop turn does; with
    `turn` > 1, after every `turn` rounds (a busy daemon's longer turns: more calls a
    batch, and blocks a frame or two longer). (CPU s, audio s fed)."""
    best, fed = float("inf"), 0
    for _ in range(repeat):
        fed = 0
        t0 = time.process_time()
        for first in range(0, len(pcms), calls):
            group = pcms[first : first + calls]
            cs = [CallClassifier(library) for _ in group]
            for c in cs:
                c.on_signalling(Signalling(early_media=True), 0)
            at = [-(j % 5) * 160 for j in range(len(group))]
            live = list(range(len(group)))
            ready: list[CallClassifier] = []
            rounds = 0
            while live:
                for j in live:
                    if at[j] >= 0:
                        piece = group[j][at[j] : at[j] + 160]
                        fed += len(piece)
                        if cs[j].take(piece) and cs[j] not in ready:
                            ready.append(cs[j])
                    at[j] += 160
                rounds += 1
                live = [j for j in live if at[j] < len(group[j]) and cs[j].decision is None]
                if ready and (rounds % turn == 0 or not live):  # a turn's end, or the last
                    analyse_many(ready)
                    ready = []
                    live = [j for j in live if cs[j].decision is None]
        best = min(best, time.process_time() - t0)
    return best, fed / 8000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", type=Path, default=ROOT / "corpus" / "out")
    ap.add_argument("--files", type=int, default=120, help="0: every test capture")
    ap.add_argument("--block", type=int, default=800, help="samples per push")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument(
        "--together",
        type=int,
        default=20,
        help="calls streamed at once for the analyse_many line (0: leave it out)",
    )
    ap.add_argument("--turn", type=int, default=1, help="packet rounds per analyse_many")
    ap.add_argument(
        "--library",
        type=Path,
        default=ROOT / "out" / "library",
        help="for the streaming line (default: bench/classify.py's corpus library)",
    )
    args = ap.parse_args()
    pcms = load(args.corpus, args.files)
    audio = sum(len(x) for x in pcms) / 8000
    print(f"{len(pcms)} captures, {audio:.0f} s of audio, {args.block} samples per push")
    frames = cpu(pcms, args.block, run_frames, args.repeat)
    tones = cpu(pcms, args.block, run_tones, args.repeat) - frames
    fprint = cpu(pcms, args.block, run_fingerprint, args.repeat)
    for name, s in (
        ("frames.FrameSource.push", frames),
        ("tones.classify_frames", tones),
        ("fingerprint.Fingerprinter.push", fprint),
        ("total", frames + tones + fprint),
    ):
        print(f"{name:32s} {s / audio:.6f} CPU s per audio s")
    lib = TemplateLibrary.load(args.library) if args.library.is_dir() else TemplateLibrary.default()
    s, fed = streamed(pcms, lib, args.repeat)
    print(
        f"{'CallClassifier.feed, 160 a push':32s} {s / fed:.6f} CPU s per audio s"
        f" ({fed:.0f} s fed until the decisions, library of {len(lib)})"
    )
    if args.together:
        s, fed = together(pcms, lib, args.repeat, args.together, args.turn)
        name = f"analyse_many, {args.together} calls, {args.turn} round(s) a turn"
        print(f"{name:32s} {s / fed:.6f} CPU s per audio s ({fed:.0f} s fed until the decisions)")


if __name__ == "__main__":
    main()
