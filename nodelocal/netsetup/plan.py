"""What the kernel should hold for the agent: its local IPs, ports, and each IP's fail-open path (pure logic).

Fail-open (see README "Full node setup in the lab"): the conntrack bypass applies only while the agent
is alive, so a dead agent's traffic is tracked again and takes a path to CoreDNS:
- a local IP that *is* the kube-dns ClusterIP (iptables mode) needs nothing more: tracked packets meet
  kube-proxy's DNAT as if the agent had never been there (path `kube-proxy`);
- any other local IP (169.254.20.10) is redirected to the kube-dns ClusterIP of its family. How depends
  on the mode and the backend (the backends pick): `dnat-clusterip` when the ClusterIP is a local address
  elsewhere (IPVS mode: kube-ipvs0, so IPVS takes the DNAT-ed packet), otherwise `rewrite` (nft: the
  destination is rewritten before NAT, so kube-proxy's own DNAT applies) or `dnat-endpoints` (iptables:
  DNAT to the endpoints kube-proxy lists for the ClusterIP); `none` when no path is known.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass

PATH_KUBE_PROXY = "kube-proxy"
PATH_REWRITE = "rewrite"
PATH_DNAT_CLUSTERIP = "dnat-clusterip"
PATH_DNAT_ENDPOINTS = "dnat-endpoints"
PATH_NONE = "none"

HEARTBEAT_TIMEOUT = 3  # seconds a liveness element lives; the agent refreshes it every HEARTBEAT_INTERVAL
HEARTBEAT_INTERVAL = 1.0


def family(ip: str) -> int:
    """4 or 6."""
    return ipaddress.ip_address(ip).version


def is_link_local(ip: str) -> bool:
    return ipaddress.ip_address(ip).is_link_local


@dataclass(frozen=True)
class Redirect:
    """While no agent listens on `local`, its DNS traffic goes to `target`, the kube-dns ClusterIP of its family."""

    local: str
    target: str
    target_local: bool  # target is a local address on another link (IPVS mode): a plain DNAT reaches IPVS


@dataclass(frozen=True)
class Plan:
    """Everything the rules backends render: the same plan gives the same rules, in any backend."""

    localips: tuple[str, ...]
    port: int = 53
    health_port: int = 0  # 0: no health-port rules
    redirects: tuple[Redirect, ...] = ()
    heartbeat_timeout: int = HEARTBEAT_TIMEOUT

    def ips(self, fam: int) -> tuple[str, ...]:
        return tuple(ip for ip in self.localips if family(ip) == fam)

    def redirect_of(self, ip: str) -> Redirect | None:
        return next((r for r in self.redirects if r.local == ip), None)


def kube_dns_ips(configured: tuple[str, ...], localips: tuple[str, ...],
                 env: Mapping[str, str]) -> tuple[tuple[str, ...], str]:
    """The kube-dns ClusterIP(s), and where they came from (for the log).

    In order: the config (netsetup.kube_dns_ips); `$KUBE_DNS_SERVICE_HOST`, which Kubernetes injects into
    pods of kube-system for the kube-dns Service; else the local IPs that are not link-local, which in
    iptables mode is the ClusterIP the agent binds beside 169.254.20.10.
    """
    if configured:
        return configured, "netsetup.kube_dns_ips"
    host = env.get("KUBE_DNS_SERVICE_HOST", "").strip()
    if host:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            pass
        else:
            return (host,), "$KUBE_DNS_SERVICE_HOST"
    own = tuple(ip for ip in localips if not is_link_local(ip))
    if own:
        return own, "listen.localip (the addresses outside 169.254.0.0/16 and fe80::/10)"
    return (), "nowhere (set netsetup.kube_dns_ips)"


def build_plan(localips: tuple[str, ...], port: int, health_port: int, kube_dns: tuple[str, ...],
               local_elsewhere: Callable[[str], bool]) -> Plan:
    """The plan for these local IPs: each one that is not itself a kube-dns ClusterIP gets a Redirect to
    the first ClusterIP of its family (none when the family has no ClusterIP)."""
    dns_set = {ipaddress.ip_address(ip) for ip in kube_dns}
    redirects = []
    for ip in localips:
        if ipaddress.ip_address(ip) in dns_set:
            continue
        target = next((t for t in kube_dns if family(t) == family(ip)), None)
        if target is not None:
            redirects.append(Redirect(ip, target, local_elsewhere(target)))
    return Plan(tuple(localips), port, health_port, tuple(redirects))


def paths_without_backend(plan: Plan, kube_dns: tuple[str, ...]) -> dict[str, str]:
    """The fail-open path of each local IP that the backend does not decide: ClusterIPs and unredirected IPs."""
    dns_set = {ipaddress.ip_address(ip) for ip in kube_dns}
    out = {}
    for ip in plan.localips:
        if ipaddress.ip_address(ip) in dns_set:
            out[ip] = PATH_KUBE_PROXY
        elif plan.redirect_of(ip) is None:
            out[ip] = PATH_NONE
    return out
