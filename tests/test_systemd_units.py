"""The systemd units: the template for several daemons on one box is the single
daemon's unit with an instance's own config and state directory, nothing else."""

from __future__ import annotations

from pathlib import Path

UNITS = Path(__file__).resolve().parents[1] / "systemd"


def _settings(path: Path) -> list[tuple[str, str, str]]:
    """(section, key, value) of every setting, comments and blank lines left out."""
    out, section = [], ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.append((section, key.strip(), value.strip()))
    return out


def test_the_template_differs_from_the_single_unit_only_by_the_instance() -> None:
    single = _settings(UNITS / "sipclient.service")
    template = _settings(UNITS / "sipclient@.service")
    assert len(single) == len(template)
    differ = {
        key: (a_val, b_val)
        for (_, key, a_val), (_, _, b_val) in zip(single, template, strict=True)
        if a_val != b_val
    }
    assert differ == {
        "Description": (
            "sipclient SIP dialing daemon (empty-number detection)",
            "sipclient SIP dialing daemon %i (empty-number detection)",
        ),
        "ExecStart": (
            "/opt/sipclient/.venv/bin/sipclient run --config /etc/sipclient/config.yaml",
            "/opt/sipclient/.venv/bin/sipclient run --config /etc/sipclient/%i.yaml",
        ),
        "StateDirectory": ("sipclient", "sipclient/%i"),
        "WorkingDirectory": ("/var/lib/sipclient", "/var/lib/sipclient/%i"),
    }
    # what makes it a notify service with a watchdog, as the single one
    assert ("Service", "Type", "notify") in template
    assert any(k == "WatchdogSec" for _, k, _ in template)
