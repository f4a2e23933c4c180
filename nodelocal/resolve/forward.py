"""Failover chain: a zone's upstream groups in order, each group's servers by its policy.

A try fails on timeout, connection error, a malformed reply, SERVFAIL or REFUSED; the next server,
then the next group, gets the query while the whole-query deadline lasts. NXDOMAIN and NODATA are
answers, not failures. Moving on to a later group is a fallthrough (cluster DNS -> host nameservers).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import secrets
import time
from collections.abc import Callable, Sequence

from nodelocal import UpstreamError, UpstreamTimeout, WireError
from nodelocal.config import Address, UpstreamGroup, format_hostport
from nodelocal.dns import wire
from nodelocal.resolve.metrics import ResolveStats
from nodelocal.resolve.upstream import TCPPool, udp_exchange

log = logging.getLogger("nodelocal.forward")

FAILURE_RCODES = (wire.SERVFAIL, wire.REFUSED)
# An upstream reply with the scan that validated it (policy.entry_for reuses it rather than scan again).
Reply = tuple[bytes, wire.Scan]


class Server:
    """One upstream nameserver: its TCP pool and its label in metrics."""

    def __init__(self, addr: Address, group: UpstreamGroup, stats: ResolveStats) -> None:
        self.addr = addr
        self.label = format_hostport(addr)
        self.transport = group.transport
        self.stats = stats
        self.tcp = TCPPool(addr, group.tcp_connections, group.tcp_idle_timeout, stats)

    async def exchange(self, query: bytes, question_lc: bytes, timeout: float) -> Reply:
        """One try: UDP (then TCP if truncated) or TCP; the reply is scanned before it is trusted."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        reply = None
        if self.transport == "udp":
            qid = secrets.randbits(16)
            q = qid.to_bytes(2, "big") + query[2:]
            reply = await udp_exchange(self.addr, q, qid, question_lc, timeout, self.stats)
            if reply[2] & wire.TC:
                reply = None
                timeout = deadline - loop.time()
                if timeout <= 0:
                    raise UpstreamError(f"{self.label}: truncated over UDP and no time left for TCP")
        if reply is None:
            reply = await self.tcp.exchange(query, question_lc, timeout)
        return reply, wire.scan(reply)

    def close(self) -> None:
        self.tcp.close()


class Group:
    """Servers tried together, ordered by the group's policy."""

    def __init__(self, name: str, cfg: UpstreamGroup, stats: ResolveStats) -> None:
        self.name = name
        self.cfg = cfg
        self.servers = [Server(a, cfg, stats) for a in cfg.addresses()]
        for server in self.servers:
            stats.upstream_servers.setdefault(server.label, name)  # exported as nodelocal_upstream_healthy
        self._rr = itertools.count()

    def order(self) -> Sequence[Server]:
        if self.cfg.policy == "random":
            return random.sample(self.servers, len(self.servers))
        if self.cfg.policy == "round_robin" and self.servers:
            i = next(self._rr) % len(self.servers)
            return self.servers[i:] + self.servers[:i]
        return self.servers

    def close(self) -> None:
        for s in self.servers:
            s.close()


class Chain:
    """A zone's groups in fallthrough order."""

    def __init__(self, groups: Sequence[Group], stats: ResolveStats, query_timeout: float,
                 now: Callable[[], float] = time.monotonic) -> None:
        self.groups = groups
        self.stats = stats
        self.query_timeout = query_timeout
        self.now = now

    async def forward(self, question: bytes, rd: bool, cd: bool, do: bool) -> Reply | None:
        """The first acceptable reply, else the last SERVFAIL/REFUSED seen, else None (all failed)."""
        reply = await self._forward(question, rd, cd, do)
        if reply is None:
            self.stats.healthcheck_broken += 1  # no upstream of the zone replied at all
        return reply

    async def _forward(self, question: bytes, rd: bool, cd: bool, do: bool) -> Reply | None:
        query = wire.build_query(0, question, rd, cd, do, wire.EDNS_PAYLOAD)
        question_lc = question[:-4].lower() + question[-4:]  # the name lowercased; type and class as they are
        deadline = self.now() + self.query_timeout
        last: Reply | None = None
        tried_before = False
        for group in self.groups:
            if not group.servers:
                continue
            if deadline - self.now() <= 0:
                return last
            if tried_before:
                self.stats.fallthrough += 1  # counted only when the next group really gets the query
            tried_before = True
            for server in group.order():
                remaining = deadline - self.now()
                if remaining <= 0:
                    return last
                t0 = self.now()
                try:
                    reply = await server.exchange(query, question_lc, min(group.cfg.try_timeout, remaining))
                except (UpstreamError, WireError, OSError) as e:
                    outcome = ("timeout" if isinstance(e, UpstreamTimeout)
                               else "malformed" if isinstance(e, WireError) else "error")
                    self.stats.upstream(server.label, outcome, None)
                    log.debug("upstream %s: %s: %s", server.label, outcome, e)
                    continue
                rcode = reply[1].rcode
                self.stats.upstream(server.label, wire.RCODE_NAMES[rcode], self.now() - t0)
                self.stats.ready = True
                if rcode in FAILURE_RCODES:
                    last = reply
                    continue
                return reply
        return last
