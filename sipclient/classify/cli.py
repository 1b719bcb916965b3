"""`sipclient classify` and `sipclient templates`: the classifier from the shell.

`classify FILE.wav... [--sip-code N] [--q850 N] [--templates DIR]` prints one
JSON line per file: `file`, `verdict`, `confidence`, `evidence`,
`decided_ms`, `label`, `transient`. A file that cannot be read still gets its
line, with verdict `unknown` and an `error`; the exit status is then 1 (so a
script notices), after every file was tried. 0 when every file was read.

`templates [--templates DIR] add FILE.wav --verdict V [--label L]`,
`templates list`, `templates unknown [--store DIR]` manage the library
(templates.py) and list the unknown-announcement store (unknowns.py) grouped
by similarity. Without --templates: the library shipped in the package.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

DEFAULT_UNKNOWN_STORE = Path("unknown-announcements")


def _print(obj: dict[str, Any]) -> None:
    try:
        print(json.dumps(obj, ensure_ascii=False), flush=True)
    except BrokenPipeError:
        # the reader went away (`| head`): stop quietly, as Unix tools do
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(EXIT_OK) from None


def _library(folder: Path | None, *, create: bool = False) -> Any:
    from sipclient.classify.templates import TemplateLibrary

    if folder is None:
        return TemplateLibrary.default()
    return TemplateLibrary.load(folder, create=create)


def classify_main(args: argparse.Namespace) -> int:
    """Classify each file; one JSON line per file on stdout."""
    from sipclient.classify.audio import AudioError, load_pcm
    from sipclient.classify.decide import classify_pcm
    from sipclient.classify.templates import LibraryError
    from sipclient.classify.verdicts import Signalling

    try:
        library = _library(getattr(args, "templates", None))
    except LibraryError as exc:
        print(f"sipclient classify: {exc}", file=sys.stderr)
        return EXIT_USAGE
    sig = Signalling(
        sip_code=args.sip_code,
        q850_cause=args.q850,
        early_media=True,
        ringing=bool(getattr(args, "ringing", False)),
        cancelled_by_us=args.sip_code == 487,
    )
    failed = False
    for path in args.files:
        try:
            pcm = load_pcm(Path(path))
        except AudioError as exc:
            failed = True
            _print(
                {
                    "file": str(path),
                    "verdict": "unknown",
                    "confidence": 0.0,
                    "evidence": {"kind": "error"},
                    "decided_ms": None,
                    "error": str(exc),
                }
            )
            continue
        d = classify_pcm(pcm, 8000, sig, library)
        out: dict[str, Any] = {"file": str(path)}
        out.update(d.as_json())
        _print(out)
    return EXIT_FAILURE if failed else EXIT_OK


def templates_main(args: argparse.Namespace) -> int:
    """`templates add | list | unknown`."""
    from sipclient.classify.templates import LibraryError
    from sipclient.classify.unknowns import UnknownStore

    folder: Path | None = getattr(args, "templates", None)
    action = args.templates_command
    try:
        if action == "add":
            lib = _library(folder, create=True)
            entry = lib.add(Path(args.file), args.verdict, args.label)
            _print(
                {
                    "added": entry.file,
                    "verdict": entry.verdict.value,
                    "label": entry.label,
                    "duration_ms": entry.duration_ms,
                    "hashes": entry.hashes,
                    "library": str(lib.folder),
                }
            )
            return EXIT_OK
        if action == "list":
            lib = _library(folder)
            for e in lib.entries():
                _print(
                    {
                        "file": e.file,
                        "verdict": e.verdict.value,
                        "label": e.label,
                        "duration_ms": e.duration_ms,
                        "hashes": e.hashes,
                    }
                )
            return EXIT_OK
        if action == "unknown":
            store = UnknownStore(args.store or DEFAULT_UNKNOWN_STORE)
            for g in store.groups():
                _print(g.as_json())
            return EXIT_OK
    except LibraryError as exc:
        print(f"sipclient templates: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"sipclient templates: unknown action {action!r}", file=sys.stderr)
    return EXIT_USAGE
