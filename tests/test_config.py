"""config.py: defaults, example files, and errors that name the key."""

from pathlib import Path

import pytest

from sipclient.config import (
    ConfigError,
    DaemonConfig,
    HostPort,
    PortRange,
    ServerConfig,
    load_config,
    parse_config,
)

ROOT = Path(__file__).resolve().parent.parent


def test_example_files_equal_the_defaults() -> None:
    assert load_config(DaemonConfig, ROOT / "config.example.yaml") == DaemonConfig()
    assert load_config(ServerConfig, ROOT / "server.example.yaml") == ServerConfig()


def test_values_are_typed() -> None:
    cfg = parse_config(
        DaemonConfig, "pbx: {host: '[::1]:5070', transport: tcp}\nrtp: {ports: 30000-30009}\n"
    )
    assert cfg.pbx.host == HostPort("::1", 5070)
    assert str(cfg.pbx.host) == "[::1]:5070"
    assert cfg.rtp.ports == PortRange(30000, 30009)
    assert len(cfg.rtp.ports) == 10


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("pbx: {host: '127.0.0.1:70000'}", "pbx.host"),
        ("rtp: {ports: 5000-4000}", "rtp.ports"),
        ("threads: many", "threads"),
        ("threads: 0", "threads"),
        ("pbx: {transport: sctp}", "pbx.transport"),
        ("sip: {colour: blue}", "sip.colour"),
        ("bogus: 1", "bogus"),
        ("server: 3", "server"),
        ("sip: {ring_timeout: -1}", "sip.ring_timeout"),
        ("sip: {socket_per_extension: 'yes'}", "sip.socket_per_extension"),
        ("server: {uploads_in_flight: 0}", "server.uploads_in_flight"),
        # each of these ran: a daemon retrying a URL it could never call, lines that
        # could never bind, a back-off or a timer that never ends
        ("server: {url: 'localhost:8000'}", "server.url"),
        ("server: {url: 'ftp://10.0.0.5/'}", "server.url"),
        ("server: {url: 'http://:8000'}", "server.url"),
        ("sip: {bind: 'eth0:5060'}", "sip.bind"),
        ("sip: {bind: 'localhost:0'}", "sip.bind"),
        ("dialplan: {poll_min: 10, poll_max: 5}", "dialplan.poll_max"),
        ("trunk: {pause_min: 120}", "trunk.pause_max"),
        ("heartbeat: {interval: .inf}", "heartbeat.interval"),
        ("sip: {ring_timeout: .nan}", "sip.ring_timeout"),
        # a cap on what the daemon mirrors of the server's library cannot be off
        ("classify: {mirror_max_mb: 0}", "classify.mirror_max_mb"),
        ("classify: {mirror_max_mb: -5}", "classify.mirror_max_mb"),
        ("classify: {mirror_max_mb: lots}", "classify.mirror_max_mb"),
    ],
)
def test_daemon_errors_name_the_key(text: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(DaemonConfig, text)
    assert info.value.key == key
    assert str(info.value).startswith(key + ":")


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("listen: localhost", "listen"),
        ("database: mysql://x", "database"),
        ("callbacks: {tries: 0}", "callbacks.tries"),
        ("callbacks: {backoff_initial: 900}", "callbacks.backoff_max"),
        # README: only SQLite is implemented; check-config now says so, not the start
        ("database: 'postgresql://db/sipclient'", "database"),
    ],
)
def test_server_errors_name_the_key(text: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(ServerConfig, text)
    assert info.value.key == key


def test_the_mirror_cap_defaults_to_512_mb_and_takes_any_positive_number() -> None:
    assert DaemonConfig().classify.mirror_max_mb == 512
    assert parse_config(DaemonConfig, "classify: {mirror_max_mb: 1}").classify.mirror_max_mb == 1


def test_good_values_of_the_checked_keys_pass() -> None:
    cfg = parse_config(
        DaemonConfig,
        "server: {url: 'https://ctl.example:8443/base'}\n"
        "sip: {bind: '[::]:5062'}\n"
        "dialplan: {poll_min: 1, poll_max: 1}\n",
    )
    assert cfg.server.url == "https://ctl.example:8443/base"
    assert cfg.sip.bind == HostPort("::", 5062)
    assert parse_config(DaemonConfig, "sip: {bind: '10.1.2.3:0'}").sip.bind.host == "10.1.2.3"


def test_not_yaml_is_a_config_error(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("a: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(DaemonConfig, f)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(DaemonConfig, tmp_path / "missing.yaml")
