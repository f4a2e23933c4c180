"""TTL-aware LRU store of wire answers, partitioned by zone and kind, bounded by entries and by bytes.

One index serves every zone (node-local-dns keeps a separate cache per Corefile server block),
while each (zone, kind) partition keeps its own LRU order and entry cap. A shared byte budget bounds
the whole store.
"""

from __future__ import annotations

import heapq
import time
from collections import OrderedDict
from collections.abc import Callable

from nodelocal.dns import wire

SUCCESS, DENIAL = 0, 1
KIND_NAMES = ("success", "denial")

# What an entry really costs, measured with tracemalloc (tests/unit/cache/test_memory.py checks it on every
# run): 20,000 entries of three shapes (an A answer, an NXDOMAIN with its SOA, a CNAME and four A records)
# cost 609 bytes each beside their key and two copies of their records (the template and the body with
# its TTLs patched), and 44 bytes per record (a TTL offset, a TTL and its int). The 609: the Entry and its
# slots (~190), the header bytes objects (~90), the bytes objects' own headers (~100), the index's dict slot
# and the partition's OrderedDict slot and node (~150 at the fill a dict keeps, up to ~2x right after it
# grows). Counted with a margin for that growth.
ENTRY_OVERHEAD = 720
RECORD_COST = 48
# A prefetch heap item (when, seq, entry): a tuple, a float and an int, and its list slot.
DUE_COST = 136

OPT_PLAIN = wire.opt_record(wire.EDNS_PAYLOAD, False)
OPT_DO = wire.opt_record(wire.EDNS_PAYLOAD, True)


NO_ZONE = "dropped"  # the zone label of queries no zone took (CoreDNS's vars.Dropped)

class Entry:
    """One answer ready to be sent: header tail, records after the question, where their TTLs sit."""

    __slots__ = (
        "body",
        "expires",
        "hdr",
        "hdr_opt",
        "hits",
        "key",
        "kind",
        "noad",
        "opt",
        "part",
        "qlen",
        "rcode",
        "sec",
        "size",
        "stored",
        "template",
        "ttl",
        "ttl_offsets",
        "ttls",
    )

    def __init__(
        self,
        key: bytes,
        rcode: int,
        kind: int,
        hdr: bytes,
        template: bytes,
        ttl_offsets: tuple[int, ...],
        ttls: tuple[int, ...],
        do: bool,
        stored: float,
        ttl: int,
    ) -> None:
        self.key = key
        self.rcode = rcode
        self.kind = kind
        self.hdr = hdr  # header bytes 2..12: flags and counts, ARCOUNT without OPT
        arcount = (hdr[8] << 8 | hdr[9]) + 1
        self.hdr_opt = hdr[:8] + bytes([arcount >> 8, arcount & 0xFF])
        # RFC 6840 §5.8: AD goes only to a client that set AD or DO in its query. DO is part of the
        # cache key, so an entry built for DO only ever serves DO queries and keeps AD; otherwise the
        # headers without AD are made once here, for render to pick when the query has no AD. None
        # (nothing to strip) for every entry whose upstream did not set AD.
        self.noad: tuple[bytes, bytes] | None = None
        if hdr[1] & wire.AD and not do:
            f2 = bytes([hdr[1] & ~wire.AD & 0xFF])
            self.noad = (hdr[:1] + f2 + hdr[2:], self.hdr_opt[:1] + f2 + self.hdr_opt[2:])
        self.opt = OPT_DO if do else OPT_PLAIN
        self.template = template  # every record after the question, OPT removed
        self.ttl_offsets = ttl_offsets
        self.ttls = ttls  # each record's TTL, already capped at the entry TTL
        self.body = template
        self.sec = 0  # whole seconds elapsed that `body` was patched for
        self.stored = stored
        self.ttl = ttl
        self.expires = stored + ttl
        self.hits = 0
        self.part: Partition | None = None
        self.size = len(key) + 2 * len(template) + ENTRY_OVERHEAD + RECORD_COST * len(ttls)
        self.qlen = 0  # length of the question (name, type, class) this entry answers; set by make_entry

    def body_at(self, now: float) -> bytes:
        """The records with TTLs decremented by the whole seconds elapsed since the answer was stored."""
        sec = int(now - self.stored)
        if sec != self.sec:
            self.body = wire.pack_ttls(self.template, self.ttl_offsets, self.ttls, sec)
            self.sec = sec
        return self.body

    def render(self, query: bytes, qend: int, limit: int, edns: bool, now: float) -> bytes:
        """The reply for one client: its ID and question spelling, our OPT if it sent one, TC if too big.

        `limit` is the client's UDP payload size (0 for TCP: no limit).
        """
        return self.assemble(query, qend, limit, edns, self.body_at(now))

    def render_stale(self, query: bytes, qend: int, limit: int, edns: bool, ttl: int) -> bytes:
        """The reply from an expired entry (RFC 8767 §4): the same records, every TTL set to `ttl`."""
        body = wire.pack_ttls(self.template, self.ttl_offsets, (ttl,) * len(self.ttls), 0)
        return self.assemble(query, qend, limit, edns, body)

    def assemble(self, query: bytes, qend: int, limit: int, edns: bool, body: bytes) -> bytes:
        """Header, the client's question, `body` (the records) and our OPT if the client sent one."""
        noad = self.noad  # None unless AD must be cleared for a query without AD (see __init__)
        if edns:
            hdr = self.hdr_opt if noad is None or query[3] & wire.AD else noad[1]
            out = b"".join((query[:2], hdr, query[12:qend], body, self.opt))
        else:
            hdr = self.hdr if noad is None or query[3] & wire.AD else noad[0]
            out = b"".join((query[:2], hdr, query[12:qend], body))
        if limit and len(out) > limit:
            # The flags of `hdr` (either form): the TC reply follows the same AD rule.
            return wire.truncated_reply(query, qend, hdr, self.opt if edns else b"")
        return out


class Partition:
    """The entries of one (zone, kind) in LRU order, with their own entry cap and stale window."""

    __slots__ = ("bytes", "capacity", "evictions", "hits", "kind", "lru", "stale", "zid", "zone")

    def __init__(self, zone: str, kind: int, capacity: int, stale: float = 0.0, zid: int = 0) -> None:
        self.zone = zone
        self.zid = zid  # the zone's number (Store.zone_names): listeners count per zone by it, without a lookup
        self.kind = kind
        self.capacity = capacity
        self.stale = stale  # seconds past expiry an entry is kept to answer when upstreams fail (RFC 8767)
        self.lru: OrderedDict[bytes, Entry] = OrderedDict()
        self.bytes = 0
        self.evictions = 0
        self.hits = 0  # counted by whoever serves a hit (the UDP hot path, the slow path)


class Store:
    """The answer cache: an index for the hot path, partitions for eviction order and caps."""

    def __init__(self, max_bytes: int, now: Callable[[], float] = time.monotonic) -> None:
        self.max_bytes = max_bytes
        self.now = now
        self.index: dict[bytes, Entry] = {}
        self.partitions: dict[tuple[str, int], Partition] = {}
        # Zone numbers. 0 is no zone: what the listeners count for a query refused, dropped or shed before
        # any zone took it (CoreDNS labels those zone="dropped").
        self.zone_names: list[str] = [NO_ZONE]
        self.zone_ids: dict[str, int] = {}  # a real zone named "dropped" gets a number of its own
        self.on_zone: Callable[[], None] | None = None  # the listeners' counters grow a zone (server/metrics.py)
        self.bytes = 0  # what the entries cost (Entry.size), prefetch heap items included
        # What the UDP listeners' reply memos hold (server/udp.py): counted in nodelocal_cache_bytes and in
        # the budget (entries are evicted to make room); each listener clears its memo past memo_max.
        self.memo_bytes = 0
        # Memory shedding (cache/memory.py): rounds that evicted under the memory limit, misses refused.
        self.shed = {"evict": 0, "refuse": 0}
        self.memory_limit = 0  # bytes of resident memory shedding starts under (cache/memory.py); 0: none
        self.expired_reclaimed = 0
        # Entries to look at for prefetch, by the time their refresh window opens: (when, seq, entry).
        # Pushed on insert (resolve/resolver.py), popped by Resolver.prefetch_due; one item per insert,
        # so it holds at most what was inserted within the longest TTL.
        self.due: list[tuple[float, int, Entry]] = []

    def zone_id(self, zone: str) -> int:
        """The zone's number, given on first use and kept for the life of the store (a zone removed by a
        reload and added again gets its old one); on_zone is told when there is a new one."""
        zid = self.zone_ids.get(zone)
        if zid is None:
            zid = self.zone_ids[zone] = len(self.zone_names)
            self.zone_names.append(zone)
            if self.on_zone is not None:
                self.on_zone()
        return zid

    @property
    def memo_max(self) -> int:
        """Bytes the reply memos may hold in all: an eighth of the budget, 64 KiB to 4 MiB."""
        return max(64 * 1024, min(4 * 1024 * 1024, self.max_bytes // 8))

    def partition(self, zone: str, kind: int, capacity: int, stale: float = 0.0) -> Partition:
        """The partition for (zone, kind), created on first use; its cap and stale window follow the latest
        config."""
        part = self.partitions.get((zone, kind))
        if part is None:
            part = self.partitions[(zone, kind)] = Partition(zone, kind, capacity, stale, self.zone_id(zone))
        part.capacity = capacity
        part.stale = stale
        return part

    def get_stale(self, key: bytes, now: float) -> Entry | None:
        """An expired entry for `key` still within its partition's stale window (RFC 8767), else None.

        Not marked used: a stale answer must not keep an entry alive in the LRU order on its own.
        """
        e = self.index.get(key)
        if e is None or now < e.expires:
            return None
        part = e.part
        if part is None or now >= e.expires + part.stale:
            return None
        return e

    def get(self, key: bytes, now: float) -> Entry | None:
        """A live entry for `key`, marked most recently used; None on a miss or an expired entry."""
        e = self.index.get(key)
        if e is None or now >= e.expires:
            return None
        e.hits += 1
        part = e.part
        assert part is not None
        part.hits += 1
        part.lru.move_to_end(key)
        return e

    def put(self, entry: Entry, part: Partition) -> None:
        """Insert or replace `entry`, then evict until the partition cap and the byte budget hold."""
        old = self.index.get(entry.key)
        if old is not None:
            self._drop(old)
        if part.capacity <= 0 or entry.size > self.max_bytes:
            return
        entry.part = part
        self.index[entry.key] = entry
        part.lru[entry.key] = entry
        part.bytes += entry.size
        self.bytes += entry.size
        while len(part.lru) > part.capacity:
            self._evict(part)
        while self.bytes + self.memo_bytes > self.max_bytes and self.bytes > 0:
            self._evict(max(self.partitions.values(), key=lambda p: p.bytes))

    def shrink(self, target: int) -> int:
        """Evict, largest partition first, until the entries cost at most `target` bytes; returns how many
        went. For memory shedding: the LRU order within each partition decides."""
        gone = 0
        while self.bytes > target and self.bytes > 0:
            self._evict(max(self.partitions.values(), key=lambda p: p.bytes))
            gone += 1
        return gone

    def prune_due(self) -> None:
        """Drop the prefetch heap's items for entries no longer in the store (evicted, replaced, expired
        and swept). Called when the heap holds many more items than the store entries: under a flood of
        new names every insert pushes an item, and the evicted entries they point to would stay in memory
        until their refresh time came."""
        self.due = [d for d in self.due if d[2].part is not None]
        heapq.heapify(self.due)

    def sweep(self, now: float, budget: int = 100_000) -> int:
        """Reclaim entries expired past their stale window, looking at no more than `budget` of them;
        returns how many went."""
        gone = 0
        for part in self.partitions.values():
            dead = []
            until = now - part.stale
            for e in part.lru.values():
                if budget <= 0:
                    break
                budget -= 1
                if until >= e.expires:
                    dead.append(e)
            for e in dead:
                self._drop(e)
            gone += len(dead)
        self.expired_reclaimed += gone
        return gone

    def clear(self, zone: str | None = None) -> None:
        """Drop every entry, or those of one zone."""
        for (z, _kind), part in self.partitions.items():
            if zone is None or z == zone:
                for e in list(part.lru.values()):
                    self._drop(e)

    def drop(self, key: bytes) -> bool:
        """Remove the entry for `key` (a cache flush); True when there was one. The UDP reply memo sees
        the entry's partition gone and stops answering from it."""
        e = self.index.get(key)
        if e is None:
            return False
        self._drop(e)
        return True

    def entries(self, kind: int) -> int:
        return sum(len(p.lru) for p in self.partitions.values() if p.kind == kind)

    def _evict(self, part: Partition) -> None:
        _key, e = next(iter(part.lru.items()))
        part.evictions += 1
        self._drop(e)

    def _drop(self, e: Entry) -> None:
        part = e.part
        if part is None:
            return
        del part.lru[e.key]
        del self.index[e.key]
        part.bytes -= e.size
        self.bytes -= e.size
        e.part = None
