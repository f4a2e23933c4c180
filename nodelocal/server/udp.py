"""UDP listener. datagram_received is the hot path: a cache hit is answered there, synchronously.

Everything the fast path does not recognise (EDNS options laid out unusually, other flags, a miss,
malformed input) goes to the Resolver in a task, which applies the full pipeline.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from nodelocal.cache.store import Entry, Store
from nodelocal.dns.wire import REFUSED, SUFFIXES
from nodelocal.observe.ratelog import RateLimitedLog
from nodelocal.resolve.resolver import Resolver
from nodelocal.server.clients import PASS, SLIP, Clients, Verdicts, reply_for
from nodelocal.server.metrics import NO_ZONE_ID, SERVER_LABEL, ListenerStats, ServerStats, server_label

if TYPE_CHECKING:
    from nodelocal.observe.live import Live

log = logging.getLogger("nodelocal.udp")
errors = RateLimitedLog(log)  # a bug hit by every query must not write a traceback per query

MEMO_MAX = 8192  # distinct query forms remembered (each ~0.3-0.6 KiB); cleared whole when full
# What a memo item costs beside its query and reply bytes: two bytes objects' headers, the tuple, the float
# and the dict slot (measured with tracemalloc, tests/unit/server/test_udp.py).
MEMO_ITEM_COST = 240
_ONE_QUESTION = b"\x00\x01\x00\x00\x00\x00\x00"  # QDCOUNT 1, ANCOUNT 0, NSCOUNT 0, ARCOUNT high byte 0


class UDPServer(asyncio.DatagramProtocol):
    """Answers hits inline and hands everything else to the resolver."""

    def __init__(self, resolver: Resolver, store: Store, stats: ServerStats, max_udp: int,
                 now: Callable[[], float] = time.monotonic, live: Live | None = None, ipv6: bool = False,
                 client_timeout: float = 2.0, max_pending: int = 2000,
                 exempt: set[tuple[str, int]] | None = None, clients: Clients | None = None) -> None:
        self.resolver = resolver
        self.index = store.index
        self.stats = stats
        # Counted per zone number (server/metrics.py); the zones are numbered by the store, and the store
        # tells the counters when it numbers a new one (a reload), before any query can reach it.
        stats.use_zones(store.zone_names)
        store.on_zone = stats.grow
        self.family = "2" if ipv6 else "1"
        self.counters: ListenerStats  # bound by connection_made, once the socket's name is known
        self.requests: list[int]
        self.zrcodes: list[list[int]]
        self.max_udp = max_udp
        self.now = now
        self.client_timeout = client_timeout
        self.max_pending = max_pending
        self.shed = stats.shed
        # The agent's own self-queries (agent/health.py) by source address: never shed, or a busy agent would
        # fail its liveness probe and be restarted, which helps nobody.
        self.exempt: set[tuple[str, int]] = exempt if exempt is not None else set()
        self.limited = stats.limited
        # Access control and per-client limits (server/clients.py). `allowed` is the verdict dict itself (one
        # lookup per datagram), None when everyone is answered; the agent sets both again when they change.
        self.clients = clients
        self.allowed: Verdicts | None = None
        self.rate = None if clients is None else clients.rate
        if clients is not None and clients.verdicts is not None and not clients.verdicts.everyone:
            self.allowed = clients.verdicts
        self.transport: asyncio.DatagramTransport | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        # query bytes after the ID -> (entry, monotonic time until which the reply holds, reply after the ID)
        self.memo: dict[bytes, tuple[Entry, float, bytes]] = {}
        self.memo_bytes = 0  # what it holds, also in store.memo_bytes (nodelocal_cache_bytes)
        self.store = store
        self.live = live
        self.countdown = 1 << 62  # datagrams until the next sample (never, without a Live to register with)
        if live is not None:
            live.register(self)

    def bind_counters(self, server: str) -> None:
        """Count into the listener `server`'s counters: the hot path holds its lists, no lookup per query."""
        self.counters = self.stats.listener(server, "udp", self.family)
        self.requests = self.counters.requests  # by zone number
        self.zrcodes = self.counters.rcodes  # by zone number, by rcode

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's UDPTransport is not a subclass
        sockname = transport.get_extra_info("sockname") if hasattr(transport, "get_extra_info") else None
        # CoreDNS's server label: the address the listener is bound to
        self.bind_counters(server_label(sockname) if sockname else SERVER_LABEL)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        # HOT PATH, written for speed: every Python step here shows in hack/bench.sh's CPU per query.
        # Recognise the common query layout from the bytes, look the question up, patch and send.
        self.countdown -= 1
        if not self.countdown:  # one datagram in live.every is handled the sampled way (observe/live.py)
            self._sampled(data, addr)
            return
        # Access control before anything else: a client outside the allowed ranges learns nothing from the
        # cache and costs no upstream query. One dict lookup (the verdict is computed once per address).
        allowed = self.allowed
        if allowed is not None and not allowed[addr[0]]:
            self._deny(data, addr)
            return
        rate = self.rate
        if rate is not None:
            limited = rate.check(addr[0])
            if limited != PASS:
                self._rate_limited(data, addr, limited)
                return
        # The reply memo first: the very same query bytes (all but the ID) within the same TTL second
        # get the very same reply bytes, so one dict lookup answers them without reading the query.
        # An entry that was replaced, evicted or expired, or a new second, sends us down the full path.
        m = self.memo.get(data[2:])
        if m is not None:
            me = m[0]
            now = self.now()
            mpart = me.part
            if now < m[1] and mpart is not None:
                me.hits += 1
                mpart.hits += 1
                mpart.lru.move_to_end(me.key)
                zid = mpart.zid
                self.requests[zid] += 1
                self.zrcodes[zid][me.rcode] += 1
                self.transport.sendto(data[:2] + m[2], addr)  # type: ignore[union-attr]
                return
        n = len(data)
        if n > 16 and not data[2] & 0xF8 and data[4:11] == _ONE_QUESTION:
            ar = data[11]
            flags = (data[2] & 1) | (data[3] & 0x10) >> 3
            if ar == 0:
                qend = n
                limit = 512
                edns = False
            elif ar == 1:
                # Only a trailing root OPT record (type 41), version 0, whose length adds up.
                qend = data.find(b"\x00", 12) + 5
                if (
                    qend < 17
                    or qend + 11 > n
                    or data[qend : qend + 3] != b"\x00\x00\x29"
                    or data[qend + 6]
                    or qend + 11 + (data[qend + 9] << 8 | data[qend + 10]) != n
                ):
                    self._slow(data, addr)
                    return
                payload = data[qend + 3] << 8 | data[qend + 4]
                limit = 512 if payload < 512 else payload if payload < self.max_udp else self.max_udp
                flags |= (data[qend + 7] & 0x80) >> 5
                edns = True
            else:
                self._slow(data, addr)
                return
            # The key is the question with its name lowercased (type and class untouched: see
            # wire.question_key). Most names arrive in lower case: islower() is then true and no
            # lowercased copy is needed; it is false for any byte in A-Z, type and class included.
            key = data[12:qend]
            if not key.islower():
                key = key[:-4].lower() + key[-4:]
            if flags != 1:
                key += SUFFIXES[flags]  # flags = RD | CD << 1 | DO << 2, wire.key_suffix's index
            e = self.index.get(key)
            # qlen: the bytes were not parsed, so a cut-short question plus a flags suffix could spell
            # another question's key; an entry only answers a question of its own length.
            if e is not None and e.qlen == qend - 12:
                now = self.now()
                if now < e.expires:
                    e.hits += 1
                    part = e.part  # never None while the entry is in the index
                    part.hits += 1  # type: ignore[union-attr]
                    part.lru.move_to_end(key)  # type: ignore[union-attr]
                    zid = part.zid  # type: ignore[union-attr]
                    self.requests[zid] += 1
                    self.zrcodes[zid][e.rcode] += 1
                    out = e.render(data, qend, limit, edns, now)
                    memo = self.memo
                    store = self.store
                    if len(memo) >= MEMO_MAX or store.memo_bytes > store.memo_max:
                        self.clear_memo()  # bounded; the working set refills it within a second
                    cost = len(data) + len(out) + MEMO_ITEM_COST
                    self.memo_bytes += cost
                    store.memo_bytes += cost
                    # Valid to the end of this whole TTL second (TTLs in the reply change then) and
                    # never past the entry's expiry.
                    until = e.stored + e.sec + 1
                    memo[data[2:]] = (e, until if until < e.expires else e.expires, out[2:])
                    self.transport.sendto(out, addr)  # type: ignore[union-attr]
                    return
        self._slow(data, addr)

    def clear_memo(self) -> None:
        """Forget every memoised reply (full, or memory shedding); their bytes leave the cache's count."""
        self.memo.clear()
        self.store.memo_bytes -= self.memo_bytes
        self.memo_bytes = 0

    def _sampled(self, data: bytes, addr: Any) -> None:
        """The same handling, timed, then recorded for the live page (top names and clients, hit latency)."""
        live = self.live
        assert live is not None
        every = live.every
        self.countdown = every + 1  # the call below counts this datagram down once more
        pending = len(self.tasks)
        t0 = time.perf_counter()
        self.datagram_received(data, addr)
        seconds = time.perf_counter() - t0
        # No task was started: it was a hit, answered inline (misses are timed by the resolver).
        hit = len(self.tasks) == pending
        live.record(data, addr[0], every, seconds if hit else None)
        m = self.memo.get(data[2:]) if hit else None
        if m is not None and m[0].part is not None:  # the hit's zone: the entry the memo answered from
            self.counters.durations[m[0].part.zid].observe(seconds, every)

    def _deny(self, data: bytes, addr: Any) -> None:
        """A client outside the allowed ranges: REFUSED, or nothing (acl.action drop); counted either way."""
        self.requests[NO_ZONE_ID] += 1  # refused before any zone took it (zone="dropped")
        clients = self.clients
        if clients is not None and clients.drop:
            self.limited[("acl", "dropped")] += 1
            return
        self.limited[("acl", "refused")] += 1
        self._refuse(data, addr)

    def _refuse(self, data: bytes, addr: Any) -> None:
        """REFUSED before any zone took the query (its request is counted by the caller, zone="dropped")."""
        reply = reply_for(data, REFUSED)
        if reply is not None:
            self.zrcodes[NO_ZONE_ID][REFUSED] += 1
            self.transport.sendto(reply, addr)  # type: ignore[union-attr]

    def _rate_limited(self, data: bytes, addr: Any, limited: int) -> None:
        """Over the client's rate (clients.rate): dropped, or every `slip`-th a truncated reply (the client
        retries over TCP, which a forged source address cannot)."""
        self.requests[NO_ZONE_ID] += 1
        if limited == SLIP:
            reply = reply_for(data, 0, tc=True)
            if reply is not None:
                self.limited[("rate", "truncated")] += 1
                self.zrcodes[NO_ZONE_ID][0] += 1
                self.transport.sendto(reply, addr)  # type: ignore[union-attr]
                return
        self.limited[("rate", "dropped")] += 1

    def _slow(self, data: bytes, addr: Any) -> None:
        stats = self.stats
        if stats.pending >= self.max_pending and addr[:2] not in self.exempt:
            # Overload: the slow path is full. Drop before any work (no task, no parsing); hits are still
            # answered inline above, and the clients of dropped misses retry.
            self.shed["busy"] += 1
            self.requests[NO_ZONE_ID] += 1
            return
        clients = self.clients
        exempt = addr[:2] in self.exempt
        if clients is not None and not exempt and not clients.take(addr[0]):
            # This client has clients.max_pending queries on the slow path already: one pod does not take
            # the whole miss budget. REFUSED at once (server/clients.py says why not SERVFAIL).
            self.limited[("pending", "refused")] += 1
            self.requests[NO_ZONE_ID] += 1
            self._refuse(data, addr)
            return
        stats.pending += 1
        task = asyncio.get_running_loop().create_task(self._answer(data, addr, self.now(), clients is not None
                                                                   and not exempt))
        self.tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        self.stats.pending -= 1

    async def _answer(self, data: bytes, addr: Any, t0: float, counted: bool = False) -> None:
        try:
            await self._resolve(data, addr, t0)
        finally:
            if counted and self.clients is not None:
                self.clients.release(addr[0])

    async def _resolve(self, data: bytes, addr: Any, t0: float) -> None:
        if self.now() - t0 > self.client_timeout:
            self.shed["late"] += 1  # waited in the loop past the client's timeout: no work for nobody
            self.requests[NO_ZONE_ID] += 1
            return
        resolver = self.resolver
        try:
            reply = await resolver.answer(data, tcp=False)
        except Exception:
            errors.exception("query-failed", "query from %s failed", addr)
            self.requests[NO_ZONE_ID] += 1
            return
        zid = resolver.zone_of(data) if reply is not None else NO_ZONE_ID
        elapsed = self.now() - t0
        if elapsed > self.client_timeout:
            self.shed["late"] += 1  # the client gave up (and retried): this answer would only add load
            self.requests[zid] += 1
            return
        self.stats.count_reply(self.counters, zid, reply, elapsed)  # coredns_dns_request_duration_seconds
        if reply is not None and self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(reply, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("udp error: %s", exc)
