"""The live view behind the built-in page (/) and `nodelocal stats`: sampled detail plus a short history.

The UDP hot path hands every `every`-th datagram to UDPServer._sampled, which runs it through the same
code, times it and calls Live.record (a bounded list: nothing else happens per query). Once a second
Live.tick drains that list into the top-k sketches (names, clients, query types) and the request
duration histogram (cache hits, each sample standing for `every` of them), ages the sketches, keeps a
snapshot of the counters for rates over the last minutes, and adapts `every` so that about `target`
datagrams a second are sampled whatever the load (every one of them below `target` QPS).
Live.snapshot() is the JSON of /api/stats: totals read from the counters at that moment (they match
/metrics), rates over the last minute, five minutes of per-second history and the top lists.
"""

from __future__ import annotations

import itertools
import math
import os
import socket
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Protocol

import dns.rdatatype

from nodelocal import __version__
from nodelocal.cache.store import DENIAL, SUCCESS, Store
from nodelocal.dns.names import to_text
from nodelocal.dns.wire import RCODE_NAMES
from nodelocal.observe.histogram import DURATION_BUCKETS
from nodelocal.observe.meters import Meters
from nodelocal.observe.topk import TopK

TICK = 1.0  # seconds between drains and snapshots
HISTORY = 300  # snapshots kept: five minutes of per-second history
WINDOW = 60.0  # seconds the headline rates cover
HALF_LIFE = 60.0  # seconds in which a name's or client's weight in the top lists halves
TARGET = 500  # sampled datagrams per second the adaptation aims for
RING_MAX = 8192  # samples held between two ticks; more are counted as lost
QUESTION_MAX = 12 + 255 + 4  # header, longest name, type and class: what a sample keeps of a datagram
TOP_CAPACITY = 256  # counters per sketch; the page shows the first TOP_SHOWN
TOP_SHOWN = 10
NETWORK_FAILURES = ("timeout", "error", "malformed")  # upstream outcomes without any reply


class Sampler(Protocol):
    """A listener that samples every `countdown`-th datagram (server/udp.py UDPServer)."""

    countdown: int


class Snapshot(NamedTuple):
    """The cumulative counters at one tick."""

    t: float
    cpu: float  # process CPU seconds
    queries: int
    hits: int
    denial_hits: int
    misses: int
    zones: dict[str, tuple[int, int]]  # zone -> (hits, misses)
    duration: tuple[int, ...]  # request duration histogram, one count per bucket (+Inf last)
    upstreams: dict[str, tuple[int, int, int, float]]  # to -> (tries, failures, answered, answered seconds)
    evictions: int


def type_text(qtype: int) -> str:
    """A query type's mnemonic (TYPE65280 for one without); negative for an unreadable question."""
    return dns.rdatatype.to_text(dns.rdatatype.RdataType.make(qtype)) if qtype >= 0 else "(malformed)"


def split_question(q: bytes) -> tuple[bytes, int] | None:
    """(wire name, qtype) of a question at the start of `q`, or None if it is not laid out as one."""
    i, n = 0, len(q)
    while i < n:
        length = q[i]
        if length == 0:
            if i + 3 > n:
                return None
            return q[: i + 1], q[i + 1] << 8 | q[i + 2]
        if length > 63:  # compression pointers and extended labels have no place in a query
            return None
        i += 1 + length
    return None


def quantile(q: float, counts: Sequence[int]) -> float | None:
    """The q-quantile (seconds) of a histogram over DURATION_BUCKETS, interpolated within the bucket the
    way Prometheus's histogram_quantile does; None without observations."""
    total = sum(counts)
    if total <= 0:
        return None
    rank, acc = q * total, 0
    for i, c in enumerate(counts):
        if c and acc + c >= rank:
            if i >= len(DURATION_BUCKETS):  # the +Inf bucket: the highest finite bound, as Prometheus
                return DURATION_BUCKETS[-1]
            lo = DURATION_BUCKETS[i - 1] if i else 0.0
            return lo + (DURATION_BUCKETS[i] - lo) * (rank - acc) / c
        acc += c
    return DURATION_BUCKETS[-1]


def _ratio(a: float, b: float) -> float | None:
    return a / b if b > 0 else None


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class Live:
    """Sampled detail and short history of one agent; see the module docstring."""

    def __init__(self, meters: Meters, store: Store, *, node: str | None = None, target: int = TARGET,
                 now: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time,
                 cpu: Callable[[], float] = time.process_time) -> None:
        self.meters = meters
        self.store = store
        self.node = node or os.environ.get("NODE_NAME") or socket.gethostname()
        self.target = target
        self.now = now
        self.wall = wall
        self.cpu = cpu
        self.started = now()
        self.every = 1  # UDP datagrams per sample; adapted by tick(), doubled by record() in a burst
        self.backoff_at = 2 * target  # samples in this tick at which record() doubles `every`
        self.ring: list[tuple[bytes, str, int, float | None]] = []
        self.lost = 0  # samples dropped because the ring was full
        self.samplers: list[Sampler] = []
        self.names: TopK[str] = TopK(TOP_CAPACITY)
        self.clients: TopK[str] = TopK(TOP_CAPACITY)
        self.types: TopK[str] = TopK(64)
        self.decay = 0.5 ** (TICK / HALF_LIFE)
        self.history: deque[Snapshot] = deque(maxlen=HISTORY)
        self.history.append(self._snap())

    # ---- fed by the listeners ----------------------------------------------------------------------

    def register(self, sampler: Sampler) -> None:
        sampler.countdown = self.every
        self.samplers.append(sampler)

    def record(self, data: bytes, client: str, weight: int, seconds: float | None) -> None:
        """One sampled query standing for `weight` queries; `seconds` is its handling time if it was a hit."""
        if len(self.ring) >= self.backoff_at:  # a burst (say from idle to 50k QPS): back off before the tick,
            self.every *= 2  # doubling every `target` samples: ~target * log2(rate / target) in a tick
            self.backoff_at += self.target
        if len(self.ring) < RING_MAX:
            self.ring.append((data[12:QUESTION_MAX], client, weight, seconds))
        else:
            self.lost += weight

    # ---- once a second -----------------------------------------------------------------------------

    def tick(self) -> None:
        """Drain the samples into the sketches and the histogram, take a snapshot, adapt the sampling."""
        ring, self.ring = self.ring, []
        names: dict[bytes, float] = {}
        clients: dict[str, float] = {}
        types: dict[int, float] = {}
        hist = self.meters.server.request_duration
        for q, client, weight, seconds in ring:
            parsed = split_question(q)
            name, qtype = parsed if parsed is not None else (b"", -1)
            names[name] = names.get(name, 0.0) + weight
            clients[client] = clients.get(client, 0.0) + weight
            types[qtype] = types.get(qtype, 0.0) + weight
            if seconds is not None:
                hist.observe(seconds, weight)
        for sketch in (self.names, self.clients, self.types):
            sketch.decay(self.decay)
        self.names.update({(to_text(k) if k else "(malformed)"): w for k, w in names.items()})
        self.clients.update(clients)
        self.types.update({type_text(t): w for t, w in types.items()})

        snap = self._snap()
        self.history.append(snap)
        # Aim at `target` samples a second from the query rate of the last few seconds.
        back = self.history[max(0, len(self.history) - 6)]
        rate = (snap.queries - back.queries) / max(snap.t - back.t, 1e-9)
        every = max(1, int(rate / self.target))
        self.every = every
        self.backoff_at = 2 * self.target
        for s in self.samplers:  # a long countdown from a busier time must not delay the new rate
            if s.countdown > every:
                s.countdown = every

    def _snap(self) -> Snapshot:
        m, store = self.meters, self.store
        misses, server, res = m.cache.misses, m.server, m.resolve
        hits = denial = 0
        zones: dict[str, tuple[int, int]] = {z: (0, n) for z, n in misses.items()}
        evictions = 0
        for p in store.partitions.values():
            hits += p.hits
            if p.kind == DENIAL:
                denial += p.hits
            zh, zm = zones.get(p.zone, (0, 0))
            zones[p.zone] = (zh + p.hits, zm)
            evictions += p.evictions
        ups: dict[str, tuple[int, int, int, float]] = {}
        for (to, outcome), n in res.upstream_requests.items():
            tries, fails, answered, secs = ups.get(to, (0, 0, 0, 0.0))
            ups[to] = (tries + n, fails + (n if outcome in NETWORK_FAILURES else 0), answered, secs)
        for (to, _rcode), h in res.upstream_duration.items():
            tries, fails, answered, secs = ups.get(to, (0, 0, 0, 0.0))
            ups[to] = (tries, fails, answered + h.n, secs + h.total)
        return Snapshot(
            t=self.now(), cpu=self.cpu(),
            queries=sum(server.queries.values()) + sum(server.queries6.values()),
            hits=hits, denial_hits=denial, misses=sum(misses.values()), zones=zones,
            duration=tuple(server.request_duration.counts), upstreams=ups, evictions=evictions,
        )

    # ---- read by /api/stats ------------------------------------------------------------------------

    def _window_start(self, cur: Snapshot) -> Snapshot:
        """The oldest snapshot within WINDOW of `cur` (the first one while the agent is younger)."""
        for snap in self.history:
            if cur.t - snap.t <= WINDOW + TICK / 2:
                return snap
        return self.history[-1]

    def snapshot(self) -> dict[str, Any]:
        """Everything the page shows, as plain JSON-able data (the /api/stats contract, schema 1)."""
        store, sv, res = self.store, self.meters.server, self.meters.resolve
        cur = self._snap()  # the totals: exactly what /metrics says right now
        # Rates come from whole ticks only (the last snapshot back to WINDOW before it): a window of a
        # few milliseconds right after start would turn one query into a rate of hundreds.
        end = self.history[-1]
        old = self._window_start(end)
        span = max(end.t - old.t, 1e-9)
        qps = (end.queries - old.queries) / span if end.t > old.t else 0.0
        lookups_w = (end.hits - old.hits) + (end.misses - old.misses)
        dur_w = [a - b for a, b in zip(end.duration, old.duration, strict=True)]

        entries = {"success": store.entries(SUCCESS), "denial": store.entries(DENIAL)}
        capacity = sum(p.capacity for p in store.partitions.values())
        zones = []
        for zone, (zh, zm) in sorted(cur.zones.items(), key=lambda kv: (kv[0] == ".", kv[0])):
            oh, om = old.zones.get(zone, (0, 0))
            eh, em = end.zones.get(zone, (0, 0))
            zones.append({
                "zone": zone, "hits": zh, "misses": zm, "hit_rate": _ratio(zh, zh + zm),
                "hit_rate_window": _ratio(eh - oh, (eh - oh) + (em - om)),
                "entries": sum(len(p.lru) for p in store.partitions.values() if p.zone == zone),
            })
        upstreams = []
        for to, group in res.upstream_servers.items():
            tries, fails, _answered, _secs = cur.upstreams.get(to, (0, 0, 0, 0.0))
            etries, _efails, eanswered, esecs = end.upstreams.get(to, (0, 0, 0, 0.0))
            otries, _ofails, oanswered, osecs = old.upstreams.get(to, (0, 0, 0, 0.0))
            errors = sum(n for (t, o), n in res.upstream_requests.items()
                         if t == to and o not in ("NOERROR", "NXDOMAIN"))
            upstreams.append({
                "to": to, "group": group, "healthy": res.upstream_healthy(to), "tries": tries,
                "errors": errors, "no_reply": fails,
                "tries_per_s": (etries - otries) / span if end.t > old.t else 0.0,
                "avg_ms": _ms(_ratio(esecs - osecs, eanswered - oanswered)),
            })

        ticks = list(self.history)
        pairs = list(itertools.pairwise(ticks))  # one (before, after) per completed tick
        return {
            "schema": 1,
            "node": self.node,
            "version": __version__,
            "time": self.wall(),
            "uptime_s": cur.t - self.started,
            "ready": res.ready,
            "process": {"rss_bytes": _rss_bytes(),
                        "cpu_percent": 100.0 * (end.cpu - old.cpu) / span if end.t > old.t else 0.0},
            "totals": {
                "queries": cur.queries,
                "udp": sv.queries["udp"] + sv.queries6["udp"],
                "tcp": sv.queries["tcp"] + sv.queries6["tcp"],
                "hits": cur.hits, "hits_success": cur.hits - cur.denial_hits, "hits_denial": cur.denial_hits,
                "misses": cur.misses, "hit_rate": _ratio(cur.hits, cur.hits + cur.misses),
                "responses": {RCODE_NAMES[i]: n for i, n in enumerate(sv.rcodes) if n},
                "coalesced": res.coalesced, "fallthrough": res.fallthrough,
                "dropped": sv.dropped + sum(sv.shed.values()), "dropped_busy": sv.shed["busy"],
                "dropped_late": sv.shed["late"],
                "spoofed": res.spoofed, "refused_busy": res.concurrency_rejects,
                "all_upstreams_failed": res.healthcheck_broken,
                "served_stale": sum(self.meters.cache.served_stale.values()),
                "prefetch": sum(self.meters.cache.prefetch.values()),
            },
            "window": {
                "seconds": span if end.t > old.t else 0.0,
                "qps": qps,
                "hit_rate": _ratio(end.hits - old.hits, lookups_w),
                "denial_share": _ratio(end.denial_hits - old.denial_hits, lookups_w),
                "p50_ms": _ms(quantile(0.5, dur_w)), "p90_ms": _ms(quantile(0.9, dur_w)),
                "p99_ms": _ms(quantile(0.99, dur_w)),
                "evictions_per_s": (end.evictions - old.evictions) / span if end.t > old.t else 0.0,
            },
            "series": {
                "t": [round(b.t - cur.t, 1) for _a, b in pairs],
                "qps": [round((b.queries - a.queries) / max(b.t - a.t, 1e-9), 2) for a, b in pairs],
                "hit_rate": [_ratio(b.hits - a.hits, (b.hits - a.hits) + (b.misses - a.misses)) for a, b in pairs],
                "p99_ms": [_ms(quantile(0.99, [y - x for x, y in zip(a.duration, b.duration, strict=True)]))
                           for a, b in pairs],
            },
            "cache": {
                "entries": entries["success"] + entries["denial"], **{f"entries_{k}": v for k, v in entries.items()},
                "capacity": capacity, "bytes": store.bytes, "max_bytes": store.max_bytes,
                "evictions": cur.evictions, "expired_reclaimed": store.expired_reclaimed,
            },
            "zones": zones,
            "upstreams": upstreams,
            "top": {
                "names": self._top(self.names, qps),
                "clients": self._top(self.clients, qps),
                "types": self._top(self.types, qps),
                "sample_every": self.every, "samples_lost": self.lost, "half_life_s": HALF_LIFE,
            },
        }

    @staticmethod
    def _top(sketch: TopK[str], qps: float) -> list[dict[str, Any]]:
        """The first TOP_SHOWN of a sketch: share of the (decayed) sampled traffic, and that share of qps."""
        if sketch.total <= 0:
            return []
        out = []
        for key, count in sketch.top(TOP_SHOWN):
            share = count / sketch.total
            if share < 0.001:  # faded away
                break
            out.append({"key": key, "share": share, "qps": share * qps})
        return out


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None or math.isnan(seconds) else seconds * 1000.0
