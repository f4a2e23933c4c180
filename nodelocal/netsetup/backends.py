"""The three rules backends behind one interface, and `auto`: use the one kube-proxy uses on this node.

Mixing iptables-nft and iptables-legacy on one node is a known trap (kubernetes/dns #338): rules land
in a backend nobody else looks at. So `auto` looks for kube-proxy's own state: its nftables table
(`table ip kube-proxy`, nftables mode), else its KUBE-* chains in iptables-nft or iptables-legacy
(more chains wins; kubelet also keeps KUBE-* canary chains in the node's iptables). With none of
those, the first backend whose tool works: nft, iptables-nft, iptables-legacy.
"""

from __future__ import annotations

import re
from typing import Protocol

from nodelocal.netsetup.plan import Plan
from nodelocal.netsetup.rules_iptables import IptablesRules
from nodelocal.netsetup.rules_nft import NftRules
from nodelocal.netsetup.runner import Runner

BACKENDS = ("nft", "iptables-nft", "iptables-legacy")


class RulesBackend(Protocol):
    """What the reconcile loop needs from a backend; every method is idempotent."""

    name: str

    def ensure(self, plan: Plan) -> tuple[bool, dict[str, str]]:
        """Make the kernel hold exactly the plan's rules; (changed anything, fail-open path per redirected IP)."""
        ...

    def heartbeat(self, plan: Plan) -> None:
        """Refresh the liveness elements that host-network clients' NOTRACK depends on."""
        ...

    def remove(self) -> bool:
        """Delete every rule, chain, table and set of ours; True when something was there."""
        ...


def make(name: str, runner: Runner) -> RulesBackend:
    if name == "nft":
        return NftRules(runner)
    if name in ("iptables-nft", "iptables-legacy"):
        return IptablesRules(runner, name.removeprefix("iptables-"))
    raise ValueError(f"unknown rules backend {name!r}")


def _kube_chains(runner: Runner, save: str) -> int | None:
    """How many KUBE-* chains `save` lists; None when the tool is missing or fails."""
    r = runner([save])
    if r.rc != 0:
        return None
    return len(re.findall(r"^:KUBE-", r.out, re.M))


def detect(runner: Runner) -> tuple[str, str]:
    """(backend, why) for `auto`."""
    nft = runner(["nft", "list", "tables"])
    if nft.rc == 0 and re.search(r"^table ip6? kube-proxy$", nft.out, re.M):
        return "nft", "kube-proxy's nftables table (table ip kube-proxy) is present"
    counts = {v: _kube_chains(runner, f"iptables-{v}-save") for v in ("nft", "legacy")}
    found = {v: n for v, n in counts.items() if n}
    if found:
        best = max(found, key=lambda v: (found[v], v == "nft"))
        others = ", ".join(f"iptables-{v}: {n}" for v, n in found.items() if v != best)
        return (f"iptables-{best}", f"kube-proxy's chains are there ({found[best]} KUBE-* chains"
                + (f"; {others}" if others else "") + ")")
    if nft.rc == 0:
        return "nft", "no kube-proxy rules found in any backend; nft works here"
    for v in ("nft", "legacy"):
        if counts[v] is not None:
            return f"iptables-{v}", f"no kube-proxy rules found and no nft; iptables-{v}-save works here"
    return "nft", "no rule tool answered (nft, iptables-nft, iptables-legacy); trying nft"
