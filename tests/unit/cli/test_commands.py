"""nodelocal.cli: flags become config overrides; bad command lines and bad values exit 2 in one line."""

from __future__ import annotations

import argparse
import copy
import re
from pathlib import Path

import pytest
import yaml

from nodelocal.cli import commands as cli
from nodelocal.cli.commands import DEV_PROFILE, build_parser, config_default, main, overrides_from

# Keep main() away from the machine's resolv.conf and the pod environment.
HERMETIC = ["--upstream", "192.0.2.53", "--cluster-dns", "10.96.0.10"]


@pytest.fixture(autouse=True)
def _no_kube_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBE_DNS_UPSTREAM_SERVICE_HOST", raising=False)
    monkeypatch.delenv("KUBE_DNS_UPSTREAM_SERVICE_PORT", raising=False)


def over(*argv: str) -> dict[str, object]:
    return overrides_from(build_parser().parse_args(["serve", *argv]))


# --------------------------------------------------------------------------------------------------
# overrides_from


def test_no_flags_no_overrides() -> None:
    assert over() == {}


def test_handover_flags() -> None:
    assert over("--handover-socket", "/tmp/h.sock", "--handover-linger", "--handover-snapshot", "/tmp/c") == {
        "handover": {"socket": "/tmp/h.sock", "linger": True, "snapshot": "/tmp/c"}}
    assert over("--dev", "--handover-socket", "/tmp/h.sock")["handover"] == {"socket": "/tmp/h.sock"}


def test_dev_profile() -> None:
    # 5300, not 5353: the mDNS port is taken wherever avahi runs.
    assert over("--dev") == {
        "listen": {"localip": ["127.0.0.1"], "port": 5300},
        "setup": False,
        "metrics_addr": "127.0.0.1:9253",
        "health_addr": "127.0.0.1:8080",
        "require_cluster_dns": False,
        "handover": {"socket": ""},
    }


def test_flags_win_over_dev() -> None:
    before = copy.deepcopy(DEV_PROFILE)
    o = over("--dev", "--port", "5400", "--metrics-addr", "127.0.0.1:19253", "--localip", "127.0.0.2")
    assert o["listen"] == {"localip": ["127.0.0.2"], "port": 5400}
    assert o["metrics_addr"] == "127.0.0.1:19253"
    assert o["health_addr"] == "127.0.0.1:8080" and o["setup"] is False
    assert DEV_PROFILE == before  # the profile itself is never changed
    assert over("--dev")["listen"] == {"localip": ["127.0.0.1"], "port": 5300}


def test_localip_comma_list() -> None:
    assert over("--localip", "169.254.20.10,10.96.0.10,")["listen"] == {"localip": ["169.254.20.10", "10.96.0.10"]}
    assert over("--localip", "fd00::10") == {"listen": {"localip": ["fd00::10"]}}


def test_upstream_is_repeatable() -> None:
    o = over("--upstream", "1.1.1.1", "--upstream", "[2606:4700::1111]:53", "--upstream", "9.9.9.9:5353")
    assert o == {"upstreams": {"host": {"servers": ["1.1.1.1", "[2606:4700::1111]:53", "9.9.9.9:5353"]}}}


def test_cluster_dns_comma_list_and_upstream_together() -> None:
    o = over("--cluster-dns", "10.96.0.10,10.96.0.11:5353", "--upstream", "1.1.1.1")
    assert o == {"upstreams": {"cluster": {"servers": ["10.96.0.10", "10.96.0.11:5353"]},
                               "host": {"servers": ["1.1.1.1"]}}}


def test_each_flag_sets_its_field() -> None:
    o = over("--cluster-domain", "k8s.example", "--no-setup", "--health-addr", "127.0.0.1:8081",
             "--log-level", "debug", "--port", "53")
    assert o == {"listen": {"port": 53}, "cluster_domain": "k8s.example", "setup": False,
                 "health_addr": "127.0.0.1:8081", "log_level": "debug"}


def test_dev_overrides_load_into_a_config() -> None:
    from nodelocal.config import load

    cfg = load(None, over("--dev", "--upstream", "1.1.1.1"), env={}, resolv_conf="/nonexistent")
    assert cfg.listen.localip == ("127.0.0.1",) and cfg.listen.port == 5300 and cfg.setup is False
    assert cfg.upstreams["host"].servers == ("1.1.1.1",)
    assert cfg.health_address() == ("127.0.0.1", 8080)


# --------------------------------------------------------------------------------------------------
# main(): exit codes and messages


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["serve", "--bogus"], "unrecognized arguments: --bogus"),
        (["check-config", "--frobnicate", "1"], "unrecognized arguments"),
        (["serve", "--port", "fifty"], "--port"),
        (["serve", "--log-level", "loud"], "--log-level"),
        ([], "command"),
        (["start"], "start"),
    ],
)
def test_bad_command_line_exits_2_with_one_line(argv: list[str], words: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert err.startswith("nodelocal") and "error:" in err and words in err


def test_check_config_prints_zones_and_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", *HERMETIC]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in out] == ["zone cluster.local", "zone in-addr.arpa", "zone ip6.arpa",
                                                     "zone ."]
    assert "cluster[tcp: 10.96.0.10]" in out[0]
    assert "cluster[tcp: 10.96.0.10] -> host[udp: 192.0.2.53]" in out[3]


def test_check_config_reads_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump({
        "upstreams": {"corp": {"servers": ["10.1.1.1"]}},
        "zones": {"corp.example": {"forward": ["corp"]}, ".": {"forward": ["host"]}},
    }))
    assert main(["check-config", str(f), *HERMETIC]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("zone corp.example: corp[udp: 10.1.1.1]")
    assert out[1].startswith("zone .: host[udp: 192.0.2.53]")
    assert main(["check-config", "--config", str(f), *HERMETIC]) == 0
    assert capsys.readouterr().out.splitlines()[0].startswith("zone corp.example")


@pytest.mark.parametrize(
    ("argv", "field"),
    [
        (["--port", "70000"], "listen.port"),
        (["--localip", "10.0.0.1,not-an-ip"], "listen.localip[1]"),
        (["--metrics-addr", "localhost:9253"], "metrics_addr"),
        (["--upstream", "dns.google"], "upstreams.host.servers[1]"),  # after HERMETIC's one
    ],
)
def test_bad_value_exits_2_naming_the_field(argv: list[str], field: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", *HERMETIC, *argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"nodelocal: config error: {field}: ")
    assert captured.err.count("\n") == 1


def test_bad_value_in_the_file_exits_2_naming_the_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("cache:\n  max_bytes: 12\n")
    assert main(["check-config", str(f), *HERMETIC]) == 2
    assert capsys.readouterr().err.startswith("nodelocal: config error: cache.max_bytes: must be >= 4096 (got 12)")


def test_serve_with_a_bad_value_exits_2_before_starting(monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    started = []
    monkeypatch.setattr(cli, "run_serve", lambda cfg: started.append(cfg) or 0)
    assert main(["serve", *HERMETIC, "--port", "-5"]) == 2
    assert not started
    assert "listen.port" in capsys.readouterr().err
    assert main(["serve", "--dev", *HERMETIC]) == 0
    assert started and started[0].listen.port == 5300


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


@pytest.mark.parametrize("command", sorted(_subparsers()))
def test_help_of_every_subcommand_shows_each_default(command: str) -> None:
    p = _subparsers()[command]
    fmt = p._get_formatter()
    for action in p._actions:
        if not action.option_strings or action.default is argparse.SUPPRESS:
            continue
        text = fmt._get_help_string(action) or ""
        has_default = action.default not in (None, False) or re.search(r"\[[a-z_.]+\]", action.help or "")
        if has_default and action.dest not in ("cluster_dns", "upstream"):  # (those say where theirs come from)
            assert "default" in text, (command, action.option_strings, text)


def test_help_takes_the_config_defaults_from_the_model() -> None:
    serve = _subparsers()["serve"].format_help()
    flat = " ".join(serve.split())
    assert "[listen.port] (default: 53)" in flat
    assert "[netsetup.sync_interval] (default: 60.0)" in flat
    assert "[log_level] (default: info)" in flat
    assert "[listen.localip] (default: 169.254.20.10)" in flat
    stats = " ".join(_subparsers()["stats"].format_help().split())
    assert "(default: 2.0)" in stats and "(default: 127.0.0.1:9253)" in stats
    assert config_default("listen.port") == 53 and config_default("cache.max_bytes") == 32 * 1024 * 1024
    with pytest.raises(KeyError):
        config_default("upstreams.cluster")  # named groups have no default of their own


# --------------------------------------------------------------------------------------------------
# a zone without upstream servers


def test_serve_refuses_a_cluster_zone_without_upstream_servers(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    started: list[object] = []
    monkeypatch.setattr(cli, "run_serve", lambda cfg: started.append(cfg) or 0)
    # No --cluster-dns and no $KUBE_DNS_UPSTREAM_SERVICE_HOST: the cluster zone would SERVFAIL every name.
    assert main(["serve", "--upstream", "192.0.2.53"]) == 2
    err = capsys.readouterr().err
    assert not started
    assert "upstreams.cluster.servers" in err and "cluster zone cluster.local has no upstream server" in err
    assert "--allow-no-cluster-dns" in err
    # Told otherwise (flag, config field, or the --dev profile), it serves; check-config says the same.
    assert main(["serve", "--upstream", "192.0.2.53", "--allow-no-cluster-dns"]) == 0
    f = tmp_path / "c.yaml"
    f.write_text("require_cluster_dns: false\n")
    assert main(["serve", "--config", str(f), "--upstream", "192.0.2.53"]) == 0
    assert main(["serve", "--dev", "--upstream", "192.0.2.53"]) == 0
    assert len(started) == 3
    capsys.readouterr()
    assert main(["check-config", "--upstream", "192.0.2.53"]) == 2
    err = capsys.readouterr().err
    assert "nodelocal: warning: zone cluster.local has no upstream server (groups cluster: none)" in err
    assert "nodelocal: config error: upstreams.cluster.servers" in err
    assert main(["check-config", "--upstream", "192.0.2.53", "--allow-no-cluster-dns"]) == 0
    err = capsys.readouterr().err
    assert "warning: zone cluster.local has no upstream server" in err and "config error" not in err


def test_check_config_warns_about_any_zone_without_servers(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "c.yaml"
    zones = {"corp.example": {"forward": ["corp"]}, ".": {"forward": ["cluster", "host"]}}
    f.write_text(yaml.safe_dump({"upstreams": {"corp": {"servers": []}}, "zones": zones}))
    assert main(["check-config", str(f), *HERMETIC]) == 0  # the cluster zone ('.' here) has servers
    err = capsys.readouterr().err
    assert "warning: zone corp.example has no upstream server (groups corp: none)" in err


def test_query_log_flags() -> None:
    assert over("--query-log")["log"] == {"queries": True}
    assert over("--query-log", "--query-log-format", "json")["log"] == {"queries": True, "format": "json"}
    assert "log" not in over()
