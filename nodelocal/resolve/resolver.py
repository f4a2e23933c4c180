"""The full query pipeline: every query the UDP fast path does not answer, and every TCP query.

The order of the steps in Resolver.answer is the pipeline; it lives in this one place. Beside it, the
two ways an entry is refreshed: on a miss (_fill, which every identical query joins; run in the first
client's own task when there is no stale answer to fall back on, else in a task of its own by _start),
and before it expires (prefetch_due, run a few times a second by the agent).

Serve-stale (RFC 8767), per zone: an expired entry stays in the store for the zone's `serve_stale`
seconds. A miss that finds one starts the refresh as usual and waits at most `stale_client_timeout`
(1.8 s) for it; when every upstream fails (timeout, connection error, SERVFAIL, REFUSED) or the timer
fires first, the client gets the stale answer with TTL `stale_ttl` (30 s). A failed refresh is not
tried again for `stale_recheck` seconds (30 s): queries for that name get the stale answer at once. A
failure never replaces a usable entry; a fresh answer replaces it the moment an upstream gives one.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from nodelocal import WireError
from nodelocal.cache.metrics import CacheStats
from nodelocal.cache.policy import TTLPolicy, entry_for
from nodelocal.cache.store import DENIAL, DUE_COST, SUCCESS, Entry, Partition, Store
from nodelocal.config import Config, ZoneCache
from nodelocal.dns import wire
from nodelocal.dns.names import labels_of_wire
from nodelocal.observe.ratelog import RateLimitedLog
from nodelocal.resolve.forward import FAILURE_RCODES, Chain, Group
from nodelocal.resolve.loop import LoopGuard
from nodelocal.resolve.metrics import ResolveStats
from nodelocal.resolve.router import Router
from nodelocal.resolve.upstream import LoopRef

log = logging.getLogger("nodelocal.resolve")
errors = RateLimitedLog(log)  # a bug hit by every miss must not write a traceback per miss


@dataclass
class ZoneRoute:
    """A zone's forwarding chain, its TTL policy and its cache partitions."""

    name: str
    chain: Chain
    policy: TTLPolicy
    parts: tuple[Partition, Partition]  # indexed by SUCCESS, DENIAL
    cache: ZoneCache  # serve-stale and prefetch settings

    @property
    def prefetch_share(self) -> float:
        """The share of an entry's TTL after which its refresh window opens."""
        return 1.0 - self.cache.prefetch_percent / 100.0


# What a refresh hands the queries waiting for it: the entry to answer from, and whether that entry is a
# stale one (expired, served because the upstreams failed: rendered with the zone's stale TTL).
Outcome = tuple[Entry, bool]

RECHECK_MAX = 65536  # names remembered as failing (stale_recheck); pruned of the expired ones past it


def synthesized(rcode: int, rd: bool, cd: bool, do: bool, now: float) -> Entry:
    """An answer we make ourselves (SERVFAIL after every upstream failed): header only, never cached."""
    f1 = wire.QR | (wire.RD if rd else 0)
    f2 = wire.RA | (wire.CD if cd else 0) | rcode
    hdr = bytes([f1, f2, 0, 1, 0, 0, 0, 0, 0, 0])
    return Entry(b"", rcode, DENIAL, hdr, b"", (), (), do, now, 0)


def scan_query(query: bytes) -> tuple[int, wire.Opt | None]:
    """Step 3 of the pipeline: the end of the question and the OPT record of a well-formed query (exactly one
    question, nothing but an OPT beside it); WireError for anything else."""
    qend = wire.question_end(query)
    if query[4:10] != b"\x00\x01\x00\x00\x00\x00" or query[10] != 0 or query[11] > 1:
        raise WireError("a query carries one question and at most an OPT record")
    return qend, (wire.parse_opt(query, qend) if query[11] else None)


class Resolver:
    """Answers queries from the cache, or by forwarding through the zone's chain."""

    def __init__(self, cfg: Config, store: Store, cache_stats: CacheStats, stats: ResolveStats,
                 now: Callable[[], float] = time.monotonic, guard: LoopGuard | None = None) -> None:
        self.store = store
        self.guard = guard if guard is not None else LoopGuard(now)
        self.stats = stats
        self.misses = cache_stats.misses
        self.served_stale = cache_stats.served_stale
        self.prefetched = cache_stats.prefetch
        self.prefetch_rate = cfg.resolve.prefetch_rate
        self._tokens = float(self.prefetch_rate)  # prefetch token bucket (refreshes), refilled per second
        self._tokens_at = now()
        self._seq = itertools.count()  # tie-breaker for store.due (entries do not compare)
        self.recheck: dict[bytes, float] = {}  # key -> until when a failed name is answered stale, unasked
        self.now = now
        self.max_udp = cfg.listen.max_udp_payload
        self.max_concurrent = cfg.resolve.max_concurrent
        self.minimal_any = cfg.resolve.minimal_any
        self.groups = {name: Group(name, g, stats) for name, g in cfg.upstreams.items()}
        for group in self.groups.values():
            for server in group.servers:
                server.on_up = self._upstream_back
        routes = {}
        for zname, z in cfg.zones.items():
            chain = Chain([self.groups[g] for g in z.forward], stats, cfg.resolve.query_timeout, now)
            c = z.cache
            policy = TTLPolicy(c.min_ttl, c.success_max_ttl, c.denial_max_ttl, c.servfail_ttl)
            parts = (store.partition(zname, SUCCESS, c.success_capacity, c.serve_stale),
                     store.partition(zname, DENIAL, c.denial_capacity, c.serve_stale))
            routes[zname] = ZoneRoute(zname, chain, policy, parts, c)
            self.misses.setdefault(zname, 0)
            self.served_stale.setdefault(zname, 0)
            self.prefetched.setdefault(zname, 0)
        self.router: Router[ZoneRoute] = Router(routes)
        self.inflight: dict[bytes, asyncio.Future[Outcome]] = {}
        self.shedding = False  # set by cache/memory.py's MemoryGuard near the memory limit: new misses refused
        self.loop = LoopRef()
        self._tasks: set[asyncio.Task[None]] = set()

    def zone_of(self, query: bytes) -> int:
        """The number (Partition.zid) of the zone `query` routes to, for the listeners' counters; 0 (no zone)
        when it has no readable question. One route per call: slow paths only."""
        try:
            qend = wire.question_end(query)
        except WireError:
            return 0
        name = query[wire.HEADER_LEN : qend - 4].lower()
        return self.router.match(labels_of_wire(name)).parts[0].zid

    def cached_reply(self, query: bytes) -> bytes | None:
        """The TCP reply from a live cache entry, or None when the query is not a plain hit. For a query that
        may not start a task (its client's cap on queries in flight is reached): hits still flow, as they do
        over UDP, where the cap applies to the slow path only. The same checks as `answer` up to step 6."""
        if len(query) < wire.HEADER_LEN or query[2] & (wire.QR | wire.OPCODE_MASK):
            return None
        try:
            qend, opt = scan_query(query)
        except WireError:
            return None
        if opt is not None and opt.version > 0:
            return None
        rd, cd, do = bool(query[2] & wire.RD), bool(query[3] & wire.CD), bool(opt and opt.do)
        key = wire.question_key(query, qend, wire.key_suffix(rd, cd, do))
        now = self.now()
        hit = self.store.get(key, now) if key in self.store.index else None
        return None if hit is None else hit.render(query, qend, 0, opt is not None, now)

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
            qend, opt = scan_query(query)
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
        # 5a. ANY over UDP: one synthesized HINFO (RFC 8482 §4.2), never the upstream's whole set, which is
        #     a small query for a large reply (amplification towards a forged source). Over TCP (no forged
        #     sources) the whole answer is forwarded as usual; it is never cached (_put), so that the UDP
        #     fast path cannot serve it either.
        if qtype == wire.TYPE_ANY and not tcp and self.minimal_any:
            self.stats.minimal_any += 1
            return wire.minimal_any_reply(query, qend, opt)

        rd, cd, do = bool(query[2] & wire.RD), bool(query[3] & wire.CD), bool(opt and opt.do)
        key = wire.question_key(query, qend, wire.key_suffix(rd, cd, do))
        if tcp:
            limit = 0
        elif opt is None:
            limit = 512
        else:
            limit = max(512, min(opt.payload, self.max_udp))

        # 6. The cache (the UDP fast path already looked, but not for TCP or unusual layouts). A key the
        #    index does not hold at all (the usual miss) is neither live nor stale: one lookup says so.
        now = self.now()
        store = self.store
        held = key in store.index
        hit = store.get(key, now) if held else None
        if hit is not None:
            # 8. Render for this client: its ID, its spelling of the name, its EDNS, TC if too big.
            return hit.render(query, qend, limit, opt is not None, now)
        # 7. Route by zone; an expired entry still in the zone's stale window may answer (RFC 8767).
        route = self.router.match(labels_of_wire(key))
        self.misses[route.name] += 1
        old = store.get_stale(key, now) if held else None
        entry: Entry
        if old is not None and self.recheck.get(key, 0.0) > now:
            # 7a. Failure recheck: this name's refresh failed moments ago; answer stale, ask nobody.
            entry, stale = old, True
        else:
            # 7b. Join an identical query in flight or start one (bounded: past the bound, a stale answer
            #     still beats REFUSED).
            fut = self.inflight.get(key)
            inline = False
            if fut is not None:
                self.stats.coalesced += 1
            elif self.shedding:
                # Memory shedding (cache/memory.py): near the memory limit, no new upstream query (its
                # state, its reply and its entry would take memory); hits and stale answers still go.
                store.shed["refuse"] += 1
                if old is None:
                    return wire.error_reply(query, wire.REFUSED, qend)
            elif len(self.inflight) >= self.max_concurrent:
                self.stats.concurrency_rejects += 1
                if old is None:
                    return wire.error_reply(query, wire.REFUSED, qend)
            elif old is None:
                # Nothing to fall back on: this client waits for the whole refresh anyway, so the refresh
                # runs in its task rather than in a task of its own (a task, a shield and their callbacks
                # fewer per miss); identical queries meanwhile join it through `fut` as usual.
                fut = self.loop().create_future()
                self.inflight[key] = fut
                inline = True
            else:
                fut = self._start(key, query[wire.HEADER_LEN:qend], rd, cd, do, route)
            if fut is None:
                assert old is not None
                entry, stale = old, True
            elif inline:
                await self._fill(key, query[wire.HEADER_LEN:qend], rd, cd, do, route, fut)
                entry, stale = fut.result()
            elif old is None:
                entry, stale = await asyncio.shield(fut)
            else:
                # 7c. The client-response timer: a client with a stale answer to fall back on does not
                #     wait for the whole upstream deadline (RFC 8767 §5); the refresh goes on.
                try:
                    entry, stale = await asyncio.wait_for(asyncio.shield(fut), route.cache.stale_client_timeout)
                except TimeoutError:
                    entry, stale = old, True
            now = self.now()
        if stale:
            self.served_stale[route.name] += 1  # coredns_cache_served_stale_total
            # 8. A stale answer: every TTL is the zone's stale TTL.
            return entry.render_stale(query, qend, limit, opt is not None, route.cache.stale_ttl)
        # 8. Render for this client: its ID, its spelling of the name, its EDNS, TC if too big.
        return entry.render(query, qend, limit, opt is not None, now)

    def _start(self, key: bytes, question: bytes, rd: bool, cd: bool, do: bool,
               route: ZoneRoute) -> asyncio.Future[Outcome]:
        loop = self.loop()
        fut: asyncio.Future[Outcome] = loop.create_future()
        self.inflight[key] = fut
        task = loop.create_task(self._fill(key, question, rd, cd, do, route, fut))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return fut

    async def _fill(self, key: bytes, question: bytes, rd: bool, cd: bool, do: bool,
                    route: ZoneRoute, fut: asyncio.Future[Outcome]) -> None:
        """Forward one question and resolve every waiter with the outcome; always resolves `fut`.

        A failure (no reply, SERVFAIL, REFUSED) never replaces an entry that can still answer (live, or
        within its stale window): the waiters get that entry, and the name is rechecked only after the
        zone's stale_recheck. With prefer_stale (last-known-good), a negative answer or SERVFAIL does not
        replace a positive entry either, but only while the zone's upstreams are degraded.
        """
        out: Outcome | None = None
        try:
            # The key starts with the question, name lowercased: the transports match replies against it.
            reply = await route.chain.forward(question, rd, cd, do, key[: len(question)])
            now = self.now()
            keep = self._usable(key, now)
            if reply is None or reply[1].rcode in FAILURE_RCODES:
                if keep is not None:
                    self._failed(key, now, route)
                    out = (keep, now >= keep.expires)
                elif reply is not None:  # SERVFAIL/REFUSED and nothing to fall back on: as upstream said
                    out = self._store(key, reply, do, now, route)
            else:
                entry, cacheable = entry_for(key, reply[0], do, now, route.policy, reply[1])
                if (keep is not None and keep.kind == SUCCESS and entry.kind == DENIAL
                        and route.cache.prefer_stale and route.chain.degraded):
                    # Last-known-good: upstreams are degraded, so a new denial may be their fault.
                    self._failed(key, now, route)
                    out = (keep, now >= keep.expires)
                else:
                    self.recheck.pop(key, None)
                    if cacheable:
                        self._put(entry, now, route)
                    out = (entry, False)
        except Exception:  # a bug must cost one answer, never the agent
            errors.exception("forward-failed", "forwarding %r failed unexpectedly", key)
        finally:
            del self.inflight[key]
            if out is None:
                out = (synthesized(wire.SERVFAIL, rd, cd, do, self.now()), False)
            if not fut.done():
                fut.set_result(out)

    def _usable(self, key: bytes, now: float) -> Entry | None:
        """The entry that can still answer `key`: live, or expired within its stale window."""
        e = self.store.index.get(key)
        if e is None or e.part is None or now >= e.expires + e.part.stale:
            return None
        return e

    def _store(self, key: bytes, reply: tuple[bytes, wire.Scan], do: bool, now: float, route: ZoneRoute) -> Outcome:
        entry, cacheable = entry_for(key, reply[0], do, now, route.policy, reply[1])
        if cacheable:
            self._put(entry, now, route)
        return entry, False

    def _put(self, entry: Entry, now: float, route: ZoneRoute) -> None:
        if entry.key[entry.qlen - 4 : entry.qlen - 2] == b"\x00\xff":
            return  # an ANY answer (TCP): forwarded, never cached (step 5a)
        store = self.store
        prefetch = route.cache.prefetch_hits > 0
        if prefetch:
            entry.size += DUE_COST  # its heap item below lives as long as the entry (prune_due)
        store.put(entry, route.parts[entry.kind])
        if prefetch and entry.part is not None:
            when = entry.stored + entry.ttl * route.prefetch_share
            due = store.due
            heapq.heappush(due, (when, next(self._seq), entry))
            if len(due) > 2 * len(store.index) + 1024:
                store.prune_due()  # amortised: at least half the items go each time

    def adopt(self, entry: Entry, now: float, same_chain: Callable[[str], bool]) -> bool:
        """Insert an entry a predecessor handed over (agent/handover.py) into the zone our config routes it
        to, if `same_chain(zone)` (the answer came through the upstreams this zone still uses) and it is
        still live or within the zone's stale window; True if it went in. Its expiry is never extended."""
        try:
            route = self.router.match(labels_of_wire(entry.key))
        except (IndexError, ValueError):
            return False
        if not same_chain(route.name) or now >= entry.expires + route.parts[entry.kind].stale:
            return False
        self._put(entry, now, route)
        return entry.part is not None

    def _failed(self, key: bytes, now: float, route: ZoneRoute) -> None:
        """Remember that `key`'s refresh failed: answer it stale, unasked, for the zone's stale_recheck."""
        if len(self.recheck) >= RECHECK_MAX:
            self.recheck = {k: t for k, t in self.recheck.items() if t > now}
        self.recheck[key] = now + route.cache.stale_recheck

    def _upstream_back(self) -> None:
        """An upstream answers again: names held under the failure recheck are asked at their next query, so
        fresh data replaces stale as soon as the upstream can give it (not up to stale_recheck later)."""
        self.recheck.clear()

    def prefetch_due(self) -> int:
        """Refresh the entries whose prefetch window has opened and that were used enough; returns how many
        refreshes it started. Bounded: one refresh per entry (in-flight coalescing), resolve.prefetch_rate
        a second, and a refresh asks exactly what the entry holds (its question, RD, CD and DO bits)."""
        now = self.now()
        self._tokens = min(float(self.prefetch_rate), self._tokens + (now - self._tokens_at) * self.prefetch_rate)
        self._tokens_at = now
        due = self.store.due
        started = 0
        while due and due[0][0] <= now:
            _when, _seq, e = heapq.heappop(due)
            key = e.key
            if e.part is None or now >= e.expires or key in self.inflight:
                continue  # replaced, evicted or expired already (a miss refreshes it), or being refreshed
            route = self.router.match(labels_of_wire(key))
            if e.hits < route.cache.prefetch_hits or len(self.inflight) >= self.max_concurrent or self.shedding:
                continue
            if self._tokens < 1.0:
                continue  # over the rate: this one expires and is refreshed by its next miss
            self._tokens -= 1.0
            suffix = key[e.qlen :]
            flags = suffix[0] & 0x7 if suffix else 1  # wire.key_suffix's index: RD | CD << 1 | DO << 2
            self._start(key, key[: e.qlen], bool(flags & 1), bool(flags & 2), bool(flags & 4), route)
            self.prefetched[route.name] += 1  # coredns_cache_prefetch_total
            started += 1
        return started

    def close(self) -> None:
        for g in self.groups.values():
            g.close()
        for t in self._tasks:
            t.cancel()
