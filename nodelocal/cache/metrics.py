"""The cache's counters and series: hits and entries come from the store's partitions themselves (the
hot path bumps them there), misses per zone from the resolver; CoreDNS's cache_* names, plus
nodelocal_cache_* for what CoreDNS does not export (bytes, caps, per-zone figures)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from nodelocal.cache.store import KIND_NAMES, Store


def coredns_zone(zone: str) -> str:
    """A zone as CoreDNS labels it: fully qualified ('cluster.local.'; the root stays '.')."""
    return zone if zone == "." else zone + "."


class CacheStats:
    """Per-zone counters the store cannot keep itself (a miss has no entry to count on)."""

    def __init__(self) -> None:
        self.misses: dict[str, int] = {}  # per zone; every configured zone has a key
        self.prefetch: dict[str, int] = {}  # per zone; no prefetching yet, exported as 0
        self.served_stale: dict[str, int] = {}  # per zone; no serve-stale yet, exported as 0


class CacheCollector(Collector):
    """Reads the store and CacheStats at scrape time."""

    def __init__(self, stats: CacheStats, store: Store, server: str) -> None:
        self.stats = stats
        self.store = store
        self.server = server  # CoreDNS's `server` label (server/metrics.py SERVER_LABEL)

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        s, store, srv = self.stats, self.store, self.server
        parts = list(store.partitions.values())
        # The cache_* series carry `zones` per configured zone, as node-local-dns's server blocks do.
        h = CounterMetricFamily("coredns_cache_hits", "Cache hits.", labels=["server", "type", "zones", "view"])
        ent = GaugeMetricFamily("coredns_cache_entries", "Entries in the cache.",
                                labels=["server", "type", "zones", "view"])
        ev = CounterMetricFamily("coredns_cache_evictions", "Entries evicted to make room.",
                                 labels=["server", "type", "zones", "view"])
        zone_hits: dict[str, int] = {}
        for p in parts:
            labels = [srv, KIND_NAMES[p.kind], coredns_zone(p.zone), ""]
            h.add_metric(labels, p.hits)
            ent.add_metric(labels, len(p.lru))
            ev.add_metric(labels, p.evictions)
            zone_hits[p.zone] = zone_hits.get(p.zone, 0) + p.hits
        yield h
        m = CounterMetricFamily("coredns_cache_misses", "Cache misses.", labels=["server", "zones", "view"])
        r = CounterMetricFamily("coredns_cache_requests", "Cache lookups.", labels=["server", "zones", "view"])
        pf = CounterMetricFamily("coredns_cache_prefetch", "Entries refreshed before they expired.",
                                 labels=["server", "zones", "view"])
        st = CounterMetricFamily("coredns_cache_served_stale", "Answers served from expired entries.",
                                 labels=["server", "zones", "view"])
        for zone, n in s.misses.items():
            labels = [srv, coredns_zone(zone), ""]
            m.add_metric(labels, n)
            r.add_metric(labels, zone_hits.get(zone, 0) + n)
            pf.add_metric(labels, s.prefetch.get(zone, 0))
            st.add_metric(labels, s.served_stale.get(zone, 0))
        yield m
        yield r
        yield pf
        yield st
        yield ent
        yield ev

        zh = CounterMetricFamily("nodelocal_cache_zone_hits", "Cache hits per zone.", labels=["zone", "type"])
        for p in parts:
            zh.add_metric([p.zone, KIND_NAMES[p.kind]], p.hits)
        yield zh
        zm = CounterMetricFamily("nodelocal_cache_zone_misses", "Cache misses per zone.", labels=["zone"])
        for zone, n in s.misses.items():
            zm.add_metric([zone], n)
        yield zm
        yield GaugeMetricFamily("nodelocal_cache_bytes", "Bytes held by the cache: entries at what they really "
                                "cost, prefetch items and the reply memos.", value=store.bytes + store.memo_bytes)
        yield GaugeMetricFamily("nodelocal_cache_memo_bytes", "Bytes held by the UDP listeners' reply memos "
                                "(part of nodelocal_cache_bytes).", value=store.memo_bytes)
        yield GaugeMetricFamily("nodelocal_memory_limit_bytes", "Resident memory the agent sheds under "
                                "(cache.memory_limit or the cgroup's limit); 0: none.", value=store.memory_limit)
        shed = CounterMetricFamily("nodelocal_memory_shed", "Memory shedding: evict = rounds that halved the "
                                   "cache near the memory limit; refuse = misses refused near it.",
                                   labels=["action"])
        for action, n in store.shed.items():
            shed.add_metric([action], n)
        yield shed
        yield GaugeMetricFamily("nodelocal_cache_max_bytes", "Byte budget of the cache (cache.max_bytes).",
                                value=store.max_bytes)
        cap = GaugeMetricFamily("nodelocal_cache_capacity", "Entry cap per zone and type.", labels=["zone", "type"])
        for p in parts:
            cap.add_metric([p.zone, KIND_NAMES[p.kind]], p.capacity)
        yield cap
        yield CounterMetricFamily("nodelocal_cache_expired_reclaimed", "Expired entries reclaimed.",
                                  value=store.expired_reclaimed)
