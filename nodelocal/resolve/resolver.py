"""The full query pipeline: every query the UDP fast path does not answer, and every TCP query.

The order of the steps in Resolver._pipeline is the pipeline; it lives in this one place.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from nodelocal import WireError
from nodelocal.cache.metrics import CacheStats
from nodelocal.cache.policy import TTLPolicy, entry_for
from nodelocal.cache.store import DENIAL, SUCCESS, Entry, Partition, Store
from nodelocal.config import Config
from nodelocal.dns import wire
from nodelocal.dns.names import labels_of_wire
from nodelocal.resolve.forward import Chain, Group
from nodelocal.resolve.loop import LoopGuard
from nodelocal.resolve.metrics import ResolveStats
from nodelocal.resolve.router import Router

log = logging.getLogger("nodelocal.resolve")


@dataclass
class ZoneRoute:
    """A zone's forwarding chain, its TTL policy and its cache partitions."""

    name: str
    chain: Chain
    policy: TTLPolicy
    parts: tuple[Partition, Partition]  # indexed by SUCCESS, DENIAL


def synthesized(rcode: int, rd: bool, cd: bool, do: bool, now: float) -> Entry:
    """An answer we make ourselves (SERVFAIL after every upstream failed): header only, never cached."""
    f1 = wire.QR | (wire.RD if rd else 0)
    f2 = wire.RA | (wire.CD if cd else 0) | rcode
    hdr = bytes([f1, f2, 0, 1, 0, 0, 0, 0, 0, 0])
    return Entry(b"", rcode, DENIAL, hdr, b"", (), (), do, now, 0)


class Resolver:
    """Answers queries from the cache, or by forwarding through the zone's chain."""

    def __init__(self, cfg: Config, store: Store, cache_stats: CacheStats, stats: ResolveStats,
                 now: Callable[[], float] = time.monotonic, guard: LoopGuard | None = None) -> None:
        self.store = store
        self.guard = guard if guard is not None else LoopGuard(now)
        self.stats = stats
        self.misses = cache_stats.misses
        self.now = now
        self.max_udp = cfg.listen.max_udp_payload
        self.max_concurrent = cfg.resolve.max_concurrent
        self.groups = {name: Group(name, g, stats) for name, g in cfg.upstreams.items()}
        routes = {}
        for zname, z in cfg.zones.items():
            chain = Chain([self.groups[g] for g in z.forward], stats, cfg.resolve.query_timeout, now)
            c = z.cache
            policy = TTLPolicy(c.min_ttl, c.success_max_ttl, c.denial_max_ttl, c.servfail_ttl)
            parts = (store.partition(zname, SUCCESS, c.success_capacity),
                     store.partition(zname, DENIAL, c.denial_capacity))
            routes[zname] = ZoneRoute(zname, chain, policy, parts)
            self.misses.setdefault(zname, 0)
        self.router: Router[ZoneRoute] = Router(routes)
        self.inflight: dict[bytes, asyncio.Future[Entry]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def answer(self, query: bytes, tcp: bool) -> bytes | None:
        """The reply to one client query, or None when it must be dropped. The listener that called
        counts the outcome and times it (server/metrics.py)."""
        # 1. Header readable and QR clear; else drop: answering a response is how loops start.
        if len(query) < wire.HEADER_LEN or query[2] & wire.QR:
            return None
        # 1a. One of our own loop probes come back (resolve/loop.py): REFUSED, and the loop is recorded.
        #     One dict check, and only while probes are out.
        if self.guard.probes:
            refused = self.guard.check(query)
            if refused is not None:
                return refused
        # 2. Only standard queries (RFC 1035 §4.1.1); NOTIFY, UPDATE, ... are not ours to relay.
        if query[2] & wire.OPCODE_MASK:
            return wire.error_reply(query, wire.NOTIMP)
        # 3. Well-formed, exactly one question, nothing but an OPT beside it.
        try:
            qend = wire.question_end(query)
            if query[4:10] != b"\x00\x01\x00\x00\x00\x00" or query[10] != 0 or query[11] > 1:
                raise WireError("a query carries one question and at most an OPT record")
            opt = wire.parse_opt(query, qend) if query[11] else None
        except WireError:
            return wire.error_reply(query, wire.FORMERR)
        # 4. EDNS versions above 0 get BADVERS (RFC 6891 §6.1.3).
        if opt is not None and opt.version > 0:
            badvers = wire.opt_record(wire.EDNS_PAYLOAD, opt.do, ext_rcode=wire.BADVERS >> 4)
            return wire.error_reply(query, wire.BADVERS & 0xF, qend, badvers)
        # 5. Zone transfers are not relayed through a cache.
        qtype = query[qend - 4] << 8 | query[qend - 3]
        if qtype in (wire.TYPE_AXFR, wire.TYPE_IXFR):
            return wire.error_reply(query, wire.REFUSED, qend)

        rd, cd, do = bool(query[2] & wire.RD), bool(query[3] & wire.CD), bool(opt and opt.do)
        key = wire.question_key(query, qend, wire.key_suffix(rd, cd, do))
        if tcp:
            limit = 0
        elif opt is None:
            limit = 512
        else:
            limit = max(512, min(opt.payload, self.max_udp))

        # 6. The cache (the UDP fast path already looked, but not for TCP or unusual layouts).
        now = self.now()
        entry = self.store.get(key, now)
        if entry is None:
            # 7. Route by zone, then join an identical query in flight or start one (bounded).
            route = self.router.match(labels_of_wire(key))
            self.misses[route.name] += 1
            fut = self.inflight.get(key)
            if fut is not None:
                self.stats.coalesced += 1
            elif len(self.inflight) >= self.max_concurrent:
                self.stats.concurrency_rejects += 1
                return wire.error_reply(query, wire.REFUSED, qend)
            else:
                fut = self._start(key, query[wire.HEADER_LEN:qend], rd, cd, do, route)
            entry = await asyncio.shield(fut)
            now = self.now()
        # 8. Render for this client: its ID, its spelling of the name, its EDNS, TC if too big.
        return entry.render(query, qend, limit, opt is not None, now)

    def _start(self, key: bytes, question: bytes, rd: bool, cd: bool, do: bool,
               route: ZoneRoute) -> asyncio.Future[Entry]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Entry] = loop.create_future()
        self.inflight[key] = fut
        task = loop.create_task(self._fill(key, question, rd, cd, do, route, fut))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return fut

    async def _fill(self, key: bytes, question: bytes, rd: bool, cd: bool, do: bool,
                    route: ZoneRoute, fut: asyncio.Future[Entry]) -> None:
        """Forward one question and resolve every waiter with the entry; always resolves `fut`."""
        entry: Entry | None = None
        try:
            reply = await route.chain.forward(question, rd, cd, do)
            if reply is not None:
                now = self.now()
                entry, cacheable = entry_for(key, reply[0], do, now, route.policy, reply[1])
                if cacheable:
                    self.store.put(entry, route.parts[entry.kind])
        except Exception:  # a bug must cost one answer, never the agent
            log.exception("forwarding %r failed unexpectedly", key)
        finally:
            del self.inflight[key]
            if entry is None:
                entry = synthesized(wire.SERVFAIL, rd, cd, do, self.now())
            if not fut.done():
                fut.set_result(entry)

    def close(self) -> None:
        for g in self.groups.values():
            g.close()
        for t in self._tasks:
            t.cancel()
