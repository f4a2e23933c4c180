"""nodelocal.config.source: loading YAML or a Corefile with the kube-dns ConfigMap and flags, and change detection."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from nodelocal import ConfigError, CorefileError
from nodelocal.config.source import Loaded, Source, pick_corefile

# node-local-dns's Corefile, cut down to one cluster zone and '.', placeholders as the add-on ships them.
COREFILE = """\
__PILLAR__DNS__DOMAIN__:53 {
    errors
    cache {
            success 9984 30
            denial 9984 5
    }
    bind __PILLAR__LOCAL__DNS__ __PILLAR__DNS__SERVER__
    forward . __PILLAR__CLUSTER__DNS__ {
            force_tcp
    }
    health __PILLAR__LOCAL__DNS__:8080
}
.:53 {
    errors
    cache 30
    bind __PILLAR__LOCAL__DNS__ __PILLAR__DNS__SERVER__
    forward . __PILLAR__UPSTREAM__SERVERS__
}
"""

YAML = """\
listen:
  localip: [127.0.0.1]
  port: 5353
upstreams:
  cluster:
    servers: [10.96.0.10]
  host:
    servers: ["192.0.2.53:5300"]
"""

LOCALIP = {"listen": {"localip": ["169.254.20.10"]}}
CLUSTER_ENV = {"KUBE_DNS_UPSTREAM_SERVICE_HOST": "10.96.0.11"}


@pytest.fixture
def resolv(tmp_path: Path) -> str:
    p = tmp_path / "resolv.conf"
    p.write_text("search cluster.local\nnameserver 192.0.2.53\n")
    return str(p)


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def kubedns_dir(tmp_path: Path, stub: dict[str, list[str]] | None = None, upstream: list[str] | None = None) -> str:
    d = tmp_path / "kube-dns"
    d.mkdir(exist_ok=True)
    if stub is not None:
        (d / "stubDomains").write_text(json.dumps(stub))
    if upstream is not None:
        (d / "upstreamNameservers").write_text(json.dumps(upstream))
    return str(d)


def corefile_source(tmp_path: Path, resolv: str, **kw: Any) -> Source:
    kw.setdefault("overrides", LOCALIP)
    kw.setdefault("env", CLUSTER_ENV)
    return Source(corefile=write(tmp_path / "Corefile", COREFILE), resolv_conf=resolv, **kw)


# --------------------------------------------------------------------------------------------------
# YAML


def test_load_yaml(tmp_path: Path, resolv: str) -> None:
    f = write(tmp_path / "nodelocal.yaml", YAML)
    src = Source(file=f, env={}, resolv_conf=resolv)
    loaded = src.load()
    assert isinstance(loaded, Loaded)
    assert (loaded.kind, loaded.path) == ("yaml", f)
    cfg = loaded.config
    assert cfg.listen.localip == ("127.0.0.1",) and cfg.listen.port == 5353
    assert cfg.upstreams["cluster"].servers == ("10.96.0.10",)
    assert cfg.upstreams["host"].servers == ("192.0.2.53:5300",)  # the file's, not resolv.conf's
    assert set(cfg.zones) == {"cluster.local", "in-addr.arpa", "ip6.arpa", "."}
    assert loaded.notes == ()


def test_no_file_gives_the_defaults_with_environment_and_resolv_conf(resolv: str) -> None:
    loaded = Source(env=CLUSTER_ENV, resolv_conf=resolv).load()
    assert (loaded.kind, loaded.path) == ("yaml", None)
    cfg = loaded.config
    assert cfg.upstreams["cluster"].servers == ("10.96.0.11:53",)
    assert cfg.upstreams["host"].servers == ("192.0.2.53",)
    assert cfg.listen.localip == ("169.254.20.10",)


def test_flags_override_the_yaml_file(tmp_path: Path, resolv: str) -> None:
    f = write(tmp_path / "nodelocal.yaml", YAML)
    over = {"listen": {"port": 5454}, "upstreams": {"host": {"servers": ["198.51.100.1"]}}}
    cfg = Source(file=f, overrides=over, env={}, resolv_conf=resolv).load().config
    assert cfg.listen.port == 5454
    assert cfg.listen.localip == ("127.0.0.1",)  # what the flags do not name stays the file's
    assert cfg.upstreams["host"].servers == ("198.51.100.1",)
    assert cfg.upstreams["cluster"].servers == ("10.96.0.10",)


def test_bad_yaml_is_a_config_error(tmp_path: Path, resolv: str) -> None:
    f = write(tmp_path / "nodelocal.yaml", "listen: [unclosed\n")
    with pytest.raises(ConfigError):
        Source(file=f, env={}, resolv_conf=resolv).load()


def test_missing_yaml_file_is_a_config_error(tmp_path: Path, resolv: str) -> None:
    with pytest.raises(ConfigError):
        Source(file=str(tmp_path / "absent.yaml"), env={}, resolv_conf=resolv).load()


def test_every_load_reads_the_file_again(tmp_path: Path, resolv: str) -> None:
    f = tmp_path / "nodelocal.yaml"
    f.write_text(YAML)
    src = Source(file=str(f), env={}, resolv_conf=resolv)
    assert src.load().config.listen.port == 5353
    f.write_text(YAML.replace("5353", "5355"))
    assert src.load().config.listen.port == 5355


# --------------------------------------------------------------------------------------------------
# Corefile


def test_load_corefile_fills_the_pillars(tmp_path: Path, resolv: str) -> None:
    src = corefile_source(tmp_path, resolv)
    loaded = src.load()
    assert (loaded.kind, loaded.path) == ("corefile", src.corefile)
    cfg = loaded.config
    assert cfg.listen.localip == ("169.254.20.10",)  # __PILLAR__LOCAL__DNS__ from -localip
    assert cfg.upstreams["cluster"].addresses() == (("10.96.0.11", 53),)  # $KUBE_DNS_UPSTREAM_SERVICE_HOST
    assert cfg.upstreams["cluster"].transport == "tcp"  # force_tcp
    assert cfg.upstreams["host"].addresses() == (("192.0.2.53", 53),)  # __PILLAR__UPSTREAM__SERVERS__: resolv.conf
    assert cfg.zones["cluster.local"].forward == ("cluster",)
    assert cfg.zones["."].forward == ("host",)
    assert cfg.zones["cluster.local"].cache.denial_max_ttl == 5
    assert cfg.health_addr == "169.254.20.10:8080"


def test_corefile_cluster_domain_and_upstream_service_from_flags(tmp_path: Path, resolv: str) -> None:
    over = {**LOCALIP, "cluster_domain": "corp.internal"}
    src = corefile_source(tmp_path, resolv, overrides=over, upstream_svc="my-dns",
                          env={"MY_DNS_SERVICE_HOST": "10.96.0.99"})
    cfg = src.load().config
    assert "corp.internal" in cfg.zones and "cluster.local" not in cfg.zones  # __PILLAR__DNS__DOMAIN__
    assert cfg.upstreams["cluster"].addresses() == (("10.96.0.99", 53),)


def test_corefile_cluster_dns_flag_wins_over_the_environment(tmp_path: Path, resolv: str) -> None:
    over = {**LOCALIP, "upstreams": {"cluster": {"servers": ["10.0.0.1"]}}}
    cfg = corefile_source(tmp_path, resolv, overrides=over).load().config
    assert cfg.upstreams["cluster"].addresses() == (("10.0.0.1", 53),)


def test_corefile_without_the_cluster_dns_variable_says_where_it_comes_from(tmp_path: Path, resolv: str) -> None:
    with pytest.raises(CorefileError) as e:
        corefile_source(tmp_path, resolv, env={}, upstream_svc="my-dns").load()
    assert "$MY_DNS_SERVICE_HOST" in str(e.value)


def test_corefile_without_localip_is_an_error(tmp_path: Path, resolv: str) -> None:
    with pytest.raises(CorefileError) as e:
        corefile_source(tmp_path, resolv, overrides={}).load()
    assert "__PILLAR__LOCAL__DNS__" in str(e.value)


def test_flags_override_the_corefile(tmp_path: Path, resolv: str) -> None:
    over = {**LOCALIP, "health_addr": "127.0.0.1:9999", "listen": {"localip": ["169.254.20.10"], "port": 5353}}
    cfg = corefile_source(tmp_path, resolv, overrides=over).load().config
    assert cfg.health_addr == "127.0.0.1:9999"  # the Corefile says __PILLAR__LOCAL__DNS__:8080
    assert cfg.listen.port == 5353  # the Corefile says :53


def test_corefile_wins_over_a_yaml_file(tmp_path: Path, resolv: str) -> None:
    f = write(tmp_path / "nodelocal.yaml", YAML)
    src = corefile_source(tmp_path, resolv, file=f)
    assert src.kind == "corefile"
    assert src.load().config.listen.port == 53


# --------------------------------------------------------------------------------------------------
# The kube-dns ConfigMap


def test_kubedns_stub_domains_and_upstreams_with_yaml(tmp_path: Path, resolv: str) -> None:
    d = kubedns_dir(tmp_path, {"acme.local": ["1.2.3.4", "1.2.3.5:5353"]}, ["8.8.8.8"])
    loaded = Source(kubedns_dir=d, env=CLUSTER_ENV, resolv_conf=resolv).load()
    cfg = loaded.config
    assert cfg.zones["acme.local"].forward == ("stub-acme.local",)
    assert cfg.upstreams["stub-acme.local"].addresses() == (("1.2.3.4", 53), ("1.2.3.5", 5353))
    assert cfg.upstreams["host"].addresses() == (("8.8.8.8", 53),)  # replaces resolv.conf's
    assert any(d in n and "1 stub domain" in n and "8.8.8.8" in n for n in loaded.notes)


def test_kubedns_with_a_corefile(tmp_path: Path, resolv: str) -> None:
    d = kubedns_dir(tmp_path, {"acme.local": ["1.2.3.4"]}, ["8.8.8.8", "8.8.4.4"])
    loaded = corefile_source(tmp_path, resolv, kubedns_dir=d).load()
    cfg = loaded.config
    assert cfg.zones["acme.local"].forward == ("stub-acme.local",)
    assert cfg.upstreams["stub-acme.local"].addresses() == (("1.2.3.4", 53),)
    # upstreamNameservers fill __PILLAR__UPSTREAM__SERVERS__ in place of resolv.conf, asked over UDP.
    host = cfg.upstreams[cfg.zones["."].forward[0]]
    assert host.addresses() == (("8.8.8.8", 53), ("8.8.4.4", 53))
    assert host.transport == "udp"
    assert any("1 stub domain" in n for n in loaded.notes)


def test_empty_or_missing_kubedns_dir_changes_nothing(tmp_path: Path, resolv: str) -> None:
    plain = Source(env=CLUSTER_ENV, resolv_conf=resolv).load()
    empty = Source(kubedns_dir=kubedns_dir(tmp_path), env=CLUSTER_ENV, resolv_conf=resolv).load()
    missing = Source(kubedns_dir=str(tmp_path / "absent"), env=CLUSTER_ENV, resolv_conf=resolv).load()
    assert empty.config == plain.config == missing.config
    assert empty.notes == missing.notes == ()


def test_kubedns_bad_json_is_a_config_error(tmp_path: Path, resolv: str) -> None:
    d = kubedns_dir(tmp_path)
    (Path(d) / "stubDomains").write_text("{not json")
    with pytest.raises(ConfigError):
        Source(kubedns_dir=d, env=CLUSTER_ENV, resolv_conf=resolv).load()


# --------------------------------------------------------------------------------------------------
# health_port


def test_health_port_sets_the_health_address_on_the_first_localip(resolv: str) -> None:
    over = {"listen": {"localip": ["169.254.20.10", "10.96.0.10"]}}
    cfg = Source(overrides=over, health_port=8181, env={}, resolv_conf=resolv).load().config
    assert cfg.health_addr == "169.254.20.10:8181"
    assert cfg.health_address() == ("169.254.20.10", 8181)


def test_health_port_with_an_ipv6_localip(resolv: str) -> None:
    over = {"listen": {"localip": ["fd00::10"]}}
    cfg = Source(overrides=over, health_port=8181, env={}, resolv_conf=resolv).load().config
    assert cfg.health_addr == "[fd00::10]:8181"
    assert cfg.health_address() == ("fd00::10", 8181)


def test_health_port_does_not_replace_a_configured_health_address(tmp_path: Path, resolv: str) -> None:
    over = {"health_addr": "127.0.0.1:9000"}
    cfg = Source(overrides=over, health_port=8181, env={}, resolv_conf=resolv).load().config
    assert cfg.health_addr == "127.0.0.1:9000"
    core = corefile_source(tmp_path, resolv, health_port=8181).load().config
    assert core.health_addr == "169.254.20.10:8080"  # the Corefile's `health` line


def test_no_health_port_leaves_the_health_address_empty(resolv: str) -> None:
    cfg = Source(env={}, resolv_conf=resolv).load().config
    assert cfg.health_addr == ""
    assert cfg.health_address() == ("169.254.20.10", 8080)


def test_health_port_out_of_range_is_a_config_error(resolv: str) -> None:
    with pytest.raises(ConfigError):
        Source(health_port=70000, env={}, resolv_conf=resolv).load()


# --------------------------------------------------------------------------------------------------
# watched() and fingerprint()


def test_watched(tmp_path: Path) -> None:
    assert Source().watched() == []
    assert Source(file="/etc/nl.yaml").watched() == [Path("/etc/nl.yaml")]
    assert Source(corefile="/etc/Corefile", kubedns_dir="/etc/kube-dns").watched() == [
        Path("/etc/Corefile"), Path("/etc/kube-dns")]
    assert Source(file="/etc/nl.yaml", corefile="/etc/Corefile").watched() == [Path("/etc/Corefile")]
    assert Source(kubedns_dir="/etc/kube-dns").watched() == [Path("/etc/kube-dns")]


def test_fingerprint_follows_content_not_mtime(tmp_path: Path) -> None:
    f = tmp_path / "nodelocal.yaml"
    f.write_text(YAML)
    src = Source(file=str(f))
    before = src.fingerprint()
    assert src.fingerprint() == before
    st = f.stat()
    os.utime(f, (st.st_atime + 100, st.st_mtime + 100))  # touched, same bytes
    assert src.fingerprint() == before
    f.write_text(YAML)  # rewritten with the same bytes
    assert src.fingerprint() == before
    f.write_text(YAML.replace("5353", "5354"))
    changed = src.fingerprint()
    assert changed != before
    f.write_text(YAML)
    assert src.fingerprint() == before  # back to the same content, back to the same digest


def test_fingerprint_of_a_missing_file_changes_when_it_appears(tmp_path: Path) -> None:
    f = tmp_path / "nodelocal.yaml"
    src = Source(file=str(f))
    absent = src.fingerprint()
    f.write_text("")
    assert src.fingerprint() != absent


def test_fingerprint_depends_on_which_files_are_watched(tmp_path: Path) -> None:
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text(YAML)
    b.write_text(YAML)
    assert Source(file=str(a)).fingerprint() != Source(file=str(b)).fingerprint()


def test_fingerprint_of_a_configmap_directory(tmp_path: Path) -> None:
    d = Path(kubedns_dir(tmp_path, {"acme.local": ["1.2.3.4"]}))
    src = Source(kubedns_dir=str(d))
    before = src.fingerprint()
    (d / ".hidden").write_text("ignored")
    assert src.fingerprint() == before  # dot files (..data, ..2024_01_01) are not keys
    (d / "upstreamNameservers").write_text('["8.8.8.8"]')
    with_key = src.fingerprint()
    assert with_key != before
    (d / "stubDomains").write_text(json.dumps({"acme.local": ["1.2.3.5"]}))
    assert src.fingerprint() not in (before, with_key)


def test_fingerprint_sees_a_configmap_data_swap(tmp_path: Path) -> None:
    """Kubernetes updates a mounted ConfigMap by pointing ..data at a new directory; the keys are symlinks."""
    d = tmp_path / "kube-dns"
    d.mkdir()
    v1, v2 = d / "..2024_01_01", d / "..2024_01_02"
    v1.mkdir()
    v2.mkdir()
    (v1 / "stubDomains").write_text('{"acme.local": ["1.2.3.4"]}')
    (v2 / "stubDomains").write_text('{"acme.local": ["1.2.3.5"]}')
    (d / "..data").symlink_to(v1.name)
    (d / "stubDomains").symlink_to("..data/stubDomains")
    src = Source(kubedns_dir=str(d), env=CLUSTER_ENV, resolv_conf="/nonexistent")
    before = src.fingerprint()
    assert src.load().config.upstreams["stub-acme.local"].addresses() == (("1.2.3.4", 53),)
    tmp_link = d / "..data_tmp"
    tmp_link.symlink_to(v2.name)
    tmp_link.replace(d / "..data")  # the atomic swap
    assert src.fingerprint() != before
    assert src.load().config.upstreams["stub-acme.local"].addresses() == (("1.2.3.5", 53),)


def test_loaded_carries_the_fingerprint_taken_before_reading(tmp_path: Path, resolv: str) -> None:
    src = corefile_source(tmp_path, resolv, kubedns_dir=kubedns_dir(tmp_path, {"acme.local": ["1.2.3.4"]}))
    loaded = src.load()
    assert loaded.fingerprint == src.fingerprint()
    assert loaded.fingerprint != ""
    assert src.corefile is not None
    Path(src.corefile).write_text(COREFILE.replace("cache 30", "cache 20"))
    assert src.fingerprint() != loaded.fingerprint


# --------------------------------------------------------------------------------------------------
# pick_corefile


def test_explicit_basecorefile_is_used(tmp_path: Path) -> None:
    base = write(tmp_path / "Corefile.base", COREFILE)
    conf = write(tmp_path / "Corefile", COREFILE)
    assert pick_corefile(conf, base, default_base=str(tmp_path / "other")) == base
    assert pick_corefile(None, base) == base


def test_explicit_basecorefile_must_exist(tmp_path: Path) -> None:
    conf = write(tmp_path / "Corefile", COREFILE)
    with pytest.raises(ConfigError) as e:
        pick_corefile(conf, str(tmp_path / "absent"))
    assert e.value.path == "-basecorefile"


def test_conf_prefers_the_default_base_when_it_exists(tmp_path: Path) -> None:
    conf = write(tmp_path / "Corefile", COREFILE)
    base = tmp_path / "Corefile.base"
    assert pick_corefile(conf, None, default_base=str(base)) == conf  # no ConfigMap: -conf itself
    base.write_text(COREFILE)
    assert pick_corefile(conf, None, default_base=str(base)) == str(base)
    # The default base even stands in for a -conf file that does not exist (node-cache writes it).
    assert pick_corefile(str(tmp_path / "absent"), None, default_base=str(base)) == str(base)


def test_conf_must_exist_without_a_default_base(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        pick_corefile(str(tmp_path / "absent"), None, default_base=str(tmp_path / "nope"))
    assert e.value.path == "-conf"


def test_no_corefile_flags_means_yaml(tmp_path: Path) -> None:
    write(tmp_path / "Corefile.base", COREFILE)
    assert pick_corefile(None, None, default_base=str(tmp_path / "Corefile.base")) is None
