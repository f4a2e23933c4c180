"""Rules backend `nft`: one table of our own (`inet nodelocal`), replaced atomically, nothing else touched.

The whole table is written in one `nft -f` transaction (`table; delete table; table {...}`), so the kernel
never holds half of it and there is never a second copy (kubernetes/dns #568). ensure() first compares
the table's listing with the one seen right after our last write and rewrites only on a difference.

Conntrack bypass that fails open (the agent gone, DNS takes the path it took before the agent):
- pods (prerouting): `socket wildcard 0 notrack` skips conntrack only while a socket is bound to that very
  address; with no listener the packet is tracked and takes the fail-open path.
- host-network clients (output): `socket` cannot tell there (it sees the sender), so the rule matches a
  set with `flags timeout` whose elements the agent refreshes every second: they expire by themselves
  HEARTBEAT_TIMEOUT seconds after the agent dies.
- fail-open for a non-ClusterIP local IP: with kube-proxy in iptables or nftables mode a DNAT to the
  ClusterIP would be final (NAT is decided once per connection, and the ClusterIP is not local), so
  instead a chain between conntrack (-200) and NAT (-100) rewrites the destination of a *tracked, new*
  flow to the ClusterIP: kube-proxy's own DNAT then picks an endpoint, and conntrack's reverse NAT
  restores the original 169.254.20.10 as the answer's source (the reply tuple is built from the
  original tuple). In IPVS mode the ClusterIP is local (kube-ipvs0) and a plain DNAT reaches IPVS.
"""

from __future__ import annotations

import logging

from nodelocal.netsetup.plan import (
    PATH_DNAT_CLUSTERIP,
    PATH_REWRITE,
    Plan,
    family,
)
from nodelocal.netsetup.runner import Runner, SetupError, check

log = logging.getLogger("nodelocal.netsetup")

TABLE = "nodelocal"
FAMILY = "inet"
# Hook priorities. conntrack runs at -200 and DNAT at -100 (dstnat), SNAT at 100 (srcnat).
PRIO_REWRITE = -150  # after conntrack has a (new) entry, before any NAT chain sees the packet
PRIO_DNAT = -101  # just before kube-proxy's dstnat chains: ours decides first (NAT is once per flow)
PRIO_MASQ = 99  # just before srcnat


def _v(ip: str) -> str:
    return "ip" if family(ip) == 4 else "ip6"


def _set(fam: int) -> str:
    return f"alive{fam}"


def _c(text: str) -> str:
    return f'comment "nodelocal: {text}"'


def render(plan: Plan, table: str = TABLE) -> tuple[str, dict[str, str]]:
    """The table's full definition, and the fail-open path it gives each redirected local IP."""
    p = plan.port
    sets: list[str] = []
    pre: list[str] = []
    out: list[str] = []
    fin: list[str] = []
    fout: list[str] = []
    rw: list[str] = []
    dn: list[str] = []
    masq: list[str] = []
    paths: dict[str, str] = {}
    for fam in (4, 6):
        ips = plan.ips(fam)
        if not ips:
            continue
        elements = ", ".join(f"{ip} timeout {plan.heartbeat_timeout}s" for ip in ips)
        sets.append(f"\tset {_set(fam)} {{\n\t\ttype ipv{fam}_addr\n\t\tflags timeout\n"
                    f"\t\telements = {{ {elements} }}\n\t}}")
        v = "ip" if fam == 4 else "ip6"
        for proto in ("udp", "tcp"):
            out.append(f"{v} daddr @{_set(fam)} {proto} dport {p} notrack "
                       + _c("skip conntrack for host-network clients while the agent is alive"))
    for ip in plan.localips:
        v = _v(ip)
        # `socket wildcard` gives up (no match) on sockets that are not full ones: the handshake's
        # request socket (the client's ACK) and time-wait. Past the SYN any socket will do, as iptables'
        # -m socket has it, but only while the agent is alive (its heartbeat): a wildcard listener that
        # appears after it died must not swallow the rest of a connection that fell open to CoreDNS.
        pre.append(f"{v} daddr {ip} tcp dport {p} tcp flags & syn == 0 {v} daddr @{_set(family(ip))} "
                   "socket transparent 0 notrack " + _c("skip conntrack for the rest of a connection to the agent"))
        for proto in ("udp", "tcp"):
            pre.append(f"{v} daddr {ip} {proto} dport {p} socket wildcard 0 notrack "
                       + _c("skip conntrack while the agent listens"))
            out.append(f"{v} saddr {ip} {proto} sport {p} notrack " + _c("skip conntrack for answers"))
            fin.append(f"{v} daddr {ip} {proto} dport {p} accept " + _c("allow DNS to the agent"))
            fout.append(f"{v} saddr {ip} {proto} sport {p} accept " + _c("allow DNS from the agent"))
        if plan.health_port:
            hp = plan.health_port
            out.append(f"{v} daddr {ip} tcp dport {hp} notrack " + _c("skip conntrack for health checks"))
            out.append(f"{v} saddr {ip} tcp sport {hp} notrack " + _c("skip conntrack for health checks"))
        masq.append(f"{v} saddr {ip} ct status dnat masquerade "
                    + _c("fail-open flows from a local IP leave with the node address"))
    for r in plan.redirects:
        v = _v(r.local)
        match = f"{v} daddr {r.local} meta l4proto {{ tcp, udp }} th dport {p}"
        if r.target_local:
            dn.append(f"{match} dnat {v} to {r.target} " + _c(f"fail open to kube-dns {r.target} (IPVS)"))
            paths[r.local] = PATH_DNAT_CLUSTERIP
        else:
            rw.append(f"{match} ct state new {v} daddr set {r.target} "
                      + _c(f"fail open to kube-dns {r.target} through kube-proxy"))
            paths[r.local] = PATH_REWRITE

    def chain(name: str, kind: str, hook: str, prio: str, rules: list[str]) -> str:
        body = "".join(f"\t\t{rule}\n" for rule in rules)
        return f"\tchain {name} {{\n\t\ttype {kind} hook {hook} priority {prio}; policy accept;\n{body}\t}}"

    chains = [
        chain("raw-prerouting", "filter", "prerouting", "raw", pre),
        chain("raw-output", "filter", "output", "raw", out),
        chain("filter-input", "filter", "input", "filter", fin),
        chain("filter-output", "filter", "output", "filter", fout),
    ]
    if rw:
        chains.append(chain("failopen-prerouting", "filter", "prerouting", str(PRIO_REWRITE), rw))
        # A `route` chain re-routes a local packet whose destination it changed.
        chains.append(chain("failopen-output", "route", "output", str(PRIO_REWRITE), rw))
    if dn:
        chains.append(chain("failopen-dnat-prerouting", "nat", "prerouting", str(PRIO_DNAT), dn))
        chains.append(chain("failopen-dnat-output", "nat", "output", str(PRIO_DNAT), dn))
    chains.append(chain("failopen-postrouting", "nat", "postrouting", str(PRIO_MASQ), masq))
    text = f"table {FAMILY} {table} {{\n" + "\n".join(sets + chains) + "\n}\n"
    return text, paths


def replace_script(definition: str, table: str = TABLE) -> str:
    """One transaction: create-if-missing, delete, define. Atomic, and never two copies."""
    return f"table {FAMILY} {table}\ndelete table {FAMILY} {table}\n{definition}"


def heartbeat_script(plan: Plan, table: str = TABLE) -> str:
    """Refresh the liveness sets: a re-added element keeps its old expiry, so flush and add in one transaction."""
    lines = []
    for fam in (4, 6):
        ips = plan.ips(fam)
        if ips:
            elements = ", ".join(f"{ip} timeout {plan.heartbeat_timeout}s" for ip in ips)
            lines.append(f"flush set {FAMILY} {table} {_set(fam)}")
            lines.append(f"add element {FAMILY} {table} {_set(fam)} {{ {elements} }}")
    return "\n".join(lines) + "\n"


class NftRules:
    """The nft backend. ensure() returns (changed, fail-open path per redirected IP)."""

    name = "nft"

    def __init__(self, runner: Runner, nft: str = "nft", table: str = TABLE) -> None:
        self.runner = runner
        self.nft = nft
        self.table = table
        self._written: tuple[str, str] | None = None  # (definition, listing right after writing it)

    def listing(self) -> str | None:
        """`nft -t list table` (terse: set elements left out, they change every second); None when absent."""
        r = self.runner([self.nft, "-t", "list", "table", FAMILY, self.table])
        if r.rc == 0:
            return r.out
        if "No such file" in r.err:
            return None
        raise SetupError("iptables", f"nft list table {FAMILY} {self.table}: {r.err.strip() or r.rc}")

    def ensure(self, plan: Plan) -> tuple[bool, dict[str, str]]:
        definition, paths = render(plan, self.table)
        current = self.listing()
        if current is not None and self._written == (definition, current):
            return False, paths
        check(self.runner, [self.nft, "-f", "-"], replace_script(definition, self.table))
        after = self.listing()
        self._written = (definition, after or "")
        return True, paths

    def heartbeat(self, plan: Plan) -> None:
        if plan.localips:
            check(self.runner, [self.nft, "-f", "-"], heartbeat_script(plan, self.table))

    def remove(self) -> bool:
        self._written = None
        if self.listing() is None:
            return False
        check(self.runner, [self.nft, "delete", "table", FAMILY, self.table])
        return True
