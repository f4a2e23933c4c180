"""Counting and exposition: plain integers on the hot path, read by a collector at scrape time.

prometheus_client's own counters take a lock per inc() (DESIGN.md); on a ~7 µs hit path that shows,
so the agent counts into plain attributes and lists and the collector turns them into series.
Names follow CoreDNS where the meaning is the same (dashboards keep working), `nodelocal_*` otherwise.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector

from nodelocal.cache.store import KIND_NAMES

if TYPE_CHECKING:
    from nodelocal.cache.store import Store

RCODE_NAMES = (
    "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "YXDOMAIN", "YXRRSET",
    "NXRRSET", "NOTAUTH", "NOTZONE", "RCODE11", "RCODE12", "RCODE13", "RCODE14", "RCODE15", "BADVERS",
)

# CoreDNS's duration buckets (plugin/pkg/response: 0.00025 .. 8.192 s, doubling).
DURATION_BUCKETS = tuple(0.00025 * 2**i for i in range(16))


class Histogram:
    """A lock-free histogram for the slow path: cumulative at scrape time."""

    __slots__ = ("counts", "n", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(DURATION_BUCKETS) + 1)
        self.total = 0.0
        self.n = 0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(DURATION_BUCKETS, seconds)] += 1
        self.total += seconds
        self.n += 1

    def buckets(self) -> list[tuple[str, float]]:
        out, acc = [], 0
        for bound, c in zip(DURATION_BUCKETS, self.counts, strict=False):
            acc += c
            out.append((repr(bound), float(acc)))
        out.append(("+Inf", float(self.n)))
        return out


class Stats:
    """Every counter of the agent. Attributes are bumped with `+= 1`; nothing here locks."""

    def __init__(self) -> None:
        self.queries = {"udp": 0, "tcp": 0}
        self.rcodes = [0] * len(RCODE_NAMES)  # responses sent, by rcode (index = rcode)
        self.dropped = 0  # queries with an unreadable header or QR set: no reply at all
        self.misses: dict[str, int] = {}  # per zone
        self.coalesced = 0
        self.fallthrough = 0
        self.concurrency_rejects = 0
        self.spoofed = 0
        self.upstream_requests: dict[tuple[str, str], int] = {}  # (to, rcode or error) -> count
        self.upstream_duration: dict[str, Histogram] = {}  # to -> histogram of answered tries
        self.request_duration = Histogram()  # client queries that went upstream
        self.tcp_connections = 0
        self.tcp_rejected = 0
        self.ready = False  # an upstream has answered at least once
        self.listening = False

    def upstream(self, to: str, outcome: str, seconds: float | None) -> None:
        key = (to, outcome)
        self.upstream_requests[key] = self.upstream_requests.get(key, 0) + 1
        if seconds is not None:
            h = self.upstream_duration.get(to)
            if h is None:
                h = self.upstream_duration[to] = Histogram()
            h.observe(seconds)


class AgentCollector(Collector):
    """Reads Stats and the cache at scrape time and yields the series the README lists."""

    def __init__(self, stats: Stats, store: Store) -> None:
        self.stats = stats
        self.store = store

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily]:
        s, store = self.stats, self.store
        parts = list(store.partitions.values())
        hits = {k: sum(p.hits for p in parts if p.kind == i) for i, k in enumerate(KIND_NAMES)}
        misses = sum(s.misses.values())

        req = CounterMetricFamily("coredns_dns_requests", "Client queries received.",
                                  labels=["server", "zone", "proto", "family", "type"])
        for proto, n in s.queries.items():
            req.add_metric(["dns://:53", ".", proto, "1", "other"], n)
        yield req

        resp = CounterMetricFamily("coredns_dns_responses", "Responses sent, by rcode.",
                                   labels=["server", "zone", "rcode", "plugin"])
        for code, n in enumerate(s.rcodes):
            if n:
                resp.add_metric(["dns://:53", ".", RCODE_NAMES[code], ""], n)
        yield resp

        dur = HistogramMetricFamily("coredns_dns_request_duration_seconds",
                                    "Time to answer client queries that went upstream.",
                                    labels=["server", "zone", "type"])
        dur.add_metric(["dns://:53", ".", "other"], s.request_duration.buckets(), s.request_duration.total)
        yield dur

        h = CounterMetricFamily("coredns_cache_hits", "Cache hits.", labels=["server", "type", "zone", "view"])
        for kind, n in hits.items():
            h.add_metric(["dns://:53", kind, ".", ""], n)
        yield h
        m = CounterMetricFamily("coredns_cache_misses", "Cache misses.", labels=["server", "zone", "view"])
        m.add_metric(["dns://:53", ".", ""], misses)
        yield m
        r = CounterMetricFamily("coredns_cache_requests", "Cache lookups.", labels=["server", "zone", "view"])
        r.add_metric(["dns://:53", ".", ""], sum(hits.values()) + misses)
        yield r
        ent = GaugeMetricFamily("coredns_cache_entries", "Entries in the cache.",
                                labels=["server", "type", "zone", "view"])
        ev = CounterMetricFamily("coredns_cache_evictions", "Entries evicted to make room.",
                                 labels=["server", "type", "zone", "view"])
        for i, kind in enumerate(KIND_NAMES):
            ent.add_metric(["dns://:53", kind, ".", ""], sum(len(p.lru) for p in parts if p.kind == i))
            ev.add_metric(["dns://:53", kind, ".", ""], sum(p.evictions for p in parts if p.kind == i))
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
        yield GaugeMetricFamily("nodelocal_cache_bytes", "Bytes held by the cache.", value=store.bytes)
        yield CounterMetricFamily("nodelocal_cache_expired_reclaimed", "Expired entries reclaimed.",
                                  value=store.expired_reclaimed)

        pd = HistogramMetricFamily("coredns_proxy_request_duration_seconds",
                                   "Upstream round trips that got a reply.", labels=["proxy_name", "to"])
        for to, hist in s.upstream_duration.items():
            pd.add_metric(["forward", to], hist.buckets(), hist.total)
        yield pd
        ur = CounterMetricFamily("nodelocal_upstream_requests", "Upstream tries by outcome (rcode or error).",
                                 labels=["to", "outcome"])
        for (to, outcome), n in s.upstream_requests.items():
            ur.add_metric([to, outcome], n)
        yield ur
        yield CounterMetricFamily("coredns_forward_max_concurrent_rejects",
                                  "Queries refused because too many were in flight.",
                                  value=s.concurrency_rejects)
        yield CounterMetricFamily("nodelocal_coalesced_queries",
                                  "Client queries answered by joining an identical query in flight.",
                                  value=s.coalesced)
        yield CounterMetricFamily("nodelocal_fallthrough",
                                  "Queries passed from one upstream group to the next after a failure.",
                                  value=s.fallthrough)
        yield CounterMetricFamily("nodelocal_spoofed_replies_dropped",
                                  "Upstream replies dropped for a wrong ID, question or source.",
                                  value=s.spoofed)
        yield CounterMetricFamily("nodelocal_dropped_queries",
                                  "Client datagrams dropped without reply (unreadable header or QR set).",
                                  value=s.dropped)
        yield GaugeMetricFamily("nodelocal_tcp_connections", "Open client TCP connections.",
                                value=s.tcp_connections)
        yield CounterMetricFamily("nodelocal_tcp_rejected", "Client TCP connections closed at the cap.",
                                  value=s.tcp_rejected)
        yield GaugeMetricFamily("nodelocal_ready", "1 once an upstream has answered.", value=int(s.ready))
