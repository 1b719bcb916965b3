"""Build a template library from a generated corpus's templates (docs/corpus.md).

    python bench/corpus/build_library.py [--corpus bench/corpus/out] [--dest DIR] [--all]

Default: the library shipped in the package, sipclient/classify/library/, as
a small subset (one voice per category and phrasing, voices rotating so all
of them appear): 26 espeak-ng recordings, a few MB. `--all` takes every
template (what bench/classify.py builds into bench/out/library). Templates
are added through `TemplateLibrary.add`, exactly as `sipclient templates
add` does, so the manifest and the index are the classifier's own.

These are synthetic voices, not carrier recordings: an operator replaces or
extends the library with real captures (docs/corpus.md, "The default library").
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE_LIBRARY = ROOT / "sipclient" / "classify" / "library"
sys.path.insert(0, str(Path(__file__).resolve().parent))  # make.py, a sibling script


def pick_subset(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    """The templates of the shipped library: one voice per (category, phrasing), rotating."""
    from make import shipped

    return [r for r in rows if shipped(r["source"])]


def clear(dest: Path) -> None:
    """Remove a previous library from `dest`: its manifest's WAVs, manifest and index only."""
    manifest = dest / "templates.json"
    if manifest.is_file():
        for row in json.loads(manifest.read_text(encoding="utf-8")).get("templates", []):
            (dest / Path(row["file"]).name).unlink(missing_ok=True)
        manifest.unlink()
    (dest / "index.npz").unlink(missing_ok=True)


def build(corpus: Path, dest: Path, *, subset: bool, replace: bool = True) -> int:
    """Add the corpus templates (all, or the shipped subset) to the library at `dest`.

    Returns how many templates were added.
    """
    from sipclient.classify.templates import TemplateLibrary

    with (corpus / "labels.csv").open(encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == "templates"]
    if not rows:
        raise SystemExit(f"{corpus}/labels.csv lists no templates: run make.py first")
    if subset:
        rows = pick_subset(rows)
    dest.mkdir(parents=True, exist_ok=True)
    if replace:
        clear(dest)
    lib = TemplateLibrary.load(dest, create=True)
    for r in rows:
        lib.add(corpus / r["file"], r["verdict"], r["label"])
    return len(rows)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: build, then print what the library holds and its size."""
    ap = argparse.ArgumentParser(description="build a template library from the corpus")
    ap.add_argument("--corpus", type=Path, default=ROOT / "bench" / "corpus" / "out")
    ap.add_argument("--dest", type=Path, default=PACKAGE_LIBRARY)
    ap.add_argument("--all", action="store_true", help="every template, not the small subset")
    a = ap.parse_args(argv)
    if not (a.corpus / "labels.csv").is_file():
        print(f"no corpus at {a.corpus}: run bench/corpus/make.py first", file=sys.stderr)
        return 2
    n = build(a.corpus, a.dest, subset=not a.all)
    size = sum(p.stat().st_size for p in a.dest.iterdir() if p.is_file())
    print(f"library {a.dest}: {n} templates, {size / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
