"""A template library as a listing another box can mirror.

The server's library is the one its verdicts come from; a daemon's decides only
when it hangs up. A template an operator adds on the server (`sipclient
templates add`, then SIGHUP to the server) should reach every dialing box, or each
call meeting that announcement runs until the carrier's own final response
(ten seconds and more instead of two) on every box nobody copied it to. So the
server offers its library (`GET /library`, `GET /library/{file}`, ext, on the
001 API) and names its version in each heartbeat reply; the daemon mirrors it
(agent/library_sync.py).

The version is a digest of the manifest's rows and of every WAV's bytes: it
changes exactly when a box would load a different library.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sipclient.config import ClassifySettings

# classify.templates (numpy with it) is imported where it is used: the daemon
# imports this module at start, before it needs any of the classifier.


@dataclass(frozen=True)
class LibraryListing:
    """What a library holds: its version and, per template, the manifest row with
    the WAV's sha256 and size."""

    version: str
    templates: list[dict[str, Any]]

    def as_json(self) -> dict[str, Any]:
        return {"version": self.version, "templates": self.templates}


def library_folder(settings: ClassifySettings) -> Path | None:
    """The folder `classify.templates` names, else the shipped one (None: none shipped)."""
    from sipclient.classify.templates import _PACKAGE_DIR, MANIFEST

    if settings.templates is not None:
        return Path(settings.templates)
    return _PACKAGE_DIR if (_PACKAGE_DIR / MANIFEST).is_file() else None


def safe_file_name(name: str) -> bool:
    """A template file name that stays inside its folder (no path, no dot file)."""
    return bool(name) and name == Path(name).name and not name.startswith(".")


def version_of(templates: list[dict[str, Any]]) -> str:
    """The digest of a listing's rows (each with its WAV's sha256)."""
    rows = json.dumps(templates, sort_keys=True, ensure_ascii=False).encode()
    return hashlib.sha256(rows).hexdigest()[:32]


def list_library(folder: Path | None) -> LibraryListing:
    """The listing of the library in `folder` (None: an empty library)."""
    from sipclient.classify.templates import MANIFEST, LibraryError

    if folder is None:
        return LibraryListing(version_of([]), [])
    manifest = folder / MANIFEST
    try:
        rows = json.loads(manifest.read_text(encoding="utf-8"))["templates"]
    except FileNotFoundError:
        rows = []
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise LibraryError(f"{manifest}: not a template manifest ({exc})") from exc
    templates = []
    for row in rows:
        try:
            file, verdict, label = str(row["file"]), str(row["verdict"]), str(row["label"])
        except (KeyError, TypeError) as exc:
            raise LibraryError(f"{manifest}: bad entry {row!r}") from exc
        if not safe_file_name(file):
            raise LibraryError(f"{manifest}: file name {file!r} is not a plain name")
        try:
            data = (folder / file).read_bytes()
        except OSError as exc:
            raise LibraryError(f"template {file}: {exc}") from exc
        templates.append(
            {
                "file": file,
                "verdict": verdict,
                "label": label,
                "sha256": hashlib.sha256(data).hexdigest(),
                "size": len(data),
            }
        )
    return LibraryListing(version_of(templates), templates)
