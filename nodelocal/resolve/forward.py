"""Failover chain: a zone's upstream groups in order, each group's servers by its policy.

A try fails on timeout, connection error, a malformed reply, SERVFAIL or REFUSED; the next server,
then the next group, gets the query while the whole-query deadline lasts. NXDOMAIN and NODATA are
answers, not failures. Moving on to a later group is a fallthrough (cluster DNS -> host nameservers).

Server health steers the order, as in CoreDNS forward: any reply, whatever its rcode, is a sign of life;
`max_fails` tries in a row without one mark a server down. A down server is skipped while another server
of its group is up (when all are down, all are still tried: trying beats failing fast), and a background
probe (`. IN NS` every `health_check` seconds, through the server's own transport) brings it back at its
first reply.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import struct
import time
from collections.abc import Callable, Sequence

from nodelocal import UpstreamError, UpstreamTimeout, WireError
from nodelocal.cache.policy import validate
from nodelocal.config import Address, UpstreamGroup, format_hostport
from nodelocal.dns import wire
from nodelocal.observe.ratelog import RateLimitedLog
from nodelocal.resolve.metrics import ResolveStats
from nodelocal.resolve.upstream import ConnectionLost, TCPPool, UDPPool

log = logging.getLogger("nodelocal.forward")
# Health changes are what an operator needs to see (warning: down, info: up again), but a server that flaps
# every second must not fill the disk: a few lines per server and minute, then a count.
health_log = RateLimitedLog(log)

FAILURE_RCODES = (wire.SERVFAIL, wire.REFUSED)
# An upstream reply with the scan that validated it (policy.entry_for reuses it rather than scan again).
Reply = tuple[bytes, wire.Scan]
TYPE_NS = 2
# CoreDNS forward's health check: `. IN NS` (recursion desired); any reply at all is a sign of life.
PROBE_QUESTION = b"\x00" + struct.pack(">HH", TYPE_NS, 1)
PROBE_QUERY = wire.build_query(0, PROBE_QUESTION, True, False, False, wire.EDNS_PAYLOAD)


class Server:
    """One upstream nameserver: its UDP and TCP pools, its label in metrics, and its health (up, or down and
    probed)."""

    def __init__(self, addr: Address, group: UpstreamGroup, stats: ResolveStats, group_name: str = "") -> None:
        self.addr = addr
        self.label = format_hostport(addr)
        self.group = group_name
        self.transport = group.transport
        self.stats = stats
        self.try_timeout = group.try_timeout
        self.max_fails = group.max_fails
        self.health_check = group.health_check
        self.udp_retransmit = group.udp_retransmit
        self.randomize_case = group.randomize_case
        # With 0x20 on, a reply must echo the question byte for byte (upstream.reply_matches).
        self.udp = UDPPool(addr, group.udp_sockets, stats, exact=group.randomize_case)
        # A connection silent for a whole try while queries wait on it is stalled: closed, not reused.
        self.tcp = TCPPool(addr, group.tcp_connections, group.tcp_idle_timeout, stats, group.try_timeout,
                           exact=group.randomize_case)
        self.fails = 0  # tries in a row without any reply
        self.down = False
        self.down_since = 0.0
        self.probe: asyncio.Task[None] | None = None
        self.on_up: Callable[[], None] | None = None  # told when the server comes back (resolver: recheck)

    async def exchange(self, query: bytes, question_lc: bytes, timeout: float, *, resend: bool = True) -> Reply:
        """One try: UDP (then TCP if truncated) or TCP; the reply is scanned before it is trusted.

        Over UDP the datagram goes again after udp_retransmit seconds of silence. Over TCP, a connection
        closed or reset under the query (a CoreDNS pod deleted) costs no wait: the query goes again at once
        on a new connection, which behind a Service lands on a live pod, if the try has time left; a second
        loss fails the try, and the chain moves on. `resend=False` (health probes: the next probe is the
        resend) sends once.
        """
        # The loop's clock, from the loop the UDP pool holds (no lookup of the running loop per try).
        clock = self.udp.loop().time
        deadline = clock() + timeout
        reply = None
        if self.transport == "udp":
            reply = await self.udp.exchange(query, question_lc, timeout, self.udp_retransmit if resend else 0.0)
            if reply[2] & wire.TC:
                reply = None
                timeout = deadline - clock()
                if timeout <= 0:
                    raise UpstreamError(f"{self.label}: truncated over UDP and no time left for TCP")
        if reply is None:
            try:
                reply = await self.tcp.exchange(query, question_lc, timeout)
            except ConnectionLost as e:
                left = deadline - clock()
                if left <= 0 or not resend:
                    raise
                log.debug("upstream %s: %s; sending the query again on a new connection", self.label, e)
                self.stats.retransmit(self.label, "tcp")
                reply = await self.tcp.exchange(query, question_lc, left, since=e.at)
        # Malformed records never reach the cache or a client (WireError: a failed try).
        return validate(reply, wire.scan(reply))

    # ---- health ------------------------------------------------------------------------------------

    def replied(self) -> None:
        """A try got a reply (any rcode): the server is alive."""
        self.fails = 0
        if self.down:
            self._up("a query")
        self.stats.upstream_down.discard(self.label)  # the view follows whichever server object last tried

    def failed(self) -> None:
        """A try got no reply at all (timeout, connection error, malformed reply)."""
        self.fails += 1
        if not self.down and 0 < self.max_fails <= self.fails:
            self.down = True
            self.down_since = time.monotonic()
            self.stats.health_change(self.group, self.label, "down")
            health_log.warning(("down", self.label), "upstream %s (group %s) is down: %d tries without a reply; "
                               "skipped while another server answers, probed every %gs until it answers",
                               self.label, self.group, self.fails, self.health_check)
            self.probe = asyncio.get_running_loop().create_task(self._probe_until_up())
        if self.down:
            self.stats.upstream_down.add(self.label)
        else:
            self.stats.upstream_down.discard(self.label)

    def _up(self, what: str) -> None:
        self.down = False
        self.fails = 0
        self.stats.upstream_down.discard(self.label)
        self.stats.health_change(self.group, self.label, "up")
        health_log.info(("up", self.label), "upstream %s (group %s) is up again: it answered %s after %.1fs down",
                        self.label, self.group, what, time.monotonic() - self.down_since)
        probe, self.probe = self.probe, None
        if probe is not None and probe is not asyncio.current_task():
            probe.cancel()
        if self.on_up is not None:
            self.on_up()

    async def _probe_until_up(self) -> None:
        """CoreDNS forward's health check: `. IN NS` every health_check seconds until any reply comes back.
        One probe at a time, each waiting at most the try timeout."""
        while self.down:
            await asyncio.sleep(self.health_check)
            if not self.down:
                return
            try:
                await self.exchange(PROBE_QUERY, PROBE_QUESTION, self.try_timeout, resend=False)
            except (UpstreamError, WireError, OSError) as e:
                log.debug("upstream %s (group %s): health probe got no reply: %s", self.label, self.group, e)
                continue
            except Exception:  # a bug must not leave the server skipped for good: log it, probe again
                health_log.exception(("probe-bug", self.label), "upstream %s: health probe failed unexpectedly",
                                     self.label)
                continue
            if self.down:
                self._up("a health probe")
            return

    def close(self) -> None:
        """Close its sockets and connections and stop its probe; its health starts afresh if it is used again."""
        probe, self.probe = self.probe, None
        if probe is not None:
            probe.cancel()
        self.down = False
        self.fails = 0
        self.udp.close()
        self.tcp.close()


class Group:
    """Servers tried together, ordered by the group's policy, those marked down left out while others are up."""

    def __init__(self, name: str, cfg: UpstreamGroup, stats: ResolveStats) -> None:
        self.name = name
        self.cfg = cfg
        self.servers = [Server(a, cfg, stats, name) for a in cfg.addresses()]
        for server in self.servers:
            stats.upstream_servers.setdefault(server.label, name)  # exported as nodelocal_upstream_healthy
            stats.upstream_transports[server.label] = cfg.transport
            stats.upstream_down.discard(server.label)  # a new server object starts up (a reload starts afresh)
        self._rr = itertools.count()

    def order(self) -> Sequence[Server]:
        servers = self._policy_order()
        if len(servers) < 2:
            return servers  # one server is tried whether it is up or down
        up = [s for s in servers if not s.down]
        # Down servers are skipped while one is up; when all are down every one is tried all the same.
        return up if up and len(up) < len(servers) else servers

    def _policy_order(self) -> list[Server]:
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
        self.last_failed = False  # the most recent forward got no acceptable reply

    @property
    def degraded(self) -> bool:
        """A server of the first group with servers is marked down, or the last forward failed entirely.

        For last-known-good: a stale positive answer may be preferred only while this holds.
        """
        if self.last_failed:
            return True
        first = next((g for g in self.groups if g.servers), None)
        return first is not None and any(s.down for s in first.servers)

    async def forward(self, question: bytes, rd: bool, cd: bool, do: bool,
                      question_lc: bytes | None = None) -> Reply | None:
        """The first acceptable reply, else the last SERVFAIL/REFUSED seen, else None (all failed).

        `question_lc` is `question` with its name lowercased (type and class as they are), if the caller
        has it already (the resolver's cache key starts with it); each try's reply is matched against it.
        """
        reply = await self._forward(question, rd, cd, do, question_lc)
        if reply is None:
            self.stats.healthcheck_broken += 1  # no upstream of the zone replied at all
        self.last_failed = reply is None or reply[1].rcode in FAILURE_RCODES
        return reply

    async def _forward(self, question: bytes, rd: bool, cd: bool, do: bool, question_lc: bytes | None) -> Reply | None:
        # Built once per forward, shared by every try: the query (each transport puts its own ID in) and
        # the question its replies must carry.
        query = wire.build_query(0, question, rd, cd, do, wire.EDNS_PAYLOAD)
        if question_lc is None:
            question_lc = question[:-4].lower() + question[-4:]  # the name lowercased; type and class as they are
        # 0x20: the same question in random case, made at the first try to a server that wants it.
        mixed: tuple[bytes, bytes] | None = None
        deadline = self.now() + self.query_timeout
        last: Reply | None = None
        tried_before = False
        first_try = True
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
                # A later try that earlier ones left less than its try timeout and that times out says
                # little about the server: it is not held against it (a whole try's silence, or any
                # connection error, is).
                cut_short = not first_try and remaining < group.cfg.try_timeout
                first_try = False
                t0 = self.now()
                q, expect = query, question_lc
                if server.randomize_case:
                    if mixed is None:
                        m = wire.randomize_case(question_lc)
                        mixed = (wire.build_query(0, m, rd, cd, do, wire.EDNS_PAYLOAD), m)
                    q, expect = mixed
                try:
                    reply = await server.exchange(q, expect, min(group.cfg.try_timeout, remaining))
                except (UpstreamError, WireError, OSError) as e:
                    outcome = ("timeout" if isinstance(e, UpstreamTimeout)
                               else "malformed" if isinstance(e, WireError) else "error")
                    self.stats.upstream(server.label, outcome, None)
                    if not (cut_short and outcome == "timeout"):
                        server.failed()
                    log.debug("upstream %s: %s: %s", server.label, outcome, e)
                    continue
                server.replied()
                rcode = reply[1].rcode
                self.stats.upstream(server.label, wire.RCODE_NAMES[rcode], self.now() - t0)
                self.stats.ready = True
                if rcode in FAILURE_RCODES:
                    last = reply
                    continue
                return reply
        return last
