"""nodelocal.config: defaults, file and flag layering, environment fill-ins, and errors that name the field."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import example, given, settings
from hypothesis import strategies as st

from nodelocal import ConfigError
from nodelocal.config import Config, load, parse_hostport
from nodelocal.config import model as config

REPO = Path(__file__).resolve().parents[3]
NO_RESOLV = "/nonexistent/resolv.conf"


def write(tmp_path: Path, data: Any, name: str = "c.yaml") -> str:
    p = tmp_path / name
    p.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return str(p)


def load_clean(file: str | None = None, overrides: dict[str, Any] | None = None, **kw: Any) -> Config:
    """load() with no environment and no resolv.conf unless the test gives them."""
    kw.setdefault("env", {})
    kw.setdefault("resolv_conf", NO_RESOLV)
    return load(file, overrides, **kw)


def error_of(file_data: Any = None, overrides: dict[str, Any] | None = None, tmp_path: Path | None = None,
             **kw: Any) -> ConfigError:
    file = write(tmp_path, file_data) if file_data is not None and tmp_path is not None else None
    with pytest.raises(ConfigError) as info:
        load_clean(file, overrides, **kw)
    return info.value


# --------------------------------------------------------------------------------------------------
# Defaults and layering


def test_defaults() -> None:
    cfg = load_clean()
    assert cfg.listen.localip == ("169.254.20.10",) and cfg.listen.port == 53
    assert cfg.listen.max_udp_payload == 4096
    assert cfg.cluster_domain == "cluster.local"
    assert set(cfg.upstreams) == {"cluster", "host"}
    assert cfg.upstreams["cluster"].transport == "tcp" and cfg.upstreams["host"].transport == "udp"
    assert cfg.upstreams["cluster"].servers == () and cfg.upstreams["host"].servers == ()
    assert list(cfg.zones) == ["cluster.local", "in-addr.arpa", "ip6.arpa", "."]
    assert cfg.zones["cluster.local"].forward == ("cluster",)
    assert cfg.zones["cluster.local"].cache.denial_max_ttl == 5
    assert cfg.zones["."].forward == ("cluster", "host")
    assert cfg.zones["."].cache == config.ZoneCache()
    assert cfg.cache.max_bytes == 32 * 1024 * 1024
    assert cfg.setup is True and cfg.log_level == "info"
    assert cfg.metrics_addr == ":9253" and cfg.metrics_address()[1] == 9253
    assert cfg.health_address() == ("169.254.20.10", 8080)


def test_empty_file_is_the_defaults(tmp_path: Path) -> None:
    assert load_clean(write(tmp_path, "")) == load_clean()
    assert load_clean(write(tmp_path, "# only a comment\n")) == load_clean()


def test_file_overrides_defaults(tmp_path: Path) -> None:
    file = write(tmp_path, {
        "listen": {"localip": ["10.0.0.1", "fd00::1"], "port": 5300},
        "upstreams": {"cluster": {"servers": ["10.96.0.10"], "try_timeout": 1}},
        "cache": {"max_bytes": 8192},
        "log_level": "debug",
    })
    cfg = load_clean(file)
    assert cfg.listen.localip == ("10.0.0.1", "fd00::1") and cfg.listen.port == 5300
    assert cfg.listen.tcp_idle_timeout == 10.0  # untouched sibling keeps its default
    assert cfg.upstreams["cluster"].servers == ("10.96.0.10",)
    assert cfg.upstreams["cluster"].transport == "tcp"  # group default survives a partial group
    assert cfg.upstreams["cluster"].try_timeout == 1.0 and isinstance(cfg.upstreams["cluster"].try_timeout, float)
    assert cfg.cache.max_bytes == 8192 and cfg.log_level == "debug"


def test_flags_win_over_the_file(tmp_path: Path) -> None:
    file = write(tmp_path, {"listen": {"localip": ["10.0.0.1"], "port": 5300}, "log_level": "debug",
                            "upstreams": {"host": {"servers": ["1.1.1.1"], "policy": "random"}}})
    cfg = load_clean(file, {"listen": {"port": 5400}, "log_level": "error",
                            "upstreams": {"host": {"servers": ["9.9.9.9"]}}})
    assert cfg.listen.port == 5400 and cfg.listen.localip == ("10.0.0.1",)
    assert cfg.log_level == "error"
    assert cfg.upstreams["host"].servers == ("9.9.9.9",) and cfg.upstreams["host"].policy == "random"


def test_zones_from_the_file_replace_the_defaults(tmp_path: Path) -> None:
    file = write(tmp_path, {
        "upstreams": {"corp": {"servers": ["10.1.1.1:5353"]}},
        "zones": {"corp.example": {"forward": ["corp", "host"], "cache": {"success_max_ttl": 300}},
                  ".": {"forward": ["host"]}},
    })
    cfg = load_clean(file)
    assert list(cfg.zones) == ["corp.example", "."]
    assert cfg.zones["corp.example"].cache.success_max_ttl == 300
    assert cfg.zones["corp.example"].cache.min_ttl == 5
    assert cfg.upstreams["corp"].addresses() == (("10.1.1.1", 5353),)
    assert cfg.upstreams["corp"].transport == "udp"


def test_zones_is_a_mapping_as_the_documented_config_says(tmp_path: Path) -> None:
    # config/nodelocal.yaml says what `zones` accepts and quotes the error a list gets: both hold.
    doc = (REPO / "config" / "nodelocal.yaml").read_text()
    quoted = re.search(r'is rejected with\s*#?\s*"([^"]+)"', doc)
    assert quoted is not None and "zones: a mapping" in doc
    with pytest.raises(ConfigError) as err:
        load_clean(write(tmp_path, {"zones": ["cluster.local", "."]}))
    assert err.value.path == "zones" and quoted.group(1) in str(err.value).replace("config error: ", "")


def test_cluster_domain_names_the_default_cluster_zone() -> None:
    cfg = load_clean(None, {"cluster_domain": "k8s.example"})
    assert "k8s.example" in cfg.zones and "cluster.local" not in cfg.zones
    assert cfg.zones["k8s.example"].cache.denial_max_ttl == 5


def test_comma_separated_string_for_a_list_field() -> None:
    cfg = load_clean(None, {"listen": {"localip": "10.0.0.1,fd00::1,"}})
    assert cfg.listen.localip == ("10.0.0.1", "fd00::1")


def test_comma_separated_string_tolerates_spaces() -> None:
    # the blank items are already dropped (`if v.strip()`), so "a, b" is meant to work too
    cfg = load_clean(None, {"listen": {"localip": "10.0.0.1, fd00::1"}})
    assert cfg.listen.localip == ("10.0.0.1", "fd00::1")


# --------------------------------------------------------------------------------------------------
# Errors name the field path and the value


@pytest.mark.parametrize(
    ("data", "path", "value", "words"),
    [
        ({"listen": {"prot": 53}}, "listen.prot", 53, "unknown field"),
        ({"bogus": True}, "bogus", True, "unknown field"),
        ({"upstreams": {"cluster": {"server": ["1.1.1.1"]}}}, "upstreams.cluster.server", ["1.1.1.1"],
         "unknown field"),
        ({"zones": {".": {"cache": {"min": 1}}}}, "zones...cache.min", 1, "unknown field"),
        ({"listen": {"port": "53"}}, "listen.port", "53", "whole number"),
        ({"listen": {"port": 5.5}}, "listen.port", 5.5, "whole number"),
        ({"listen": {"port": True}}, "listen.port", True, "whole number"),
        ({"listen": 5}, "listen", 5, "mapping"),
        ({"listen": {"localip": 5}}, "listen.localip", 5, "list"),
        ({"setup": "yes"}, "setup", "yes", "true or false"),
        ({"cache": {"sweep_interval": "soon"}}, "cache.sweep_interval", "soon", "number"),
        ({"log_level": 3}, "log_level", 3, "string"),
        ({"upstreams": []}, "upstreams", [], "mapping"),
        ({"listen": {"port": 70000}}, "listen.port", 70000, "<= 65535"),
        ({"listen": {"port": -1}}, "listen.port", -1, ">= 0"),
        ({"listen": {"max_udp_payload": 100}}, "listen.max_udp_payload", 100, ">= 512"),
        ({"cache": {"max_bytes": 100}}, "cache.max_bytes", 100, ">= 4096"),
        ({"upstreams": {"cluster": {"try_timeout": 0}}}, "upstreams.cluster.try_timeout", 0.0, ">= 0.01"),
        ({"zones": {".": {"cache": {"min_ttl": -1}}}}, "zones...cache.min_ttl", -1, ">= 0"),
        ({"log_level": "verbose"}, "log_level", "verbose", "one of debug, info, warning, error"),
        ({"upstreams": {"cluster": {"transport": "quic"}}}, "upstreams.cluster.transport", "quic", "one of udp, tcp"),
        ({"upstreams": {"host": {"policy": "fastest"}}}, "upstreams.host.policy", "fastest", "one of"),
        ({"listen": {"localip": ["10.0.0.1", "nope"]}}, "listen.localip[1]", "nope", "not an IP"),
        ({"listen": {"localip": []}}, "listen.localip", (), "at least one"),
        ({"upstreams": {"host": {"servers": ["1.1.1.1", "dns.google"]}}}, "upstreams.host.servers[1]",
         "dns.google", "not an IP"),
        ({"upstreams": {"cluster": {"servers": ["10.0.0.1:99999"]}}}, "upstreams.cluster.servers[0]",
         "10.0.0.1:99999", "port out of range"),
        ({"zones": {".": {"forward": ["cluster", "nope"]}}}, "zones...forward[1]", "nope", "no such upstream group"),
        ({"zones": {".": {"forward": []}}}, "zones...forward", (), "at least one"),
        ({"zones": {"corp.example": {"forward": ["host"]}}}, "zones", ["corp.example"], "'.' zone"),
        ({"zones": {"corp.example.": {}, ".": {}}}, "zones.corp.example.", "corp.example.", "without dots"),
        ({"metrics_addr": "localhost:9253"}, "metrics_addr", "localhost:9253", "not an IP"),
        ({"health_addr": "127.0.0.1:x"}, "health_addr", "127.0.0.1:x", "port is not a number"),
    ],
)
def test_errors_name_the_field_and_value(tmp_path: Path, data: dict[str, Any], path: str, value: Any,
                                         words: str) -> None:
    err = error_of(data, tmp_path=tmp_path)
    assert err.path == path
    assert err.value == value
    assert words in err.reason
    assert str(err).startswith(f"config error: {path}: ")
    assert repr(value) in str(err)


def test_flag_errors_name_the_field_too() -> None:
    err = error_of(overrides={"listen": {"port": 99999}})
    assert err.path == "listen.port" and err.value == 99999


def test_unreadable_and_invalid_files(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError) as info:
        load_clean(missing)
    assert info.value.path == "--config" and info.value.value == missing
    bad = write(tmp_path, "listen: [unclosed\n")
    with pytest.raises(ConfigError) as info:
        load_clean(bad)
    assert info.value.path == "--config" and "YAML" in info.value.reason
    top = write(tmp_path, "- a\n- b\n")
    with pytest.raises(ConfigError) as info:
        load_clean(top)
    assert info.value.path == "(top level)" and info.value.value == ["a", "b"]


# --------------------------------------------------------------------------------------------------
# Environment: the cluster DNS service and the node's resolv.conf


@pytest.mark.parametrize(
    ("env", "servers"),
    [
        ({"KUBE_DNS_UPSTREAM_SERVICE_HOST": "10.96.0.10"}, ("10.96.0.10:53",)),
        ({"KUBE_DNS_UPSTREAM_SERVICE_HOST": "10.96.0.10", "KUBE_DNS_UPSTREAM_SERVICE_PORT": "5353"},
         ("10.96.0.10:5353",)),
        ({"KUBE_DNS_UPSTREAM_SERVICE_HOST": "fd00::10", "KUBE_DNS_UPSTREAM_SERVICE_PORT": "53"}, ("[fd00::10]:53",)),
        ({"KUBE_DNS_UPSTREAM_SERVICE_HOST": ""}, ()),
        ({"KUBE_DNS_UPSTREAM_SERVICE_PORT": "53"}, ()),
        ({"KUBE_DNS_SERVICE_HOST": "10.96.0.11"}, ()),  # the other service is not ours
        ({}, ()),
    ],
)
def test_env_fills_the_cluster_group(env: dict[str, str], servers: tuple[str, ...]) -> None:
    cfg = load_clean(env=env)
    assert cfg.upstreams["cluster"].servers == servers
    assert cfg.upstreams["host"].servers == ()


def test_env_does_not_override_configured_cluster_servers() -> None:
    cfg = load_clean(None, {"upstreams": {"cluster": {"servers": ["10.0.0.53"]}}},
                     env={"KUBE_DNS_UPSTREAM_SERVICE_HOST": "10.96.0.10"})
    assert cfg.upstreams["cluster"].servers == ("10.0.0.53",)


def test_env_with_a_bad_host_names_the_group_field() -> None:
    err = error_of(env={"KUBE_DNS_UPSTREAM_SERVICE_HOST": "kube-dns.kube-system"})
    assert err.path == "upstreams.cluster.servers[0]"


def test_resolv_conf_fills_the_host_group(tmp_path: Path) -> None:
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(
        "# generated\nsearch example.com\nnameserver 192.0.2.53\noptions ndots:5\n"
        "nameserver   2001:db8::53\nnameserver fe80::1%eth0\n;nameserver 203.0.113.1\nnameserver\n"
    )
    cfg = load_clean(resolv_conf=str(resolv))
    assert cfg.upstreams["host"].servers == ("192.0.2.53", "2001:db8::53", "fe80::1")
    assert cfg.upstreams["host"].addresses() == (("192.0.2.53", 53), ("2001:db8::53", 53), ("fe80::1", 53))
    assert cfg.upstreams["cluster"].servers == ()


def test_resolv_conf_does_not_override_configured_host_servers(tmp_path: Path) -> None:
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 192.0.2.53\n")
    cfg = load_clean(None, {"upstreams": {"host": {"servers": ["9.9.9.9"]}}}, resolv_conf=str(resolv))
    assert cfg.upstreams["host"].servers == ("9.9.9.9",)


def test_missing_resolv_conf_leaves_the_host_group_empty() -> None:
    assert config.resolv_conf_nameservers(NO_RESOLV) == ()


# --------------------------------------------------------------------------------------------------
# parse_hostport


@pytest.mark.parametrize(
    ("text", "addr"),
    [
        ("10.0.0.1", ("10.0.0.1", 53)),
        ("10.0.0.1:5353", ("10.0.0.1", 5353)),
        (" 10.0.0.1:0 ", ("10.0.0.1", 0)),
        ("::1", ("::1", 53)),
        ("fd00::10", ("fd00::10", 53)),
        ("[::1]", ("::1", 53)),
        ("[fd00::10]:5353", ("fd00::10", 5353)),
        ("[::1]:65535", ("::1", 65535)),
    ],
)
def test_parse_hostport_forms(text: str, addr: tuple[str, int]) -> None:
    assert parse_hostport(text, 53, "x") == addr


@pytest.mark.parametrize(
    "text",
    ["", "localhost", "localhost:53", "10.0.0.1:", "10.0.0.1:dns", "10.0.0.1:65536", "10.0.0.256",
     "[::1", "[::1]53", "[::1]:", "[::1]:x", "[nope]:53", "::1]:53", "1.2.3.4:-1"],
)
def test_parse_hostport_rejects_bad_forms(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_hostport(text, 53, "upstreams.host.servers[0]")
    assert info.value.path == "upstreams.host.servers[0]"


def test_format_hostport_round_trips() -> None:
    for addr in (("10.0.0.1", 53), ("fd00::1", 5353)):
        assert parse_hostport(config.format_hostport(addr), 1, "x") == addr


@settings(max_examples=200, derandomize=True, deadline=None)
@given(st.text(max_size=30))
@example("0.0.0.0:¹")
def test_parse_hostport_raises_only_configerror(text: str) -> None:
    try:
        host, port = parse_hostport(text, 53, "p")
    except ConfigError:
        return
    assert 0 <= port <= 65535 and isinstance(host, str)


# --------------------------------------------------------------------------------------------------
# The shipped example config


def test_shipped_config_file_loads_to_the_defaults(tmp_path: Path) -> None:
    path = REPO / "config" / "nodelocal.yaml"
    assert path.is_file(), (
        f"{path} does not exist: config.py says it documents every field and loads to the defaults"
    )
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 192.0.2.53\n")
    env = {"KUBE_DNS_UPSTREAM_SERVICE_HOST": "10.96.0.10"}
    assert load(str(path), env=env, resolv_conf=str(resolv)) == load(None, env=env, resolv_conf=str(resolv))
    assert load(str(path), env={}, resolv_conf=NO_RESOLV) == load(None, env={}, resolv_conf=NO_RESOLV)


def _field_names(cls: type) -> set[str]:
    out = set()
    for f in dataclasses.fields(cls):
        out.add(f.name)
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            out |= _field_names(type(default))
    return out


def test_shipped_config_file_mentions_every_field() -> None:
    path = REPO / "config" / "nodelocal.yaml"
    assert path.is_file(), f"{path} does not exist"
    text = path.read_text()
    names = _field_names(Config) | _field_names(config.UpstreamGroup)
    missing = sorted(n for n in names if n not in text)
    assert not missing, f"config/nodelocal.yaml does not document: {missing}"


def test_metrics_without_a_host_are_served_on_the_node_address_and_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    from nodelocal import ConfigError
    from nodelocal.config.model import node_address

    monkeypatch.setenv("NODELOCAL_NODE_IP", "10.0.0.5")
    cfg = load(None, {}, env={}, resolv_conf="/nonexistent")
    assert cfg.metrics_addresses() == (("10.0.0.5", 9253), ("127.0.0.1", 9253))
    assert cfg.metrics_address() == ("10.0.0.5", 9253)
    other = load(None, {"metrics_addr": ":9300"}, env={}, resolv_conf="/nonexistent")
    assert other.metrics_addresses() == (("10.0.0.5", 9300), ("127.0.0.1", 9300))
    every = load(None, {"metrics_addr": "0.0.0.0:9253"}, env={}, resolv_conf="/nonexistent")
    assert every.metrics_addresses() == (("0.0.0.0", 9253),)
    monkeypatch.setenv("NODELOCAL_NODE_IP", "127.0.0.1")
    assert cfg.metrics_addresses() == (("127.0.0.1", 9253),)
    with pytest.raises(ConfigError, match="NODELOCAL_NODE_IP"):
        node_address({"NODELOCAL_NODE_IP": "node-1"})
    with pytest.raises(ConfigError, match="metrics_addr"):
        load(None, {"metrics_addr": ":http"}, env={}, resolv_conf="/nonexistent")
    # Without the variable: the source address of the default route, never every interface.
    assert node_address({}) != "0.0.0.0"


# --------------------------------------------------------------------------------------------------
# Hostile config: any value anywhere gives a Config or a ConfigError naming the field, nothing else.

SHIPPED = yaml.safe_load((Path(__file__).parents[3] / "config" / "nodelocal.yaml").read_text())
yaml_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=12),
              st.sampled_from(["", "0", "-1", "1e9", "nan", "udp", "tcp", "10.0.0.1:53", "[::1]:53", "."])),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=6,
)


def _paths(tree: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(tree, dict):
        for k, v in tree.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            out += _paths(v, (*prefix, i))
    return out


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_any_value_at_any_path_gives_a_config_or_a_config_error(tmp_path_factory: pytest.TempPathFactory,
                                                               data: st.DataObject) -> None:
    import copy
    tree = copy.deepcopy(SHIPPED)
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(_paths(tree)[1:]))
        node = tree
        for k in path[:-1]:
            node = node[k]
        node[path[-1]] = data.draw(yaml_values)
    f = tmp_path_factory.mktemp("cfg") / "nodelocal.yaml"
    f.write_text(yaml.safe_dump(tree))
    try:
        load(str(f), env={}, resolv_conf="/nonexistent")
    except ConfigError as e:
        assert e.path  # the error names the field


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
@example("upstreams: [")
@example("listen: {port: 1e999}")
def test_any_config_text_gives_a_config_or_a_config_error(tmp_path_factory: pytest.TempPathFactory, text: str) -> None:
    f = tmp_path_factory.mktemp("cfg") / "nodelocal.yaml"
    f.write_text(text)
    try:
        load(str(f), env={}, resolv_conf="/nonexistent")
    except ConfigError:
        pass
