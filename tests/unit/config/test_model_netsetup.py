"""Network setup's config fields and flags: defaults, 1:1 flag mapping, errors that name the field."""

from __future__ import annotations

from typing import Any

import pytest

from nodelocal import ConfigError
from nodelocal.cli.commands import build_parser, overrides_from
from nodelocal.config import NetSetupConfig, load


def over(*argv: str) -> dict[str, Any]:
    return overrides_from(build_parser().parse_args(["serve", *argv]))


def cfg(overrides: dict[str, Any]) -> Any:
    return load(None, overrides, env={}, resolv_conf="/nonexistent")


def test_defaults_follow_node_cache() -> None:
    ns = cfg({}).netsetup
    assert ns == NetSetupConfig()
    assert ns.interface_name == "nodelocaldns" and ns.rules_backend == "auto" and ns.sync_interval == 60.0
    assert ns.skip_teardown is False and ns.notrack_health_port is True and ns.kube_dns_ips == ()


def test_flags_map_one_to_one_to_netsetup_fields() -> None:
    assert over() == {}
    assert over("--interface-name", "nl0", "--rules-backend", "iptables-legacy", "--sync-interval", "2.5",
                "--skip-teardown") == {"netsetup": {"interface_name": "nl0", "rules_backend": "iptables-legacy",
                                                    "sync_interval": 2.5, "skip_teardown": True}}
    c = cfg(over("--rules-backend", "nft", "--sync-interval", "1"))
    assert c.netsetup.rules_backend == "nft" and c.netsetup.sync_interval == 1.0
    assert c.netsetup.interface_name == "nodelocaldns"  # untouched siblings keep their defaults


def test_bad_backend_flag_is_refused_by_argparse(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["serve", "--rules-backend", "ipvs"])
    assert e.value.code == 2 and "invalid choice" in capsys.readouterr().err


@pytest.mark.parametrize(("overrides", "path"), [
    ({"netsetup": {"rules_backend": "ipvs"}}, "netsetup.rules_backend"),
    ({"netsetup": {"sync_interval": 0}}, "netsetup.sync_interval"),
    ({"netsetup": {"interface_name": "a-name-longer-than-15"}}, "netsetup.interface_name"),
    ({"netsetup": {"interface_name": "has space"}}, "netsetup.interface_name"),
    ({"netsetup": {"kube_dns_ips": ["10.96.0.10", "kube-dns"]}}, "netsetup.kube_dns_ips[1]"),
    ({"netsetup": {"skip_teardown": "yes"}}, "netsetup.skip_teardown"),
    ({"netsetup": {"nope": 1}}, "netsetup.nope"),
])
def test_errors_name_the_field(overrides: dict[str, Any], path: str) -> None:
    with pytest.raises(ConfigError) as e:
        cfg(overrides)
    assert e.value.path == path
