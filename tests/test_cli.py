"""The `sipclient` command: help, config errors and exit codes, run as a real process."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sipclient.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


@pytest.mark.parametrize(
    "sub", ["server", "run", "dial", "classify", "templates", "demo", "check-config"]
)
def test_every_subcommand_has_help(sub: str) -> None:
    out = run(sub, "--help")
    assert out.returncode == 0, out.stderr
    assert "usage: sipclient " + sub in out.stdout


def test_check_config_accepts_the_examples() -> None:
    assert run("check-config", "daemon", "config.example.yaml").returncode == 0
    assert run("check-config", "server", "server.example.yaml").returncode == 0


def test_bad_config_exits_2_naming_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("rtp:\n  ports: 5000-4000\n")
    out = run("run", "--config", str(bad))
    assert out.returncode == 2
    assert "rtp.ports" in out.stderr
    out = run("check-config", "daemon", str(bad))
    assert out.returncode == 2


def test_usage_error_exits_2() -> None:
    assert run("no-such-command").returncode == 2
