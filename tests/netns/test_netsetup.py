"""Network setup against the real kernel, in a lab of namespaces per test (hack/lab.sh).

The lab's node runs kube-proxy-like DNAT (iptables nat) for the kube-dns ClusterIP 10.96.0.10 and the
kube-dns-upstream ClusterIP 10.96.0.11 to a CoreDNS namespace. pod-a asks the ClusterIP, pod-b asks
169.254.20.10 and fd53::10, the node itself is a host-network client.
"""

from __future__ import annotations

import random
import re
import sys
import time
from collections.abc import Callable

import pytest

from nodelocal.netsetup import rules_iptables, rules_nft
from nodelocal.netsetup.plan import Plan, build_plan
from tests.netns.labctl import KUBE_DNS, LINK_LOCAL, LOCAL6, POD_A, POD_B, ROOT_ONLY, Lab, wait_until

pytestmark = [pytest.mark.netns, ROOT_ONLY]

WEB = "web.default.svc.cluster.local"
API = "api.default.svc.cluster.local"
WEB_A, WEB_AAAA, API_A = "10.96.1.5", "fd53:96::1:5", "10.96.1.6"
SYNC = 1.0  # seconds: the agent's --sync-interval in these tests
ROUND = 1.5  # seconds one reconcile round may take on a loaded 2-core machine (a handful of nft/iptables runs)

# A silent DNS server on every address of the node: binds 0.0.0.0:53 for UDP and TCP, never answers.
WILDCARD_LISTENER = """
import socket, time
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("0.0.0.0", 53))
t = socket.socket(socket.AF_INET, socket.SOCK_STREAM); t.bind(("0.0.0.0", 53)); t.listen(8)
time.sleep(60)
"""

# (--rules-backend, where the lab's kube-proxy writes, the backend the agent must end up with)
BACKENDS = [
    pytest.param("nft", "iptables-nft", "nft", id="nft"),
    pytest.param("auto", "iptables-nft", "iptables-nft", id="iptables-nft"),
    pytest.param("auto", "iptables-legacy", "iptables-legacy", id="iptables-legacy"),
]


def lab_plan() -> Plan:
    """The plan the lab's agent config yields (hack/lab.sh writes it), for counting expected rules."""
    return build_plan((LINK_LOCAL, KUBE_DNS, LOCAL6), 53, 8080, (KUBE_DNS, "fd53:96::a"), lambda ip: False)


# --------------------------------------------------------------------------------------------------
# What of ours is in the kernel, and what is not ours


def ours_and_foreign(lab: Lab, backend: str) -> tuple[list[str], list[str]]:
    """(our rule lines, everything else) in the node, for one backend; set elements left out."""
    if backend == "nft":
        ruleset = lab.out("node", "nft", "-s", "-t", "list", "ruleset")
        ours_text = lab.run("node", "nft", "-s", "-t", "list", "table", "inet", "nodelocal", check=False).stdout
        ours, chain = [], ""
        for ln in ours_text.splitlines():
            if ln.strip().startswith("chain "):
                chain = ln.split()[1]
            elif "comment \"nodelocal" in ln:
                ours.append(f"{chain}: {ln.strip()}")
        foreign = ruleset.replace(ours_text, "") if ours_text else ruleset
        return ours, [ln for ln in foreign.splitlines() if ln.strip()]
    v = backend.removeprefix("iptables-")
    ours: list[str] = []
    foreign: list[str] = []
    for tool in (f"iptables-{v}-save", f"ip6tables-{v}-save"):
        table = ""
        for ln in lab.out("node", tool).splitlines():
            if ln.startswith("*"):
                table = ln[1:]
            if ln.startswith("-A"):  # rules; chain lines carry counters, tables come and go with rules
                mine = "NODELOCAL" in ln or "nodelocal" in ln
                (ours if mine else foreign).append(f"{tool[:3]} {table} {ln}")
    sets = lab.out("node", "ipset", "list", "-n").split()
    foreign += [f"ipset {s}" for s in sets if not s.startswith("nodelocal-")]
    ours += [f"ipset {s}" for s in sets if s.startswith("nodelocal-")]
    return ours, foreign


def expected_rule_count(backend: str) -> int:
    plan = lab_plan()
    if backend == "nft":
        text, _ = rules_nft.render(plan)
        return text.count('comment "nodelocal')
    n = 0
    for fam in (4, 6):
        chains, _ = rules_iptables.render(plan, fam, None)
        # our chains' rules (without fail-open DNATs: no kube-proxy save given), plus one jump per hook
        n += sum(len(rules) for t in chains.values() for rules in t.values())
        n += sum(len(hooks) for hooks in rules_iptables.HOOKS.values())
    return n + 2  # the two ipsets


def add_foreign(lab: Lab, backend: str) -> None:
    """Rules of somebody else, in the same hooks and tables as ours."""
    if backend == "nft":
        lab.run("node", "nft", "-f", "-", stdin=(
            "table inet foreign {\n chain pre { type filter hook prerouting priority raw; policy accept;\n"
            "  udp dport 5353 notrack comment \"foreign\"\n }\n}\n"))
    else:
        v = backend.removeprefix("iptables-")
        lab.run("node", f"iptables-{v}", "-t", "raw", "-I", "PREROUTING", "-p", "udp", "--dport", "5353",
                "-m", "comment", "--comment", "foreign", "-j", "NOTRACK")
        lab.run("node", f"iptables-{v}", "-t", "filter", "-I", "INPUT", "-p", "tcp", "--dport", "22", "-j", "ACCEPT")
        lab.run("node", f"ip6tables-{v}", "-t", "raw", "-A", "OUTPUT", "-p", "udp", "--dport", "5353", "-j", "CT",
                "--notrack")
    lab.run("node", "ipset", "create", "foreign", "hash:ip")


def damage(lab: Lab, backend: str) -> None:
    """Remove some of our rules and add a duplicate, as an admin or another tool might."""
    if backend == "nft":
        listing = lab.out("node", "nft", "-a", "list", "chain", "inet", "nodelocal", "raw-prerouting")
        handles = re.findall(r"comment .* # handle (\d+)", listing)  # rules' handles, not the chain's
        lab.run("node", "nft", "delete", "rule", "inet", "nodelocal", "raw-prerouting", "handle", handles[0])
        lab.run("node", "nft", "add", "rule", "inet", "nodelocal", "filter-input", "ip", "daddr", LINK_LOCAL,
                "udp", "dport", "53", "accept", "comment", '"nodelocal: allow DNS to the agent"')
        return
    v = backend.removeprefix("iptables-")
    ipt = f"iptables-{v}"
    lab.run("node", ipt, "-t", "raw", "-D", "NODELOCAL-PREROUTING", "1")
    lab.run("node", ipt, "-t", "nat", "-D", "PREROUTING", "-m", "comment", "--comment",
            rules_iptables.JUMP_COMMENT, "-j", "NODELOCAL-PREROUTING")
    lab.run("node", ipt, "-t", "filter", "-A", "INPUT", "-m", "comment", "--comment",
            rules_iptables.JUMP_COMMENT, "-j", "NODELOCAL-INPUT")


def nothing_of_ours(lab: Lab) -> list[str]:
    left = []
    if lab.run("node", "nft", "list", "table", "inet", "nodelocal", check=False).returncode == 0:
        left.append("nft table inet nodelocal")
    for tool in ("iptables-nft-save", "ip6tables-nft-save", "iptables-legacy-save", "ip6tables-legacy-save"):
        left += [f"{tool}: {ln}" for ln in lab.out("node", tool).splitlines()
                 if "NODELOCAL" in ln or "nodelocal" in ln]
    left += [f"ipset {s}" for s in lab.out("node", "ipset", "list", "-n").split() if s.startswith("nodelocal")]
    if lab.run("node", "ip", "link", "show", "nodelocaldns", check=False).returncode == 0:
        left.append("link nodelocaldns")
    return left


def first_answer(query: Callable[[], list[str]], timeout: float) -> float | None:
    """Seconds until `query` first returned records, or None."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if query():
            return time.monotonic() - t0
        time.sleep(0.05)
    return None


# --------------------------------------------------------------------------------------------------
# Tests


@pytest.mark.parametrize(("flag", "kube_proxy", "backend"), BACKENDS)
def test_pods_answered_by_the_agent_without_conntrack(make_lab: Callable[..., Lab], flag: str, kube_proxy: str,
                                                      backend: str) -> None:
    lab = make_lab(kube_proxy)
    lab.start_agent("--rules-backend", flag)
    assert f"rules backend {backend}" in lab.agent_log()
    # Misses first: the agent asks CoreDNS (over TCP through kube-dns-upstream's DNAT).
    assert lab.dig("pod-a", KUBE_DNS, WEB) == [WEB_A]
    assert lab.dig("pod-b", LOCAL6, WEB, "AAAA") == [WEB_AAAA]
    assert lab.dig("node", LINK_LOCAL, API) == [API_A]
    coredns, asked = lab.coredns_queries(), lab.metric("coredns_dns_requests_total")
    # Hits, over every path: pod -> ClusterIP (UDP, TCP), pod -> link-local (v4, v6), host-network client.
    assert lab.dig("pod-a", KUBE_DNS, WEB) == [WEB_A]
    assert lab.dig("pod-a", KUBE_DNS, WEB, tcp=True) == [WEB_A]
    assert lab.dig("pod-b", LINK_LOCAL, WEB) == [WEB_A]
    assert lab.dig("pod-b", LOCAL6, WEB, "AAAA") == [WEB_AAAA]
    assert lab.dig("node", LINK_LOCAL, API) == [API_A]
    assert lab.dig("node", KUBE_DNS, API) == [API_A]
    assert lab.metric("coredns_dns_requests_total") - asked == 6, "the agent did not answer every query"
    assert lab.coredns_queries() == coredns, "a cache hit reached CoreDNS"
    # ... and the kernel kept none of it in conntrack (the agent's own TCP to CoreDNS is tracked: not ours).
    assert lab.conntrack_dns() == []
    failopen = {k: v for k, v in lab.metrics().items() if k.startswith("nodelocal_setup_failopen")}
    path = "rewrite" if backend == "nft" else "dnat-endpoints"
    assert failopen == {
        f'nodelocal_setup_failopen{{localip="{KUBE_DNS}",path="kube-proxy"}}': 1.0,
        f'nodelocal_setup_failopen{{localip="{LINK_LOCAL}",path="{path}"}}': 1.0,
        f'nodelocal_setup_failopen{{localip="{LOCAL6}",path="{path}"}}': 1.0,
    }
    assert lab.metric("coredns_nodecache_setup_errors_total") == 0, lab.agent_log()


@pytest.mark.parametrize(("flag", "kube_proxy", "backend"), BACKENDS)
def test_rules_once_repaired_foreign_untouched_then_teardown(make_lab: Callable[..., Lab], flag: str,
                                                             kube_proxy: str, backend: str) -> None:
    lab = make_lab(kube_proxy)
    add_foreign(lab, backend)
    _, foreign_before = ours_and_foreign(lab, backend)
    lab.start_agent("--rules-backend", flag, "--sync-interval", str(SYNC))
    first, _ = ours_and_foreign(lab, backend)
    # Many reconcile rounds later: the same rules, each once, and nothing rewritten meanwhile.
    assert wait_until(lambda: lab.metric("nodelocal_setup_reconciles_total") >= 6, 6 * (SYNC + ROUND))
    ours, foreign = ours_and_foreign(lab, backend)
    assert ours == first
    assert len(ours) == len(set(ours)), "a rule of ours is there twice"
    if backend == "nft":
        assert len(ours) == expected_rule_count(backend)
        assert lab.out("node", "nft", "list", "tables").count("table inet nodelocal") == 1
    else:  # + the fail-open DNATs to the lab's two CoreDNS endpoints: 2 protocols x 2 endpoints x 2 hooks x 2 IPs
        assert len(ours) == expected_rule_count(backend) + 16
    assert foreign == foreign_before
    assert lab.metrics()['nodelocal_setup_repairs_total{what="rules"}'] == 0
    # Someone deletes one of our rules and adds a duplicate: back to exactly ours within one sync interval.
    damage(lab, backend)
    t0 = time.monotonic()
    assert wait_until(lambda: ours_and_foreign(lab, backend)[0] == first, SYNC + ROUND, 0.1), (
        "rules not repaired within one sync interval:\n" + "\n".join(ours_and_foreign(lab, backend)[0]))
    print(f"{backend}: repaired {time.monotonic() - t0:.2f}s after the damage (sync interval {SYNC}s)")
    # Counted when the round ends (after the rules are written, the heartbeat runs): wait for that round.
    assert wait_until(lambda: lab.metrics()['nodelocal_setup_repairs_total{what="rules"}'] >= 1, ROUND, 0.1)
    assert ours_and_foreign(lab, backend)[1] == foreign_before
    # SIGTERM: teardown leaves nothing of ours, foreign rules stay, and pods reach CoreDNS through DNAT.
    lab.stop_agent()
    assert "rules removed" in lab.agent_log() and "interface nodelocaldns removed" in lab.agent_log()
    assert nothing_of_ours(lab) == []
    assert ours_and_foreign(lab, backend)[1] == foreign_before
    coredns = lab.coredns_queries()
    assert lab.dig("pod-a", KUBE_DNS, "kube-dns.kube-system.svc.cluster.local") == [KUBE_DNS]
    assert lab.dig("pod-a", KUBE_DNS, WEB, tcp=True) == [WEB_A]
    assert lab.coredns_queries() == coredns + 2, "the queries did not reach CoreDNS"
    assert len(lab.conntrack_dns(KUBE_DNS)) >= 2, "no DNAT (conntrack) entry for the ClusterIP queries"


@pytest.mark.parametrize(("flag", "kube_proxy", "backend"), BACKENDS)
def test_kill9_fails_open_then_restart_returns_to_the_agent(make_lab: Callable[..., Lab], flag: str,
                                                             kube_proxy: str, backend: str) -> None:
    lab = make_lab(kube_proxy)
    lab.start_agent("--rules-backend", flag)
    assert lab.dig("pod-a", KUBE_DNS, WEB) == [WEB_A]
    lab.kill_agent()  # kill -9: no teardown, the interface and every rule stay
    coredns = lab.coredns_queries()
    paths = {
        "pod -> ClusterIP": lambda: lab.dig("pod-a", KUBE_DNS, WEB),
        "pod -> ClusterIP (TCP)": lambda: lab.dig("pod-a", KUBE_DNS, WEB, tcp=True),
        "pod -> 169.254.20.10": lambda: lab.dig("pod-b", LINK_LOCAL, WEB),
        "pod -> 169.254.20.10 (TCP)": lambda: lab.dig("pod-b", LINK_LOCAL, WEB, tcp=True),
        "pod -> fd53::10": lambda: lab.dig("pod-b", LOCAL6, WEB, "AAAA"),
        "host -> ClusterIP": lambda: lab.dig("node", KUBE_DNS, API),
        "host -> 169.254.20.10": lambda: lab.dig("node", LINK_LOCAL, API),
        "host -> fd53::10": lambda: lab.dig("node", LOCAL6, API),
    }
    took = {name: first_answer(q, 6.0) for name, q in paths.items()}
    report = ", ".join(f"{n}: {'none' if t is None else f'{t:.2f}s'}" for n, t in took.items())
    assert all(t is not None for t in took.values()), f"no answer after kill -9: {report}"
    # Pods fail open at once (no listener, no bypass); host-network clients when the heartbeat expires (3 s).
    assert all(t is not None and t < 1.5 for n, t in took.items() if n.startswith("pod")), report
    assert all(t is not None and t < 4.5 for t in took.values()), report
    assert lab.coredns_queries() >= coredns + len(paths), "answers did not come from CoreDNS"
    assert "nodelocaldns" in lab.out("node", "ip", "link")  # still there: kill -9 tears nothing down
    # A DNS server bound to 0.0.0.0:53 (UDP and TCP, never answering) is not taken for the agent: pods'
    # queries, UDP and every packet of TCP, still go to CoreDNS.
    wildcard = lab.spawn("node", sys.executable, "-c", WILDCARD_LISTENER)
    try:
        assert wait_until(lambda: ":53 " in lab.out("node", "ss", "-ltnH", "sport", "= :53"), 5)
        assert lab.dig("pod-a", KUBE_DNS, WEB) == [WEB_A] and lab.dig("pod-b", LINK_LOCAL, WEB) == [WEB_A]
        assert lab.dig("pod-a", KUBE_DNS, WEB, tcp=True) == [WEB_A]
        assert lab.dig("pod-b", LINK_LOCAL, WEB, tcp=True) == [WEB_A]
    finally:
        wildcard.kill()
        wildcard.wait(5)
    # Start again: back to the agent, and new queries leave no conntrack entry.
    lab.start_agent("--rules-backend", flag)
    asked, coredns = lab.metric("coredns_dns_requests_total"), lab.coredns_queries()
    ports = random.sample(range(40000, 50000), 2)
    assert lab.dig("pod-a", KUBE_DNS, WEB, source=f"{POD_A}#{ports[0]}") == [WEB_A]
    assert lab.dig("pod-b", LINK_LOCAL, WEB, source=f"{POD_B}#{ports[1]}") == [WEB_A]
    assert lab.metric("coredns_dns_requests_total") == asked + 2
    assert lab.conntrack_sport(ports[0]) == [] and lab.conntrack_sport(ports[1]) == []
    assert lab.coredns_queries() <= coredns + 1  # at most the one miss of a fresh cache


def test_ipv6_local_ip_alongside_ipv4(make_lab: Callable[..., Lab]) -> None:
    lab = make_lab()
    lab.start_agent("--rules-backend", "nft")
    addrs = lab.out("node", "ip", "-br", "addr", "show", "dev", "nodelocaldns")
    for a in (f"{LINK_LOCAL}/32", f"{KUBE_DNS}/32", f"{LOCAL6}/128"):
        assert a in addrs
    ours6 = [ln for ln in lab.out("node", "ip", "addr", "show", "dev", "nodelocaldns").splitlines() if LOCAL6 in ln]
    assert ours6 and "tentative" not in ours6[0]  # NODAD: bindable at once on a link without carrier
    table = lab.out("node", "nft", "list", "table", "inet", "nodelocal")
    assert f"ip6 daddr {LOCAL6} udp dport 53 socket wildcard 0 notrack" in table
    assert "fd53::10 timeout 3s" in table  # the IPv6 heartbeat set
    for tcp in (False, True):
        assert lab.dig("pod-b", LOCAL6, WEB, "AAAA", tcp=tcp) == [WEB_AAAA]
        assert lab.dig("pod-b", LINK_LOCAL, WEB, tcp=tcp) == [WEB_A]
    assert lab.dig("node", LOCAL6, API) == [API_A]
    assert lab.conntrack_dns(LOCAL6, LINK_LOCAL) == []
    assert lab.metric("coredns_dns_requests_total") >= 5
