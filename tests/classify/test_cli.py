"""`sipclient classify` and `sipclient templates` run as real processes."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.classify.conftest import Pcm, cadence, music


def run(*args: str) -> tuple[int, list[dict[str, Any]], str]:
    proc = subprocess.run(
        [sys.executable, "-m", "sipclient.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    return proc.returncode, lines, proc.stderr


def test_classify_files(tmp_path: Path, wav: Callable[..., Path]) -> None:
    busy = wav(cadence((450.0,), [(0.35, 0.35)], 4.0), "busy.wav")
    silent = wav(cadence((450.0,), [(0.0, 1.0)], 2.0), "silent.wav")
    lib = tmp_path / "lib"
    code, lines, err = run("classify", str(busy), str(silent), "--templates", str(lib))
    assert code == 2 and "does not exist" in err  # a missing library is a usage error
    lib.mkdir()
    code, lines, err = run("classify", str(busy), str(silent), "--templates", str(lib))
    assert code == 0, err
    assert [x["file"] for x in lines] == [str(busy), str(silent)]
    assert lines[0]["verdict"] == "busy" and lines[0]["evidence"]["tone"] == "cn_busy"
    assert isinstance(lines[0]["decided_ms"], int) and lines[0]["confidence"] > 0.5
    assert lines[1]["verdict"] == "unknown"
    code, lines, _ = run(
        "classify", str(silent), "--sip-code", "480", "--q850", "20", "--templates", str(lib)
    )
    assert code == 0 and lines[0]["verdict"] == "powered_off"
    # the SIP code alone, no cause: silence and a 486 are busy, a 404 empty
    for code_given, verdict in (("486", "busy"), ("404", "empty")):
        code, lines, _ = run(
            "classify", str(silent), "--sip-code", code_given, "--templates", str(lib)
        )
        assert code == 0 and lines[0]["verdict"] == verdict, lines


def test_classify_ringing_flag_colour_ringback(tmp_path: Path, wav: Callable[..., Path]) -> None:
    crbt = wav(music(6.0), "crbt.wav")
    lib = tmp_path / "lib"
    lib.mkdir()
    code, lines, err = run("classify", str(crbt), "--ringing", "--templates", str(lib))
    assert code == 0, err
    assert lines[0]["verdict"] == "ringing"
    # without the 180 the same music proves nothing: an unheard announcement may follow
    code, lines, err = run("classify", str(crbt), "--templates", str(lib))
    assert code == 0, err
    assert lines[0]["verdict"] != "ringing"


def test_classify_bad_file_exit_1_after_all_files(tmp_path: Path, wav: Callable[..., Path]) -> None:
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio")
    good = wav(cadence((450.0,), [(0.35, 0.35)], 4.0), "good.wav")
    (tmp_path / "lib").mkdir()
    code, lines, _ = run("classify", str(bad), str(good), "--templates", str(tmp_path / "lib"))
    assert code == 1
    assert lines[0]["verdict"] == "unknown" and "not a readable audio file" in lines[0]["error"]
    assert lines[1]["verdict"] == "busy"


def test_templates_add_list_unknown(
    tmp_path: Path, wav: Callable[..., Path], speech_dir: dict[str, Pcm]
) -> None:
    src = wav(speech_dir["kong"], "kong.wav")
    lib = tmp_path / "lib"
    code, lines, err = run(
        "templates",
        "--templates",
        str(lib),
        "add",
        str(src),
        "--verdict",
        "empty",
        "--label",
        "空号",
    )
    assert code == 0, err
    assert lines[0]["verdict"] == "empty" and lines[0]["label"] == "空号"
    code, lines, err = run(
        "templates", "--templates", str(lib), "add", str(src), "--verdict", "nonsense"
    )
    assert code == 1 and "unknown verdict" in err
    code, lines, _ = run("templates", "--templates", str(lib), "list")
    assert code == 0 and [x["label"] for x in lines] == ["空号"]
    # the library now recognises the recording
    code, lines, _ = run("classify", str(src), "--templates", str(lib))
    assert lines[0]["verdict"] == "empty" and lines[0]["label"] == "空号"
    code, lines, _ = run("templates", "unknown", "--store", str(tmp_path / "none"))
    assert code == 0 and lines == []
