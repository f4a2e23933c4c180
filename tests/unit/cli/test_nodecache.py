"""node-cache's flags on nodelocal's command line: Go's forms, what each sets, how they coexist with ours."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from nodelocal import ConfigError
from nodelocal.cli import nodecache as compat
from nodelocal.cli.commands import build_parser, main, overrides_from
from nodelocal.config import source


def over(*argv: str) -> tuple[dict[str, Any], list[str]]:
    ns = build_parser().parse_args(compat.normalise(["serve", *argv]))
    out = overrides_from(ns)
    notes = compat.overrides(ns, out)
    return out, notes


@pytest.mark.parametrize(
    ("argv", "want"),
    [
        (["-localip", "169.254.20.10,10.96.0.10"], ["--localip", "169.254.20.10,10.96.0.10"]),
        (["-setupiptables=false"], ["--setupiptables=false"]),
        (["--syncinterval", "30"], ["--syncinterval", "30"]),
        (["-dns.port=5353", "-v"], ["--dns.port=5353", "-v"]),  # unknown single-dash words stay as they are
        (["-config", "x"], ["-config", "x"]),
    ],
)
def test_normalise_go_forms(argv: list[str], want: list[str]) -> None:
    assert compat.normalise(["serve", *argv]) == ["serve", *want]


def test_a_command_line_without_subcommand_is_serve() -> None:
    assert compat.normalise(["-localip", "169.254.20.10", "-conf", "/etc/Corefile"])[0] == "serve"
    assert compat.normalise(["--version"]) == ["--version"]
    assert compat.normalise(["stats"]) == ["stats"]


def test_each_node_cache_flag_sets_its_field() -> None:
    out, notes = over("-localip", "169.254.20.10,10.96.0.10", "-interfacename=nl0", "-syncinterval", "30s",
                      "-skipteardown", "-dns.port", "5300", "-pidfile", "/run/nl.pid")
    assert out == {"listen": {"localip": ["169.254.20.10", "10.96.0.10"], "port": 5300},
                   "netsetup": {"interface_name": "nl0", "sync_interval": 30.0, "skip_teardown": True},
                   "pidfile": "/run/nl.pid"}
    assert notes == []


@pytest.mark.parametrize(("argv", "setup", "noted"), [
    (["-setupiptables=false", "-setupinterface=false"], False, False),
    (["-setupiptables=false"], False, True),
    (["-setupinterface=false", "-setupiptables=true"], False, True),
    (["-setupinterface", "-setupiptables=true"], None, False),
    (["--no-setup"], False, False),
])
def test_setup_flags(argv: list[str], setup: bool | None, noted: bool) -> None:
    out, notes = over(*argv)
    assert out.get("setup") is setup
    assert bool(notes) is noted


def test_go_bool_and_duration_forms() -> None:
    for text in ("1", "t", "T", "true", "TRUE", "True"):
        assert compat.go_bool(text) is True
    for text in ("0", "f", "F", "false", "FALSE", "False"):
        assert compat.go_bool(text) is False
    assert over("-syncinterval=1m")[0]["netsetup"]["sync_interval"] == 60.0
    assert over("-skipteardown=false")[0]["netsetup"]["skip_teardown"] is False


def test_our_flags_and_node_caches_together() -> None:
    out, _ = over("--dev", "-localip", "127.0.0.2", "--sync-interval", "5", "-skipteardown=true")
    assert out["listen"] == {"localip": ["127.0.0.2"], "port": 5300}
    assert out["netsetup"] == {"sync_interval": 5.0, "skip_teardown": True}


def test_accepted_and_noted_flags() -> None:
    _out, notes = over("-metrics-listen-address", "0.0.0.0:9353", "-initialdelay", "10")
    assert len(notes) == 2 and "9353" in notes[0]
    with pytest.raises(ConfigError, match="ebtables"):
        over("-setupebtables=true")


@pytest.mark.parametrize(("argv", "words"), [
    (["serve", "-setupiptables=maybe"], "not a boolean"),
    (["serve", "-syncinterval", "soon"], "not a duration"),
    (["serve", "-health-port", "http"], "--health-port"),
])
def test_bad_go_values_exit_2(argv: list[str], words: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2 and words in capsys.readouterr().err


def test_upstreamsvc_and_health_port(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("MY_DNS_SERVICE_HOST", "10.96.7.7")
    monkeypatch.setenv("MY_DNS_SERVICE_PORT", "5353")
    assert main(["check-config", "-upstreamsvc", "my-dns", "-localip", "169.254.20.10", "-health-port", "8081",
                 "--upstream", "192.0.2.53"]) == 0
    out = capsys.readouterr().out
    assert "cluster[tcp: 10.96.7.7:5353]" in out


def test_health_port_sets_the_health_address() -> None:
    ns = build_parser().parse_args(compat.normalise(["serve", "-localip", "169.254.20.10", "-health-port", "8081"]))
    flags = overrides_from(ns)
    cfg = compat.build_source(ns, flags, env={}).load().config
    assert cfg.health_address() == ("169.254.20.10", 8081)


def test_pick_corefile(tmp_path: Path) -> None:
    base, conf = tmp_path / "Corefile.base", tmp_path / "Corefile"
    conf.write_text(". {}\n")
    assert source.pick_corefile(str(conf), None, default_base=str(base)) == str(conf)
    base.write_text(". {}\n")
    assert source.pick_corefile(str(conf), None, default_base=str(base)) == str(base)  # the ConfigMap wins
    assert source.pick_corefile(None, str(base)) == str(base)
    assert source.pick_corefile(None, None) is None
    with pytest.raises(ConfigError, match="no such file"):
        source.pick_corefile(None, str(tmp_path / "absent"))
    with pytest.raises(ConfigError, match="no such file"):
        source.pick_corefile(str(tmp_path / "absent"), None, default_base=str(tmp_path / "nope"))
