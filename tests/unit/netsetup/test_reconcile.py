"""nodelocal.netsetup with fakes: the plan, rendering, the reconcile logic, error counting (no kernel here;
tests/netns runs the same code against the real one)."""
# ruff: noqa: E501  (KUBE_PROXY_SAVE is iptables-save output, kept verbatim)

from __future__ import annotations

import errno
import logging
import shlex
from collections.abc import Sequence
from typing import Any

import pytest

from nodelocal.config import load
from nodelocal.netsetup import rules_iptables, rules_nft
from nodelocal.netsetup.backends import detect, make
from nodelocal.netsetup.link import IFA_F_NODAD, Link, local_elsewhere
from nodelocal.netsetup.metrics import SETUP_ERRORTYPES, SetupStats, setup_families
from nodelocal.netsetup.plan import Plan, Redirect, build_plan, kube_dns_ips, paths_without_backend
from nodelocal.netsetup.reconcile import NetSetup
from nodelocal.netsetup.rules_iptables import IptablesRules, kube_proxy_endpoints, parse_save
from nodelocal.netsetup.rules_nft import NftRules
from nodelocal.netsetup.runner import CAPABILITY_HINT, Result, SetupError, capability_hint, check

LL, CIP, LL6, CIP6 = "169.254.20.10", "10.96.0.10", "fd53::10", "fd53:96::a"

# kube-proxy's iptables mode, as iptables-save prints it (trimmed to kube-dns; two CoreDNS endpoints).
KUBE_PROXY_SAVE = """\
*nat
:PREROUTING ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-SVC-TCOU7JCQXEZGVUNU - [0:0]
:KUBE-SVC-ERIFXISQEP7F7OF4 - [0:0]
:KUBE-SEP-HXPOF6YGQ7G4KTYC - [0:0]
:KUBE-SEP-O52CUZRI56FMZ427 - [0:0]
:KUBE-SEP-4Q54R6TA6JE3WQSH - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
-A KUBE-SEP-4Q54R6TA6JE3WQSH -p tcp -m comment --comment "kube-system/kube-dns:dns-tcp" -m tcp -j DNAT --to-destination 10.244.3.2:53
-A KUBE-SEP-HXPOF6YGQ7G4KTYC -s 10.244.3.2/32 -m comment --comment "kube-system/kube-dns:dns" -j KUBE-MARK-MASQ
-A KUBE-SEP-HXPOF6YGQ7G4KTYC -p udp -m comment --comment "kube-system/kube-dns:dns" -m udp -j DNAT --to-destination 10.244.3.2:53
-A KUBE-SEP-O52CUZRI56FMZ427 -p udp -m comment --comment "kube-system/kube-dns:dns" -m udp -j DNAT --to-destination 10.244.3.3:53
-A KUBE-SERVICES -d 10.96.0.10/32 -p udp -m comment --comment "kube-system/kube-dns:dns cluster IP" -m udp --dport 53 -j KUBE-SVC-TCOU7JCQXEZGVUNU
-A KUBE-SERVICES -d 10.96.0.10/32 -p tcp -m comment --comment "kube-system/kube-dns:dns-tcp cluster IP" -m tcp --dport 53 -j KUBE-SVC-ERIFXISQEP7F7OF4
-A KUBE-SERVICES -d 10.96.0.100/32 -p udp -m udp --dport 53 -j KUBE-SVC-OTHER
-A KUBE-SVC-TCOU7JCQXEZGVUNU ! -s 10.244.0.0/16 -d 10.96.0.10/32 -p udp -m comment --comment "kube-system/kube-dns:dns cluster IP" -m udp --dport 53 -j KUBE-MARK-MASQ
-A KUBE-SVC-TCOU7JCQXEZGVUNU -m comment --comment "kube-system/kube-dns:dns -> 10.244.3.2:53" -m statistic --mode random --probability 0.50000000000 -j KUBE-SEP-HXPOF6YGQ7G4KTYC
-A KUBE-SVC-TCOU7JCQXEZGVUNU -m comment --comment "kube-system/kube-dns:dns -> 10.244.3.3:53" -j KUBE-SEP-O52CUZRI56FMZ427
-A KUBE-SVC-ERIFXISQEP7F7OF4 -j KUBE-SEP-4Q54R6TA6JE3WQSH
COMMIT
"""


def lab_plan(target_local: bool = False, health: int = 8080) -> Plan:
    return build_plan((LL, CIP, LL6), 53, health, (CIP, CIP6), lambda ip: target_local)


# --------------------------------------------------------------------------------------------------
# Fakes


class FakeNft:
    """Just enough of `nft` for one table: terse listing, atomic replace, heartbeat, delete."""

    def __init__(self) -> None:
        self.table: str | None = None
        self.calls: list[tuple[tuple[str, ...], str | None]] = []
        self.fail: Result | None = None

    def __call__(self, argv: Sequence[str], stdin: str | None = None) -> Result:
        argv = tuple(argv)
        self.calls.append((argv, stdin))
        if self.fail is not None:
            return self.fail
        if argv[:2] == ("nft", "-t"):
            if self.table is None:
                return Result(1, "", "Error: No such file or directory")
            return Result(0, self.table)
        if argv[:2] == ("nft", "-f"):
            assert stdin is not None
            if stdin.startswith("table inet nodelocal\ndelete table inet nodelocal\n"):
                self.table = stdin.split("\n", 2)[2]  # the definition stands for its listing
            elif self.table is None:
                return Result(1, "", "Error: No such file or directory")
            return Result(0)
        if argv[:3] == ("nft", "delete", "table"):
            self.table = None
            return Result(0)
        if argv[:3] == ("nft", "list", "tables"):
            return Result(0, "table inet nodelocal\n" if self.table else "")
        return Result(127, "", f"{argv[0]}: not found")

    def writes(self) -> int:
        return sum(1 for argv, stdin in self.calls if argv[:2] == ("nft", "-f") and stdin and "delete table" in stdin)


class FakeIptables:
    """A tiny iptables-save/-restore --noflush and ipset, per family, good enough to reconcile against."""

    def __init__(self, variant: str = "nft", nat4: str = "") -> None:
        self.variant = variant
        self.tables: dict[int, dict[str, dict[str, list[str]]]] = {4: {}, 6: {}}  # fam -> table -> chain -> rules
        self.sets: set[str] = set()
        self.restores = 0
        if nat4:
            self._apply(4, nat4)

    def _fam(self, tool: str) -> int:
        return 6 if tool.startswith("ip6tables") else 4

    def _apply(self, fam: int, text: str) -> None:
        tables = self.tables[fam]
        cur: dict[str, list[str]] = {}
        for line in text.splitlines():
            if line.startswith("*"):
                cur = tables.setdefault(line[1:], {})
                for builtin in ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"):
                    cur.setdefault(builtin, [])
            elif line.startswith(":"):
                cur[line[1:].split()[0]] = []
            elif line.startswith(("-A", "-I", "-D", "-X")):
                args = shlex.split(line)
                op, chain = args[0], args[1]
                if op == "-X":
                    assert not cur[chain], "chain not empty"
                    del cur[chain]
                    continue
                rest = args[3:] if op == "-I" else args[2:]
                rule = " ".join(rules_iptables._quote(a) for a in rest)
                if op == "-A":
                    cur[chain].append(rule)
                elif op == "-I":
                    cur[chain].insert(0, rule)
                else:
                    cur[chain].remove(rule)  # ValueError = "Bad rule (does a matching rule exist?)"

    def save(self, fam: int) -> str:
        out = []
        for tname, chains in self.tables[fam].items():
            out.append(f"*{tname}")
            out += [f":{c} - [0:0]" for c in chains]
            out += [f"-A {c} {r}" for c, rules in chains.items() for r in rules]
            out.append("COMMIT")
        return "\n".join(out) + "\n"

    def __call__(self, argv: Sequence[str], stdin: str | None = None) -> Result:
        tool = argv[0]
        if tool == "ipset":
            if argv[1] == "create":
                self.sets.add(argv[2])
            elif argv[1:3] == ["list", "-n"]:
                return Result(0, "\n".join(sorted(self.sets)))
            elif argv[1] == "destroy":
                self.sets.discard(argv[2])
            return Result(0)
        if not tool.endswith(f"-{self.variant}-save") and not tool.endswith(f"-{self.variant}-restore"):
            return Result(127, "", "not found")
        fam = self._fam(tool)
        if tool.endswith("-save"):
            return Result(0, self.save(fam))
        self.restores += 1
        assert stdin is not None
        self._apply(fam, stdin)
        return Result(0)

    def rules(self, fam: int, table: str, chain: str) -> list[str]:
        return self.tables[fam].get(table, {}).get(chain, [])


class Msg(dict[str, Any]):
    def __init__(self, attrs: dict[str, Any], **fields: Any) -> None:
        super().__init__(fields)
        self.attrs = attrs

    def get_attr(self, name: str) -> Any:
        return self.attrs.get(name)


class NlError(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(code, errno.errorcode.get(code, "?"))
        self.code = code


class FakeIPRoute:
    """pyroute2's IPRoute, the calls link.py makes, over an in-memory set of links."""

    def __init__(self, dummy: bool = False) -> None:
        self.dummy = dummy
        self.links: dict[str, dict[str, Any]] = {"lo": {"index": 1, "kind": None, "up": True, "addrs": ["127.0.0.1"]}}
        self.calls: list[tuple[str, Any]] = []
        self.fail_add: int | None = None

    def __enter__(self) -> FakeIPRoute:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def _by_index(self, idx: int) -> dict[str, Any]:
        return next(v for v in self.links.values() if v["index"] == idx)

    def link_lookup(self, **kw: Any) -> list[int]:
        link = self.links.get(kw["ifname"])
        return [link["index"]] if link else []

    def link(self, command: str, **kw: Any) -> None:
        self.calls.append(("link", (command, kw)))
        if command == "add":
            if self.fail_add is not None:
                raise NlError(self.fail_add)
            if kw["kind"] == "dummy" and not self.dummy:
                raise NlError(errno.EOPNOTSUPP)
            if kw["ifname"] in self.links:
                raise NlError(errno.EEXIST)
            self.links[kw["ifname"]] = {"index": 1 + max(v["index"] for v in self.links.values()),
                                        "kind": kw["kind"], "up": False, "addrs": []}
        elif command == "set" and kw.get("state") == "up":
            self._by_index(kw["index"])["up"] = True
        elif command == "del":
            name = next(n for n, v in self.links.items() if v["index"] == kw["index"])
            del self.links[name]

    def get_links(self, *idx: int) -> list[Msg]:
        link = self._by_index(idx[0])
        info = Msg({"IFLA_INFO_KIND": link["kind"]})
        return [Msg({"IFLA_LINKINFO": info}, flags=0x1 if link["up"] else 0)]

    def addr(self, command: str, **kw: Any) -> None:
        self.calls.append(("addr", (command, kw)))
        link = self._by_index(kw["index"])
        if kw["address"] in link["addrs"]:
            raise NlError(errno.EEXIST)
        link["addrs"].append(kw["address"])

    def get_addr(self, **kw: Any) -> list[Msg]:
        out = []
        for link in self.links.values():
            if "index" in kw and link["index"] != kw["index"]:
                continue
            out += [Msg({"IFA_ADDRESS": a}, index=link["index"]) for a in link["addrs"]]
        return out


# --------------------------------------------------------------------------------------------------
# plan.py


def test_kube_dns_ips_come_from_config_then_env_then_localips() -> None:
    assert kube_dns_ips(("10.0.0.10",), (LL, CIP), {"KUBE_DNS_SERVICE_HOST": "10.1.1.1"})[0] == ("10.0.0.10",)
    assert kube_dns_ips((), (LL, CIP), {"KUBE_DNS_SERVICE_HOST": "10.1.1.1"})[0] == ("10.1.1.1",)
    assert kube_dns_ips((), (LL, CIP), {"KUBE_DNS_SERVICE_HOST": "not-an-ip"})[0] == (CIP,)
    assert kube_dns_ips((), (LL, CIP, "fe80::10"), {})[0] == (CIP,)  # link-local addresses are never ClusterIPs
    assert kube_dns_ips((), (LL,), {}) == ((), "nowhere (set netsetup.kube_dns_ips)")


def test_plan_redirects_every_non_clusterip_to_the_clusterip_of_its_family() -> None:
    plan = lab_plan()
    assert plan.redirects == (Redirect(LL, CIP, False), Redirect(LL6, CIP6, False))
    assert plan.ips(4) == (LL, CIP) and plan.ips(6) == (LL6,)
    assert paths_without_backend(plan, (CIP, CIP6)) == {CIP: "kube-proxy"}
    v4_only = build_plan((LL, LL6), 53, 0, (CIP,), lambda ip: True)  # no IPv6 ClusterIP known
    assert v4_only.redirects == (Redirect(LL, CIP, True),)
    assert paths_without_backend(v4_only, (CIP,)) == {LL6: "none"}


# --------------------------------------------------------------------------------------------------
# rules_nft.py


def test_nft_render_guards_notrack_with_a_live_socket_and_a_heartbeat() -> None:
    text, paths = rules_nft.render(lab_plan())
    assert text.startswith("table inet nodelocal {")
    for ip, v in ((LL, "ip"), (CIP, "ip"), (LL6, "ip6")):
        for proto in ("udp", "tcp"):
            assert f"{v} daddr {ip} {proto} dport 53 socket wildcard 0 notrack" in text
            assert f"{v} saddr {ip} {proto} sport 53 notrack" in text
            assert f"{v} daddr {ip} {proto} dport 53 accept" in text
        fam = 6 if v == "ip6" else 4
        assert f"{v} daddr {ip} tcp dport 53 tcp flags & syn == 0 {v} daddr @alive{fam} socket transparent 0 notrack" in text
        assert f"{v} daddr {ip} tcp dport 8080 notrack" in text
        assert f"{v} saddr {ip} ct status dnat masquerade" in text
    assert "ip daddr @alive4 udp dport 53 notrack" in text and "ip6 daddr @alive6 tcp dport 53 notrack" in text
    assert f"elements = {{ {LL} timeout 3s, {CIP} timeout 3s }}" in text
    # The ClusterIP falls open by itself; the others are rewritten to it, in prerouting and output.
    assert text.count(f"ip daddr set {CIP}") == 2 and text.count(f"ip6 daddr set {CIP6}") == 2
    assert f"ip daddr {CIP} meta l4proto" not in text
    assert "type route hook output priority -150" in text and "type filter hook prerouting priority -150" in text
    assert "dnat" not in text.replace("ct status dnat", "")
    assert paths == {LL: "rewrite", LL6: "rewrite"}
    rules = [ln for ln in text.splitlines() if ln.startswith("\t\t") and not ln.startswith(("\t\ttype", "\t\tflags",
                                                                                           "\t\telements"))]
    assert rules and all(line.count('comment "nodelocal: ') == 1 for line in rules)


def test_nft_render_ipvs_mode_dnats_to_the_local_clusterip() -> None:
    text, paths = rules_nft.render(lab_plan(target_local=True, health=0))
    assert f"dnat ip to {CIP}" in text and f"dnat ip6 to {CIP6}" in text
    assert "daddr set" not in text and "8080" not in text
    assert "type nat hook prerouting priority -101" in text
    assert paths == {LL: "dnat-clusterip", LL6: "dnat-clusterip"}


def test_nft_heartbeat_flushes_and_adds_in_one_transaction() -> None:
    script = rules_nft.heartbeat_script(lab_plan())
    assert script.splitlines() == [
        "flush set inet nodelocal alive4",
        f"add element inet nodelocal alive4 {{ {LL} timeout 3s, {CIP} timeout 3s }}",
        "flush set inet nodelocal alive6",
        f"add element inet nodelocal alive6 {{ {LL6} timeout 3s }}",
    ]


def test_nft_ensure_writes_once_then_only_on_drift_and_remove_is_idempotent() -> None:
    nft = FakeNft()
    backend = NftRules(nft)
    assert backend.ensure(lab_plan())[0] is True
    assert nft.writes() == 1
    for _ in range(20):
        assert backend.ensure(lab_plan())[0] is False
    assert nft.writes() == 1  # many rounds, one write: nothing duplicated, nothing churned
    assert nft.table is not None
    nft.table = nft.table.replace("socket wildcard 0 notrack", "", 1)  # someone deletes a rule
    assert backend.ensure(lab_plan())[0] is True and nft.writes() == 2
    assert backend.ensure(lab_plan(health=0))[0] is True  # the plan changed: rewritten
    assert backend.remove() is True and nft.table is None
    assert backend.remove() is False
    assert [c for c in nft.calls if c[0][:3] == ("nft", "delete", "table")] == [
        (("nft", "delete", "table", "inet", "nodelocal"), None)]


# --------------------------------------------------------------------------------------------------
# rules_iptables.py


def test_kube_proxy_endpoints_follow_kube_services_to_the_dnat_targets() -> None:
    nat = parse_save(KUBE_PROXY_SAVE)["nat"]
    assert kube_proxy_endpoints(nat, CIP, 53, "udp") == ["10.244.3.2:53", "10.244.3.3:53"]
    assert kube_proxy_endpoints(nat, CIP, 53, "tcp") == ["10.244.3.2:53"]
    assert kube_proxy_endpoints(nat, "10.96.0.1", 53, "udp") == []
    assert kube_proxy_endpoints(nat, CIP, 5353, "udp") == []
    assert kube_proxy_endpoints(None, CIP, 53, "udp") == []


def test_iptables_render_dnat_to_endpoints_with_even_odds() -> None:
    nat = parse_save(KUBE_PROXY_SAVE)["nat"]
    chains, paths = rules_iptables.render(lab_plan(), 4, nat)
    assert paths == {LL: "dnat-endpoints"}
    pre = [" ".join(r) for r in chains["nat"]["NODELOCAL-PREROUTING"]]
    assert chains["nat"]["NODELOCAL-OUTPUT"] == chains["nat"]["NODELOCAL-PREROUTING"]
    udp = [r for r in pre if "-p udp" in r]
    assert len(udp) == 2
    assert "--probability 0.50000000000" in udp[0] and "--to-destination 10.244.3.2:53" in udp[0]
    assert "statistic" not in udp[1] and "--to-destination 10.244.3.3:53" in udp[1]
    assert all(f"-d {LL} " in r for r in pre)  # only the link-local IP is redirected, never the ClusterIP
    raw = [" ".join(r) for r in chains["raw"]["NODELOCAL-PREROUTING"]]
    assert all("-m socket" in r and "NOTRACK" in r for r in raw) and len(raw) == 4
    out = [" ".join(r) for r in chains["raw"]["NODELOCAL-OUTPUT"]]
    assert sum("--match-set nodelocal-alive4 dst" in r for r in out) == 2
    _, paths = rules_iptables.render(lab_plan(), 4, None)  # no kube-proxy rules: no way to fail open
    assert paths == {LL: "none"}
    chains, paths = rules_iptables.render(lab_plan(target_local=True), 6, None)
    assert paths == {LL6: "dnat-clusterip"}
    assert any(r[-1] == CIP6 for r in chains["nat"]["NODELOCAL-PREROUTING"])


def test_iptables_ensure_once_repairs_and_never_touches_foreign_rules() -> None:
    fake = FakeIptables("nft", KUBE_PROXY_SAVE)
    fake._apply(4, "*raw\n-A PREROUTING -p udp --dport 5353 -j NOTRACK\nCOMMIT\n")  # someone else's
    backend = IptablesRules(fake, "nft")
    assert backend.ensure(lab_plan())[0] is True
    first = (fake.save(4), fake.save(6))
    for _ in range(10):
        assert backend.ensure(lab_plan())[0] is False
    assert (fake.save(4), fake.save(6)) == first and fake.restores == 2
    for table, hooks in rules_iptables.HOOKS.items():
        for hook in hooks:
            jumps = [r for r in fake.rules(4, table, hook) if "NODELOCAL-" in r]
            assert len(jumps) == 1 and fake.rules(4, table, hook)[0] == jumps[0]  # once, at the top
    assert fake.rules(4, "raw", "PREROUTING")[1] == "-p udp --dport 5353 -j NOTRACK"
    assert fake.sets == {"nodelocal-alive4", "nodelocal-alive6"}
    # A rule of ours deleted, a jump deleted, a jump duplicated: one write puts it all back as it was.
    fake.tables[4]["raw"]["NODELOCAL-PREROUTING"].pop(0)
    fake.tables[4]["nat"]["PREROUTING"] = [r for r in fake.rules(4, "nat", "PREROUTING") if "NODELOCAL" not in r]
    fake.tables[6]["filter"]["INPUT"].append(fake.rules(6, "filter", "INPUT")[0])
    assert backend.ensure(lab_plan())[0] is True
    assert (fake.save(4), fake.save(6)) == first
    # Teardown: ours gone, kube-proxy's and the foreign rule still there.
    assert backend.remove() is True
    assert "NODELOCAL" not in fake.save(4) + fake.save(6) and "nodelocal" not in fake.save(4) + fake.save(6)
    assert fake.rules(4, "raw", "PREROUTING") == ["-p udp --dport 5353 -j NOTRACK"]
    assert "KUBE-SVC-TCOU7JCQXEZGVUNU" in fake.save(4) and fake.sets == set()
    assert backend.remove() is False


def test_iptables_restore_quotes_like_iptables() -> None:
    assert rules_iptables._quote("nodelocal: a b") == '"nodelocal: a b"'
    assert rules_iptables._quote("NOTRACK") == "NOTRACK"
    assert rules_iptables._line("OUTPUT", ["-j", "X"], "-I") == "-I OUTPUT 1 -j X"


# --------------------------------------------------------------------------------------------------
# backends.py, runner.py


def runner_of(outputs: dict[str, Result]) -> Any:
    def run(argv: Sequence[str], stdin: str | None = None) -> Result:
        return outputs.get(" ".join(argv), Result(127, "", "not found"))
    return run


@pytest.mark.parametrize(("outputs", "want"), [
    ({"nft list tables": Result(0, "table ip kube-proxy\ntable ip filter\n")}, "nft"),
    ({"nft list tables": Result(0, "table ip nat\n"), "iptables-nft-save": Result(0, ":KUBE-SERVICES - [0:0]\n"),
      "iptables-legacy-save": Result(0, "")}, "iptables-nft"),
    ({"nft list tables": Result(0, ""), "iptables-nft-save": Result(0, ":KUBE-FIREWALL - [0:0]\n"),
      "iptables-legacy-save": Result(0, ":KUBE-SERVICES - [0:0]\n:KUBE-SVC-A - [0:0]\n")}, "iptables-legacy"),
    ({"nft list tables": Result(0, ""), "iptables-nft-save": Result(0, ""),
      "iptables-legacy-save": Result(0, "")}, "nft"),
    ({"iptables-legacy-save": Result(0, "")}, "iptables-legacy"),
    ({}, "nft"),
])
def test_auto_picks_the_backend_kube_proxy_uses(outputs: dict[str, Result], want: str) -> None:
    name, why = detect(runner_of(outputs))
    assert name == want and why
    assert make(name, runner_of({})).name == want


def test_check_maps_failures_to_node_cache_error_types() -> None:
    assert check(runner_of({"x": Result(0, "out")}), ["x"]) == "out"
    with pytest.raises(SetupError) as e:
        check(runner_of({"x": Result(1, "", "iptables: Bad rule")}), ["x"])
    assert e.value.errortype == "iptables" and "Bad rule" in str(e.value)
    with pytest.raises(SetupError) as e:
        check(runner_of({"x": Result(4, "", "Another app is currently holding the xtables lock.")}), ["x"])
    assert e.value.errortype == "iptables_lock"


# --------------------------------------------------------------------------------------------------
# link.py


def test_link_falls_back_to_a_bridge_and_holds_every_local_ip(caplog: pytest.LogCaptureFixture) -> None:
    ipr = FakeIPRoute(dummy=False)
    link = Link("nodelocaldns", (LL, CIP, LL6))
    with caplog.at_level(logging.WARNING):
        assert link.ensure(ipr) is True
    assert "no dummy driver" in caplog.text and link.kind == "bridge"
    adds = [kw for kind, (cmd, kw) in ipr.calls if kind == "link" and cmd == "add"]
    assert [a["kind"] for a in adds] == ["dummy", "bridge"] and adds[1]["br_mcast_snooping"] == 0
    addrs = {kw["address"]: kw for kind, (cmd, kw) in ipr.calls if kind == "addr"}
    assert addrs[LL]["prefixlen"] == 32 and addrs[LL6]["prefixlen"] == 128 and addrs[LL6]["flags"] == IFA_F_NODAD
    assert ipr.links["nodelocaldns"]["up"]
    assert link.ensure(ipr) is False  # idempotent
    ipr.links["nodelocaldns"]["addrs"].remove(CIP)
    assert link.ensure(ipr) is True and CIP in ipr.links["nodelocaldns"]["addrs"]
    assert link.remove(ipr) is True and link.remove(ipr) is False


def test_link_uses_dummy_where_there_is_one() -> None:
    ipr = FakeIPRoute(dummy=True)
    link = Link("nodelocaldns", (LL,))
    assert link.ensure(ipr) and ipr.links["nodelocaldns"]["kind"] == "dummy" and link.kind == "dummy"


def test_local_elsewhere_sees_ipvs_clusterips() -> None:
    ipr = FakeIPRoute()
    Link("nodelocaldns", (LL, CIP)).ensure(ipr)
    assert local_elsewhere(ipr, CIP, "nodelocaldns") is False  # ours: iptables mode
    ipr.links["kube-ipvs0"] = {"index": 9, "kind": "dummy", "up": True, "addrs": ["10.96.0.1"]}
    assert local_elsewhere(ipr, "10.96.0.1", "nodelocaldns") is True


# --------------------------------------------------------------------------------------------------
# reconcile.py: the loop, counting, ordering


def netsetup(runner: Any, ipr: FakeIPRoute, **netsetup_cfg: Any) -> tuple[NetSetup, SetupStats]:
    cfg = load(None, {"listen": {"localip": [LL, CIP]}, "netsetup": {"rules_backend": "nft", **netsetup_cfg}},
               env={}, resolv_conf="/nonexistent")
    stats = SetupStats()
    return NetSetup(cfg, stats, runner=runner, ipr_factory=lambda: ipr, env={}), stats


def test_reconcile_counts_rounds_and_repairs() -> None:
    nft, ipr = FakeNft(), FakeIPRoute()
    ns, stats = netsetup(nft, ipr)
    assert ns.ensure_link() is True
    assert ns.ensure_rules() is True
    assert stats.setup_failopen == {CIP: "kube-proxy", LL: "rewrite"}
    for _ in range(5):
        ns.sync()
    assert stats.setup_reconciles == 5 and stats.setup_repairs == {"interface": 0, "rules": 0}
    assert nft.writes() == 1
    nft.table = None  # someone deleted our table
    del ipr.links["nodelocaldns"]
    ns.sync()
    assert stats.setup_repairs == {"interface": 1, "rules": 1}
    assert stats.setup_errors == dict.fromkeys(SETUP_ERRORTYPES, 0)
    beats = [stdin for argv, stdin in nft.calls if stdin and stdin.startswith("flush set")]
    assert len(beats) == 7  # one heartbeat after each ensure_rules


def test_failures_are_counted_by_type_and_never_raised(caplog: pytest.LogCaptureFixture) -> None:
    nft, ipr = FakeNft(), FakeIPRoute()
    ns, stats = netsetup(nft, ipr)
    ipr.fail_add = errno.EPERM
    with caplog.at_level(logging.WARNING):
        assert ns.ensure_link() is False
    # The kernel refused for lack of a capability: the log says which one.
    assert "interface nodelocaldns failed" in caplog.text and "CAP_NET_ADMIN capability" in caplog.text
    caplog.clear()
    nft.fail = Result(1, "", "Error: Could not process rule: Operation not permitted")
    with caplog.at_level(logging.WARNING):
        assert ns.ensure_rules() is False
    assert "rules failed" in caplog.text and "CAP_NET_ADMIN capability" in caplog.text
    ns.sync()
    assert stats.setup_errors["interface_add"] == 2 and stats.setup_errors["iptables"] == 2
    nft.fail = None
    ipr.fail_add = None
    ns.sync()
    assert stats.setup_reconciles == 2 and ns.rules_in
    # The heartbeat's failure is counted every time but logged once per outage.
    nft.table = None
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            ns.heartbeat()
    assert stats.setup_errors["iptables"] == 5 and caplog.text.count("heartbeat failed") == 1
    families = {f.name: f for f in setup_families(stats)}
    errs = {s.labels["errortype"]: s.value for s in families["coredns_nodecache_setup_errors"].samples}
    assert set(errs) == set(SETUP_ERRORTYPES) and errs["iptables"] == 5


def test_capability_hint_only_for_a_refusal() -> None:
    assert capability_hint("iptables-restore v1.8.9 (legacy): Permission denied (you must be root)").endswith(
        CAPABILITY_HINT)
    assert capability_hint("nft -f -: Error: syntax error") == "nft -f -: Error: syntax error"
    assert capability_hint("adding 169.254.20.10 to nodelocaldns: (17, 'File exists')").count("CAP_") == 0


def test_a_held_xtables_lock_counts_as_iptables_lock() -> None:
    fake = FakeIptables("legacy", KUBE_PROXY_SAVE)
    locked = True

    def runner(argv: Sequence[str], stdin: str | None = None) -> Result:
        if locked and argv[0].endswith("-restore"):
            return Result(4, "", "Another app is currently holding the xtables lock. Stopped waiting after 5s.")
        return fake(argv, stdin)

    ns, stats = netsetup(runner, FakeIPRoute(), rules_backend="iptables-legacy")
    assert ns.ensure_rules() is False
    assert stats.setup_errors["iptables_lock"] == 1 and stats.setup_errors["iptables"] == 0
    locked = False
    ns.sync()
    assert ns.rules_in and stats.setup_failopen == {CIP: "kube-proxy", LL: "dnat-endpoints"}


def test_teardown_removes_rules_before_the_interface() -> None:
    order: list[str] = []
    nft, ipr = FakeNft(), FakeIPRoute()

    def runner(argv: Sequence[str], stdin: str | None = None) -> Result:
        if list(argv[:3]) == ["nft", "delete", "table"]:
            order.append("rules")
        return nft(argv, stdin)

    real_link = ipr.link

    def link(command: str, **kw: Any) -> None:
        if command == "del":
            order.append("interface")
        real_link(command, **kw)

    ipr.link = link  # type: ignore[method-assign]
    ns, _ = netsetup(runner, ipr)
    ns.ensure_link()
    ns.ensure_rules()
    ns.teardown()
    assert order == ["rules", "interface"]
    assert nft.table is None and "nodelocaldns" not in ipr.links
    ns.teardown()  # again: nothing left, nothing fails
    assert order == ["rules", "interface"]
