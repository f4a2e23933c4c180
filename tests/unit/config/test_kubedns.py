"""nodelocal.kubedns: the kube-dns ConfigMap (stubDomains, upstreamNameservers) read from its mounted
directory and applied as node-cache does, with either config format."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nodelocal import ConfigError
from nodelocal.config import kubedns
from nodelocal.config import model as config
from nodelocal.config.source import Source
from tests.k8s.kubelet import ConfigMapVolume
from tests.unit.config.test_corefile import ADDON_COREFILE


def cm(tmp_path: Path, **data: object) -> str:
    vol = ConfigMapVolume(tmp_path / "kube-dns")
    vol.write({k: json.dumps(v) for k, v in data.items()})
    return str(vol.root)


def test_missing_directory_or_keys_are_empty(tmp_path: Path) -> None:
    assert kubedns.read_dir(str(tmp_path / "absent")) == kubedns.KubeDNSConfig()
    assert kubedns.read_dir(cm(tmp_path)) == kubedns.KubeDNSConfig()


def test_reads_both_keys(tmp_path: Path) -> None:
    d = cm(tmp_path, stubDomains={"Corp.Example.": ["10.150.0.1", "[fd00::53]:5353"]},
           upstreamNameservers=["192.0.2.53"])
    kd = kubedns.read_dir(d)
    assert kd.stub_domains == {"corp.example": ("10.150.0.1:53", "[fd00::53]:5353")}
    assert kd.upstream_nameservers == ("192.0.2.53:53",)


@pytest.mark.parametrize(
    ("data", "where", "words"),
    [
        ({"upstreamNameservers": ["1.1.1.1", "1.0.0.1", "8.8.8.8", "9.9.9.9"]}, "upstreamNameservers", "at most 3"),
        ({"upstreamNameservers": "8.8.8.8"}, "upstreamNameservers", "JSON list"),
        ({"upstreamNameservers": ["dns.google"]}, "upstreamNameservers[0]", "not an IP address"),
        ({"stubDomains": ["corp.example"]}, "stubDomains", "JSON object"),
        ({"stubDomains": {"corp..example": ["10.0.0.1"]}}, "stubDomains.corp..example", "not a valid domain"),
        ({"stubDomains": {"corp.example": []}}, "stubDomains.corp.example", "at least one"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, data: dict[str, object], where: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        kubedns.read_dir(cm(tmp_path, **data))
    assert info.value.path.endswith(where) and words in info.value.reason


def test_bad_json(tmp_path: Path) -> None:
    vol = ConfigMapVolume(tmp_path / "kube-dns")
    vol.write({"stubDomains": '{"a.example": ["10.0.0.1"'})
    with pytest.raises(ConfigError, match="not valid JSON"):
        kubedns.read_dir(str(vol.root))


def test_applied_to_a_yaml_config(tmp_path: Path) -> None:
    d = cm(tmp_path, stubDomains={"corp.example": ["10.150.0.1"]}, upstreamNameservers=["192.0.2.53"])
    loaded = Source(kubedns_dir=d, env={}, resolv_conf="/nonexistent").load()
    cfg = loaded.config
    assert cfg.zones["corp.example"].forward == ("stub-corp.example",)
    assert cfg.zones["corp.example"].cache == config.ZoneCache()  # node-cache's stub block: cache 30
    g = cfg.upstreams["stub-corp.example"]
    assert (g.servers, g.transport, g.policy) == (("10.150.0.1:53",), "udp", "random")
    assert cfg.upstreams["host"].servers == ("192.0.2.53:53",)
    assert cfg.zones["."].forward == ("cluster", "host")  # the rest as before
    assert loaded.notes and "1 stub domain" in loaded.notes[0]


def test_applied_to_a_corefile(tmp_path: Path) -> None:
    d = cm(tmp_path, stubDomains={"corp.example": ["10.150.0.1"]}, upstreamNameservers=["192.0.2.53", "192.0.2.54"])
    core = tmp_path / "Corefile"
    core.write_text(ADDON_COREFILE)
    src = Source(corefile=str(core), kubedns_dir=d, env={"KUBE_DNS_UPSTREAM_SERVICE_HOST": "10.96.0.11"},
                 overrides={"listen": {"localip": ["169.254.20.10"]}}, resolv_conf="/nonexistent")
    cfg = src.load().config
    assert cfg.upstreams["host"].servers == ("192.0.2.53:53", "192.0.2.54:53")  # __PILLAR__UPSTREAM__SERVERS__
    assert cfg.zones["."].forward == ("host",)
    assert cfg.zones["corp.example"].forward == ("stub-corp.example",)


def test_stub_domain_clashing_with_a_zone_is_an_error(tmp_path: Path) -> None:
    d = cm(tmp_path, stubDomains={"cluster.local": ["10.150.0.1"]})
    with pytest.raises(ConfigError, match="configured already"):
        Source(kubedns_dir=d, env={}, resolv_conf="/nonexistent").load()
