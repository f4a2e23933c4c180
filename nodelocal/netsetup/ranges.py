"""The node's own ranges, read from the kernel (netlink, pyroute2) without the Kubernetes API: who may ask.

A node knows its pod ranges without asking the API server: the CNI plugin routes them. The local pod
subnet is a connected route (`10.244.1.0/24 dev cni0`) or per-pod routes (`10.244.1.5 dev cali...`, AWS
VPC CNI), other nodes' pod subnets are routes via them (flannel, host-gw), Calico's IPAM blocks are
blackhole routes. So the allowed set is: loopback, every address of the node with its on-link subnet, and
the destination of every unicast or blackhole route of the main table, except the default route (which
would be everything). Re-read periodically: a new node or IPAM block adds a route.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any, Protocol

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

LOOPBACK: tuple[Network, ...] = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
MAIN_TABLE = 254
RTN_UNICAST, RTN_BLACKHOLE = 1, 6  # rtnetlink route types that carry traffic to (or for) pods


class NetlinkLike(Protocol):
    """The part of pyroute2's IPRoute read here (tests pass a fake)."""

    def get_addr(self, **kw: Any) -> Any: ...
    def get_routes(self, **kw: Any) -> Any: ...


def node_networks(ipr: NetlinkLike) -> list[Network]:
    """Loopback, the node's addresses with their subnets, and its routes' destinations (no default route)."""
    out: list[Network] = list(LOOPBACK)
    for a in ipr.get_addr():
        ip = a.get_attr("IFA_LOCAL") or a.get_attr("IFA_ADDRESS")
        if not ip:
            continue
        out.append(ipaddress.ip_interface(f"{ip.split('%')[0]}/{a['prefixlen']}").network)
    for fam in (socket.AF_INET, socket.AF_INET6):
        for r in ipr.get_routes(family=fam, table=MAIN_TABLE):
            dst = r.get_attr("RTA_DST")
            if not dst or not r["dst_len"] or r["type"] not in (RTN_UNICAST, RTN_BLACKHOLE):
                continue
            net = ipaddress.ip_network(f"{dst}/{r['dst_len']}", strict=False)
            if not net.is_multicast:
                out.append(net)
    return out


def read_node_networks() -> list[Network]:
    """node_networks() of this network namespace (blocking: a netlink round trip or two)."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        return node_networks(ipr)
