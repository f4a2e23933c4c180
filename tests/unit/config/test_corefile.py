"""nodelocal.corefile: node-local-dns's Corefile (its add-on's default included) read as nodelocal config;
every problem reported with its line; check-config and serve take the file as node-cache does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nodelocal import ConfigError, CorefileError
from nodelocal.cli.commands import main
from nodelocal.config import ZoneCache, corefile
from nodelocal.config import model as config
from nodelocal.config.corefile import Pillars, load_text, looks_like_corefile, parse_duration, tokenize

# The add-on's ConfigMap as kubernetes/kubernetes ships it (cluster/addons/dns/nodelocaldns), placeholders
# and its odd indentation included.
ADDON_COREFILE = """\
__PILLAR__DNS__DOMAIN__:53 {
    errors
    cache {
            success 9984 30
            denial 9984 5
    }
    reload
    loop
    bind __PILLAR__LOCAL__DNS__ __PILLAR__DNS__SERVER__
    forward . __PILLAR__CLUSTER__DNS__ {
            force_tcp
    }
    prometheus :9253
    health __PILLAR__LOCAL__DNS__:8080
    }
in-addr.arpa:53 {
    errors
    cache 30
    reload
    loop
    bind __PILLAR__LOCAL__DNS__ __PILLAR__DNS__SERVER__
    forward . __PILLAR__CLUSTER__DNS__ {
            force_tcp
    }
    prometheus :9253
    }
ip6.arpa:53 {
    errors
    cache 30
    reload
    loop
    bind __PILLAR__LOCAL__DNS__ __PILLAR__DNS__SERVER__
    forward . __PILLAR__CLUSTER__DNS__ {
            force_tcp
    }
    prometheus :9253
    }
.:53 {
    errors
    cache 30
    reload
    loop
    bind __PILLAR__LOCAL__DNS__ __PILLAR__DNS__SERVER__
    forward . __PILLAR__UPSTREAM__SERVERS__
    prometheus :9253
    }
"""

# What the add-on's install instructions do to it with sed, per kube-proxy mode.
IPTABLES_SED = {"__PILLAR__LOCAL__DNS__": "169.254.20.10", "__PILLAR__DNS__DOMAIN__": "cluster.local",
                "__PILLAR__DNS__SERVER__": "10.96.0.10"}
IPVS_SED = {"__PILLAR__LOCAL__DNS__": "169.254.20.10", "__PILLAR__DNS__DOMAIN__": "cluster.local",
            "__PILLAR__DNS__SERVER__": "", "__PILLAR__CLUSTER__DNS__": "10.96.0.10",
            "__PILLAR__UPSTREAM__SERVERS__": "/etc/resolv.conf"}

NODE_CACHE = ZoneCache(success_capacity=9984, denial_capacity=9984, min_ttl=5, success_max_ttl=30,
                       denial_max_ttl=5, servfail_ttl=5, serve_stale=600.0)  # the cluster zone's stale window
CACHE_30 = ZoneCache()  # `cache 30`: CoreDNS's capacities and min TTL, max TTL 30 for both kinds


def sed(text: str, subs: dict[str, str]) -> str:
    for k, v in subs.items():
        text = text.replace(k, v)
    return text


@pytest.fixture
def resolv(tmp_path: Path) -> str:
    p = tmp_path / "resolv.conf"
    p.write_text("search example.internal\nnameserver 192.0.2.53\nnameserver 192.0.2.54\n")
    return str(p)


def load_corefile(text: str, resolv: str, **pillars: Any) -> config.Config:
    pillars.setdefault("local_ips", ("169.254.20.10",))
    res = load_text(text, Pillars(**pillars), resolv_conf=resolv)
    return config.load(None, res.data, env={}, resolv_conf=resolv)


def problems_of(text: str, **pillars: Any) -> list[tuple[int, str]]:
    pillars.setdefault("local_ips", ("169.254.20.10",))
    pillars.setdefault("cluster_dns", "10.96.0.11")
    with pytest.raises(CorefileError) as info:
        load_text(text, Pillars(**pillars), resolv_conf="/nonexistent")
    return info.value.problems


# --------------------------------------------------------------------------------------------------
# The add-on's own Corefile


def test_addon_default_corefile_with_its_placeholders(resolv: str) -> None:
    cfg = load_corefile(ADDON_COREFILE, resolv, cluster_dns="10.96.0.11")
    assert list(cfg.zones) == ["cluster.local", "in-addr.arpa", "ip6.arpa", "."]
    assert cfg.zones["cluster.local"].cache == NODE_CACHE
    assert cfg.zones["in-addr.arpa"].cache == CACHE_30 and cfg.zones["ip6.arpa"].cache == CACHE_30
    assert cfg.zones["."].cache == CACHE_30
    for z in ("cluster.local", "in-addr.arpa", "ip6.arpa"):
        assert cfg.zones[z].forward == ("cluster",)
    assert cfg.zones["."].forward == ("host",)  # the node's resolv.conf only, as node-local-dns does
    cluster, host = cfg.upstreams["cluster"], cfg.upstreams["host"]
    assert (cluster.servers, cluster.transport, cluster.policy) == (("10.96.0.11:53",), "tcp", "random")
    assert (host.servers, host.transport) == (("192.0.2.53:53", "192.0.2.54:53"), "udp")
    assert cfg.listen.localip == ("169.254.20.10",) and cfg.listen.port == 53
    assert cfg.health_address() == ("169.254.20.10", 8080)
    assert cfg.metrics_addr == ":9253"  # the node's own address and loopback, not every interface
    assert cfg.resolve.loop_detect is True
    assert cfg.cluster_domain == "cluster.local"


def test_addon_corefile_as_the_iptables_install_leaves_it(resolv: str) -> None:
    text = sed(ADDON_COREFILE, IPTABLES_SED)
    cfg = load_corefile(text, resolv, local_ips=("169.254.20.10", "10.96.0.10"), cluster_dns="10.96.0.11")
    assert cfg.listen.localip == ("169.254.20.10", "10.96.0.10")  # bind LOCAL DNS_SERVER
    assert cfg.upstreams["cluster"].servers == ("10.96.0.11:53",)
    assert cfg.zones["cluster.local"].cache == NODE_CACHE


def test_addon_corefile_as_the_ipvs_install_leaves_it(resolv: str) -> None:
    text = sed(ADDON_COREFILE, IPVS_SED)
    assert "__PILLAR__" not in text
    cfg = load_corefile(text, resolv, local_ips=None)  # nothing left to fill
    assert cfg.listen.localip == ("169.254.20.10",)
    # The literal kube-dns IP serves the cluster domain: that group is `cluster` (metrics, readiness).
    assert cfg.upstreams["cluster"].servers == ("10.96.0.10:53",) and cfg.upstreams["cluster"].transport == "tcp"
    assert cfg.zones["."].forward == ("host",) and cfg.upstreams["host"].servers[0] == "192.0.2.53:53"


def test_other_cluster_domain_fills_the_domain_placeholder(resolv: str) -> None:
    cfg = load_corefile(ADDON_COREFILE, resolv, cluster_dns="10.96.0.11", cluster_domain="k8s.example")
    assert "k8s.example" in cfg.zones and cfg.zones["k8s.example"].forward == ("cluster",)


def test_upstream_nameservers_replace_resolv_conf_and_speak_udp(resolv: str) -> None:
    text = ADDON_COREFILE.replace("forward . __PILLAR__UPSTREAM__SERVERS__",
                                  "forward . __PILLAR__UPSTREAM__SERVERS__ {\n force_tcp\n }")
    res = load_text(text, Pillars(local_ips=("169.254.20.10",), cluster_dns="10.96.0.11",
                                  upstream_servers=("198.51.100.1", "198.51.100.2:5353")), resolv_conf=resolv)
    assert res.data["upstreams"]["host"] == {"servers": ["198.51.100.1:53", "198.51.100.2:5353"],
                                             "transport": "udp", "policy": "random"}
    assert any("over UDP" in n for n in res.notes)


# --------------------------------------------------------------------------------------------------
# The subset, directive by directive


def test_cache_options(resolv: str) -> None:
    text = """
    . {
        cache 60 {
            success 5000 120 10
            denial 2000 20 10
            servfail 3s
            prefetch 10 1m 20%
            serve_stale 1h
        }
        forward . 192.0.2.1 192.0.2.2 {
            policy sequential
        }
    }
    """
    res = load_text(text, Pillars(), resolv_conf=resolv)
    assert res.data["zones"]["."]["cache"] == {
        "success_capacity": 5000, "denial_capacity": 2000, "min_ttl": 10, "success_max_ttl": 120,
        "denial_max_ttl": 20, "servfail_ttl": 3, "prefetch_hits": 10, "prefetch_percent": 20, "serve_stale": 3600.0}
    assert [n.split(": ", 1)[1].split(" 1m")[0] for n in res.notes] == ["cache prefetch DURATION"]
    assert res.data["upstreams"]["."] == {"servers": ["192.0.2.1:53", "192.0.2.2:53"], "transport": "udp",
                                          "policy": "sequential"}


def test_acl_maps_to_the_access_list(resolv: str) -> None:
    text = """
    . {
        acl {
            allow net 10.244.0.0/16 fd00:10::/64
            allow net 192.0.2.7
            drop
        }
        any
        forward . 192.0.2.1
    }
    """
    cfg = load_corefile(text, resolv)
    assert cfg.acl.allow == ("10.244.0.0/16", "fd00:10::/64", "192.0.2.7/32")
    assert cfg.acl.action == "drop" and not cfg.acl.node_ranges and cfg.resolve.minimal_any
    block = load_corefile(". {\n acl . {\n  allow net 10.0.0.0/8\n  block net *\n }\n forward . 192.0.2.1\n}\n", resolv)
    assert block.acl.allow == ("10.0.0.0/8",) and block.acl.action == "refuse"
    # CoreDNS allows what no rule blocks: without a final block everyone is answered.
    open_ = load_corefile(". {\n acl {\n  allow net 10.0.0.0/8\n }\n forward . 192.0.2.1\n}\n", resolv)
    assert open_.acl.allow == ("0.0.0.0/0", "::/0")
    # No acl at all: the default access list (the node's ranges).
    assert load_corefile(". {\n forward . 192.0.2.1\n}\n", resolv).acl.node_ranges


def test_no_cache_directive_means_nothing_cached_and_disable(resolv: str) -> None:
    res = load_text(". {\n forward . 192.0.2.1\n}\na.test {\n cache {\n disable denial\n }\n forward . 192.0.2.9\n}\n",
                    Pillars(), resolv_conf=resolv)
    assert res.data["zones"]["."]["cache"] == {"success_capacity": 0, "denial_capacity": 0}
    a = res.data["zones"]["a.test"]["cache"]
    assert a["denial_capacity"] == 0 and a["success_capacity"] == 9984 and a["success_max_ttl"] == 3600
    cfg = config.load(None, res.data, env={}, resolv_conf=resolv)
    assert cfg.zones["a.test"].forward == ("a.test",) and cfg.upstreams["a.test"].servers == ("192.0.2.9:53",)


def test_forward_options_ports_and_schemes(resolv: str) -> None:
    text = """
    .:5300 {
        forward . dns://192.0.2.1:5353 [2001:db8::1]:53 /etc/resolv.conf {
            prefer_udp
            max_concurrent 150
            max_fails 3
            policy round_robin
        }
        bind 127.0.0.1 ::1
        log
    }
    """
    res = load_text(text, Pillars(), resolv_conf=resolv)
    cfg = config.load(None, res.data, env={}, resolv_conf=resolv)
    assert cfg.listen.port == 5300 and cfg.listen.localip == ("127.0.0.1", "::1")
    assert cfg.upstreams["host"].servers == ("192.0.2.1:5353", "[2001:db8::1]:53", "192.0.2.53:53", "192.0.2.54:53")
    assert cfg.upstreams["host"].policy == "round_robin"
    assert cfg.resolve.max_concurrent == 150 and cfg.resolve.loop_detect is False
    assert any("max_fails" in n for n in res.notes)
    assert cfg.log.queries is True and cfg.log.format == "coredns"  # `log` turns the query log on


def test_log_turns_the_query_log_on_and_says_what_it_does_not_read(resolv: str) -> None:
    text = """
    cluster.local:53 {
        forward . 10.96.0.11
        log . "{remote} {name}"
    }
    .:53 {
        forward . /etc/resolv.conf
    }
    """
    res = load_text(text, Pillars(), resolv_conf=resolv)
    cfg = config.load(None, res.data, env={}, resolv_conf=resolv)
    assert cfg.log.queries is True
    assert any("custom format are not read" in n for n in res.notes)
    assert any("log in some server blocks only" in n for n in res.notes)
    without = load_text(text.replace('log . "{remote} {name}"', ""), Pillars(), resolv_conf=resolv)
    assert config.load(None, without.data, env={}, resolv_conf=resolv).log.queries is False


def test_forward_randomize_case_off_is_a_group_of_its_own(resolv: str) -> None:
    text = """
    a.test {
        forward . 192.0.2.1 {
            randomize_case off
        }
    }
    b.test {
        forward . 192.0.2.1
    }
    . {
        forward . 192.0.2.1 {
            randomize_case on
        }
    }
    """
    res = load_text(text, Pillars(), resolv_conf=resolv)
    cfg = config.load(None, res.data, env={}, resolv_conf=resolv)
    off = cfg.upstreams[cfg.zones["a.test"].forward[0]]
    on = cfg.upstreams[cfg.zones["b.test"].forward[0]]
    assert off.randomize_case is False and on.randomize_case is True
    assert cfg.zones["b.test"].forward == cfg.zones["."].forward  # same servers and options: one group
    assert problems_of(". {\n forward . 192.0.2.1 {\n randomize_case maybe\n }\n}\n") == [
        (3, "forward: bad arguments for randomize_case: 'maybe'")]


def test_zone_keys_are_normalised(resolv: str) -> None:
    res = load_text("dns://Example.COM.:53 b.test, c.test {\n forward . 192.0.2.1\n}\n. {\n forward . 192.0.2.2\n}",
                    Pillars(), resolv_conf=resolv)
    assert list(res.data["zones"]) == ["example.com", "b.test", "c.test", "."]


def test_env_references_and_quotes() -> None:
    lines = tokenize('a {$X}:53 "two words" # comment\n`raw {$X}`', env={"X": "v"})
    assert [[t.text for t in ln] for ln in lines] == [["a", "v:53", "two words"], ["raw {$X}"]]
    assert [t.line for ln in lines for t in ln] == [1, 1, 1, 2]


@pytest.mark.parametrize(("text", "seconds"), [("30", 30), ("30s", 30), ("1m30s", 90), ("500ms", 0.5), ("2h", 7200)])
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "s", "30x", "1m 30s", "-5s"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


# --------------------------------------------------------------------------------------------------
# Problems: each with its line, all at once


def test_unknown_directives_and_options_are_reported_with_lines() -> None:
    text = """\
. {
    forward . 192.0.2.1 {
        tls_servername dns.example
    }
    rewrite name foo bar
    cache 30 {
        jitter 5
    }
    hosts /etc/hosts
}
"""
    assert problems_of(text) == [
        (3, "forward: option 'tls_servername' is not supported (supported: force_tcp, prefer_udp, policy, "
            "max_concurrent, randomize_case; read and noted: max_fails, expire, health_check)"),
        (5, "directive 'rewrite' is not supported (the Corefile subset: bind, cache, forward, health, prometheus, "
            "reload, loop, errors, log, ready, acl, any)"),
        (7, "cache: unknown option 'jitter' (known: success, denial, prefetch, serve_stale, serve_stale_policy, "
            "servfail, disable, keepttl)"),
        (9, "directive 'hosts' is not supported (the Corefile subset: bind, cache, forward, health, prometheus, "
            "reload, loop, errors, log, ready, acl, any)"),
    ]


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        (". {\n forward . 192.0.2.1\n", 1, "not closed"),
        (". {\n forward . 192.0.2.1\n}\n}\n", 4, "closes no block"),
        (". { forward . 192.0.2.1 }\n", 1, "brace must end the line"),
        ("forward . 192.0.2.1\n", 1, "expected a server block"),
        ('. {\n forward . "192.0.2.1\n}\n', 2, "unclosed quote"),
        (". {\n forward . tls://192.0.2.1\n}\n", 2, "tls:// upstreams are not supported"),
        (". {\n forward . dns.google\n}\n", 2, "not an IP address"),
        (". {\n forward example.com 192.0.2.1\n}\n", 2, "FROM 'example.com'"),
        ("a.test {\n forward . 192.0.2.1\n}\n", 1, "no '.' server block"),
        (". {\n forward . 192.0.2.1\n}\n.:53 {\n forward . 192.0.2.2\n}\n", 4, "served by two server blocks"),
        (". {\n forward . 192.0.2.1\n}\na.test:5300 {\n forward . 192.0.2.2\n}\n", 4, "different ports"),
        (". {\n cache 30\n}\n", 1, "has no forward"),
        (". {\n forward . 192.0.2.1\n bind eth0\n}\n", 3, "interface names are not supported"),
        (". {\n forward . 192.0.2.1\n health 1.2.3.4:80 5.6.7.8:80\n}\n", 3, "takes one address"),
        (". {\n forward . __PILLAR__FOO__\n}\n", 2, "unknown placeholder __PILLAR__FOO__"),
        (". {\n forward . 192.0.2.1\n cache 30 {\n success 10 {\n }\n }\n}\n", 4, "nesting this deep"),
        ("10.0.0.0/8 {\n forward . 192.0.2.1\n}\n. {\n forward . 192.0.2.1\n}\n", 1, "CIDR"),
        (". {\n forward . 192.0.2.1\n forward . 192.0.2.2\n}\n", 3, "given twice"),
        (". {\n forward . 192.0.2.1\n cache x\n}\n", 3, "whole number"),
        (". {\n forward . 192.0.2.1\n acl {\n  block type ANY\n }\n}\n", 4, "per-type rules"),
        (". {\n forward . 192.0.2.1\n acl {\n  block net 10.0.0.0/8\n }\n}\n", 4, "every other source"),
        (". {\n forward . 192.0.2.1\n acl {\n  allow net 10.0.0.0/33\n }\n}\n", 4, "not a CIDR"),
        (". {\n forward . 192.0.2.1\n acl {\n  filter\n }\n}\n", 4, "'filter' is not supported"),
        (". {\n forward . 192.0.2.1\n acl {\n  block\n  allow net 10.0.0.0/8\n }\n}\n", 5, "never reached"),
        (". {\n forward . 192.0.2.1\n acl other.zone {\n  block\n }\n}\n", 3, "one access list"),
        (". {\n forward . 192.0.2.1\n acl {\n  block\n }\n}\na.test {\n forward . 192.0.2.1\n}\n", 3,
         "some server blocks only"),
        (". {\n forward . 192.0.2.1\n any x\n}\n", 3, "any takes no arguments"),
    ],
)
def test_syntax_and_semantic_errors_name_the_line(text: str, line: int, words: str) -> None:
    found = problems_of(text)
    assert any(ln == line and words in msg for ln, msg in found), found


def test_unset_placeholders_name_their_source() -> None:
    found = problems_of(ADDON_COREFILE, local_ips=None, cluster_dns=None,
                        cluster_dns_source="$KUBE_DNS_UPSTREAM_SERVICE_HOST")
    want = {i for i, ln in enumerate(ADDON_COREFILE.splitlines(), 1) if "LOCAL__DNS" in ln or "CLUSTER__DNS" in ln}
    assert {ln for ln, _m in found} == want and len(want) == 8
    assert any("__PILLAR__CLUSTER__DNS__ is not set: it comes from $KUBE_DNS_UPSTREAM_SERVICE_HOST" in m
               for _l, m in found)
    assert any("__PILLAR__LOCAL__DNS__ is not set: it comes from -localip" in m for _l, m in found)


def test_error_text_lists_every_problem() -> None:
    with pytest.raises(CorefileError) as info:
        load_text(". {\n rewrite a b\n template IN A x\n}\n", Pillars(), source="/etc/coredns/Corefile.base")
    text = str(info.value)
    assert text.startswith("config error: /etc/coredns/Corefile.base: 3 problem(s) in the Corefile:")
    assert "/etc/coredns/Corefile.base:2: directive 'rewrite'" in text
    assert "/etc/coredns/Corefile.base:3: directive 'template'" in text
    assert "/etc/coredns/Corefile.base:1: zone '.' has no forward" in text
    assert isinstance(info.value, ConfigError)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([*". {}\n\t#\"`:/_-abcz019$()", "forward", "cache", "bind", "success", "{$X}",
                                 "__PILLAR__CLUSTER__DNS__", "__PILLAR__", "192.0.2.1", " ", "\n", ":53"]),
                max_size=60).map("".join))
def test_any_text_gives_a_config_or_a_config_error(text: str) -> None:
    try:
        res = load_text(text, Pillars(local_ips=("127.0.0.1",), cluster_dns="10.96.0.11"), resolv_conf="/nonexistent")
        config.load(None, res.data, env={}, resolv_conf="/nonexistent")
    except ConfigError:
        pass


# --------------------------------------------------------------------------------------------------
# Format detection and the command line


def test_looks_like_corefile() -> None:
    assert looks_like_corefile(ADDON_COREFILE)
    assert looks_like_corefile("# comment\n.:53 {\n")
    assert looks_like_corefile(". {\n")
    for yaml_text in ("listen:\n  port: 53\n", "upstreams: {\n  cluster: {}}\n", "{}", "", "# only\n",
                      "cluster_domain: cluster.local\n"):
        assert not looks_like_corefile(yaml_text), yaml_text


@pytest.fixture
def addon_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("KUBE_DNS_UPSTREAM_SERVICE_HOST", "10.96.0.11")
    monkeypatch.setattr(corefile, "resolv_conf_nameservers", lambda path="": ("192.0.2.53",))
    p = tmp_path / "Corefile"
    p.write_text(ADDON_COREFILE)
    return p


def test_check_config_reads_a_corefile(addon_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["check-config", str(addon_file), "-localip", "169.254.20.10"],
                 ["check-config", "-conf", str(addon_file), "--localip=169.254.20.10", "-upstreamsvc",
                  "kube-dns-upstream"],
                 ["check-config", "--basecorefile", str(addon_file), "-localip=169.254.20.10"]):
        assert main(argv) == 0, capsys.readouterr().err
        out = capsys.readouterr().out.splitlines()
        assert [ln.split(":")[0] for ln in out] == ["zone cluster.local", "zone in-addr.arpa", "zone ip6.arpa",
                                                    "zone ."]
        assert "cluster[tcp: 10.96.0.11:53]" in out[0] and "host[udp: 192.0.2.53:53]" in out[3]


def test_check_config_reports_corefile_problems(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "Corefile"
    p.write_text(". {\n    forward . 192.0.2.1\n    rewrite name a b\n}\n")
    assert main(["check-config", str(p)]) == 2
    err = capsys.readouterr().err
    assert f"{p}:3: directive 'rewrite' is not supported" in err


def test_yaml_and_corefile_together_is_an_error(addon_file: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    y = tmp_path / "c.yaml"
    y.write_text("log_level: debug\n")
    assert main(["check-config", "--config", str(y), "-conf", str(addon_file)]) == 2
    assert "either a YAML config or a Corefile" in capsys.readouterr().err


def test_serve_stale_modes_policy_and_prefetch_defaults(resolv: str) -> None:
    text = """
    . {
        cache 30 {
            serve_stale 10m immediate
            serve_stale_policy prefer_positive
            prefetch 3
        }
        forward . 192.0.2.1
    }
    cluster.local {
        cache 30 {
            serve_stale
        }
        forward . 10.96.0.10
    }
    """
    res = load_text(text, Pillars(), resolv_conf=resolv)
    root = res.data["zones"]["."]["cache"]
    assert root["serve_stale"] == 600.0 and root["stale_client_timeout"] == 0.0 and root["prefer_stale"] is True
    assert root["prefetch_hits"] == 3 and root["prefetch_percent"] == 10
    assert res.data["zones"]["cluster.local"]["cache"]["serve_stale"] == 3600.0  # CoreDNS's default duration
    cfg = config.load(None, res.data, env={}, resolv_conf=resolv)
    assert cfg.zones["."].cache.prefer_stale and cfg.zones["cluster.local"].cache.stale_client_timeout == 1.8
    bad = (". {\n cache {\n serve_stale 1h later\n serve_stale_policy prefer_negative\n prefetch 2 150%\n }\n"
           " forward . 192.0.2.1\n}\n")
    assert problems_of(bad) == [
        (3, "cache: serve_stale: refresh mode must be immediate or verify, got 'later'"),
        (4, "cache: serve_stale_policy prefer_positive"),
        (5, "cache: prefetch PERCENTAGE must be 1%..99%, got '150%'"),
    ]
