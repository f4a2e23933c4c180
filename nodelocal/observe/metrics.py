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

from nodelocal import __version__
from nodelocal.cache.store import KIND_NAMES

if TYPE_CHECKING:
    from nodelocal.cache.store import Store

RCODE_NAMES = (
    "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "YXDOMAIN", "YXRRSET",
    "NXRRSET", "NOTAUTH", "NOTZONE", "RCODE11", "RCODE12", "RCODE13", "RCODE14", "RCODE15", "BADVERS",
)

SERVER_LABEL = "dns://:53"  # CoreDNS's `server` label for a server bound to every address on port 53


def coredns_zone(zone: str) -> str:
    """A zone as CoreDNS labels it: fully qualified ('cluster.local.'; the root stays '.')."""
    return zone if zone == "." else zone + "."


# Upstream outcomes exported from the start for every server (others appear when they first happen).
UPSTREAM_OUTCOMES = ("NOERROR", "NXDOMAIN", "SERVFAIL", "REFUSED", "timeout", "error", "malformed")

# CoreDNS forward's max_fails: consecutive tries without a reply before a server counts as down.
MAX_FAILS = 2

# node-cache's errortype values of coredns_nodecache_setup_errors_total (nodelocal/netsetup/runner.py).
SETUP_ERRORTYPES = ("iptables", "iptables_lock", "interface_add", "interface_check", "configmap")

# CoreDNS's duration buckets (plugin/pkg/response: 0.00025 .. 8.192 s, doubling).
DURATION_BUCKETS: tuple[float, ...] = tuple(0.00025 * 2.0**i for i in range(16))


class Histogram:
    """A lock-free histogram for the slow path: cumulative at scrape time."""

    __slots__ = ("counts", "n", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(DURATION_BUCKETS) + 1)
        self.total = 0.0
        self.n = 0

    def observe(self, seconds: float, weight: int = 1) -> None:
        """Count one observation, or `weight` alike ones (a sampled hit stands for `weight` hits)."""
        self.counts[bisect.bisect_left(DURATION_BUCKETS, seconds)] += weight
        self.total += seconds * weight
        self.n += weight

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
        self.queries = {"udp": 0, "tcp": 0}  # received on IPv4 listeners (CoreDNS family "1")
        self.queries6 = {"udp": 0, "tcp": 0}  # received on IPv6 listeners (family "2")
        self.rcodes = [0] * len(RCODE_NAMES)  # responses sent, by rcode (index = rcode)
        self.dropped = 0  # queries with an unreadable header or QR set: no reply at all
        self.misses: dict[str, int] = {}  # per zone
        self.coalesced = 0
        self.fallthrough = 0
        self.concurrency_rejects = 0
        self.spoofed = 0
        self.upstream_requests: dict[tuple[str, str], int] = {}  # (to, rcode or error) -> count
        self.upstream_duration: dict[tuple[str, str], Histogram] = {}  # (to, rcode) -> answered tries
        self.upstream_servers: dict[str, str] = {}  # to -> group name, every configured server
        self.upstream_fails: dict[str, int] = {}  # to -> consecutive tries without any reply
        self.healthcheck_broken = 0  # queries for which every upstream try failed
        self.request_duration = Histogram()  # client queries, from receipt to reply (hits: sampled)
        self.prefetch: dict[str, int] = {}  # per zone; no prefetching yet, exported as 0
        self.served_stale: dict[str, int] = {}  # per zone; no serve-stale yet, exported as 0
        self.reloads = {"success": 0, "failure": 0}  # config reloads by result
        self.tcp_connections = 0
        self.tcp_rejected = 0
        self.ready = False  # an upstream has answered at least once
        self.listening = False
        # Network setup (nodelocal/netsetup): failures by node-cache's error type, reconcile rounds,
        # rounds that had to put something back, and each local IP's fail-open path.
        self.setup_errors = dict.fromkeys(SETUP_ERRORTYPES, 0)
        self.setup_reconciles = 0
        self.setup_repairs = {"interface": 0, "rules": 0}
        self.setup_failopen: dict[str, str] = {}  # local IP -> path (kube-proxy, rewrite, dnat-*, none)
        self.loops: dict[str, str] = {}  # upstream -> group, taken out for sending queries back to us (loopdetect)

    def upstream(self, to: str, outcome: str, seconds: float | None) -> None:
        """One upstream try: `outcome` is the reply's rcode name, or timeout/error/malformed (no reply)."""
        key = (to, outcome)
        self.upstream_requests[key] = self.upstream_requests.get(key, 0) + 1
        if seconds is None:
            self.upstream_fails[to] = self.upstream_fails.get(to, 0) + 1
        else:
            self.upstream_fails[to] = 0
            h = self.upstream_duration.get(key)
            if h is None:
                h = self.upstream_duration[key] = Histogram()
            h.observe(seconds)

    def upstream_healthy(self, to: str) -> bool:
        """CoreDNS forward's rule: any reply, whatever its rcode, is healthy; MAX_FAILS tries without one are not."""
        return self.upstream_fails.get(to, 0) < MAX_FAILS


def setup_families(s: Stats) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
    """Network setup's series (node-cache's error counter by its name, the rest nodelocal_setup_*)."""
    errs = CounterMetricFamily("coredns_nodecache_setup_errors", "Network setup failures by type.",
                               labels=["errortype"])
    for etype, n in s.setup_errors.items():
        errs.add_metric([etype], n)
    yield errs
    yield CounterMetricFamily("nodelocal_setup_reconciles", "Reconcile rounds of interface and rules.",
                              value=s.setup_reconciles)
    rep = CounterMetricFamily("nodelocal_setup_repairs", "Reconcile rounds that put something back.",
                              labels=["what"])
    for what, n in s.setup_repairs.items():
        rep.add_metric([what], n)
    yield rep
    fo = GaugeMetricFamily("nodelocal_setup_failopen",
                           "1 per local IP, labelled with where its DNS goes while the agent is down.",
                           labels=["localip", "path"])
    for ip, path in s.setup_failopen.items():
        fo.add_metric([ip, path], 1)
    yield fo


class AgentCollector(Collector):
    """Reads Stats and the cache at scrape time and yields the series the README lists."""

    def __init__(self, stats: Stats, store: Store) -> None:
        self.stats = stats
        self.store = store

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily]:
        s, store = self.stats, self.store
        parts = list(store.partitions.values())
        # CoreDNS labels: `server` and `zone` of the dns_* series are fixed (one server, one pipeline);
        # the cache_* series carry `zones` per configured zone, as node-local-dns's server blocks do.
        srv = SERVER_LABEL

        req = CounterMetricFamily("coredns_dns_requests", "Client queries received.",
                                  labels=["server", "zone", "view", "proto", "family", "type"])
        for family, queries in (("1", s.queries), ("2", s.queries6)):
            for proto, n in queries.items():
                req.add_metric([srv, ".", "", proto, family, "other"], n)
        yield req

        resp = CounterMetricFamily("coredns_dns_responses", "Responses sent, by rcode.",
                                   labels=["server", "zone", "view", "rcode", "plugin"])
        for code, n in enumerate(s.rcodes):
            if n or code <= 5:  # the common rcodes from the start, so a first SERVFAIL shows in rate()
                resp.add_metric([srv, ".", "", RCODE_NAMES[code], ""], n)
        yield resp

        dur = HistogramMetricFamily("coredns_dns_request_duration_seconds",
                                    "Time from receiving a client query to replying (UDP cache hits: sampled).",
                                    labels=["server", "zone", "view", "type"])
        dur.add_metric([srv, ".", "", "other"], s.request_duration.buckets(), s.request_duration.total)
        yield dur

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
        yield GaugeMetricFamily("nodelocal_cache_bytes", "Bytes held by the cache.", value=store.bytes)
        yield GaugeMetricFamily("nodelocal_cache_max_bytes", "Byte budget of the cache (cache.max_bytes).",
                                value=store.max_bytes)
        cap = GaugeMetricFamily("nodelocal_cache_capacity", "Entry cap per zone and type.", labels=["zone", "type"])
        for p in parts:
            cap.add_metric([p.zone, KIND_NAMES[p.kind]], p.capacity)
        yield cap
        yield CounterMetricFamily("nodelocal_cache_expired_reclaimed", "Expired entries reclaimed.",
                                  value=store.expired_reclaimed)

        pd = HistogramMetricFamily("coredns_proxy_request_duration_seconds",
                                   "Upstream round trips that got a reply.", labels=["proxy_name", "to", "rcode"])
        durations = {(to, "NOERROR"): Histogram() for to in s.upstream_servers}  # every server from the start
        durations.update(s.upstream_duration)
        for (to, rcode), hist in durations.items():
            pd.add_metric(["forward", to, rcode], hist.buckets(), hist.total)
        yield pd
        up = GaugeMetricFamily("nodelocal_upstream_healthy",
                               f"1 unless the server's last {MAX_FAILS} tries got no reply at all.",
                               labels=["group", "to"])
        for to, group in s.upstream_servers.items():
            up.add_metric([group, to], int(s.upstream_healthy(to)))
        yield up
        lp = GaugeMetricFamily("nodelocal_upstream_loop",
                               "1 per upstream taken out because it sends our queries back to us (a loop).",
                               labels=["group", "to"])
        for to, group in s.loops.items():
            lp.add_metric([group, to], 1)
        yield lp
        yield CounterMetricFamily("coredns_forward_healthcheck_broken",
                                  "Queries for which every upstream try failed (no usable reply from any).",
                                  value=s.healthcheck_broken)
        ur = CounterMetricFamily("nodelocal_upstream_requests", "Upstream tries by outcome (rcode or error).",
                                 labels=["to", "outcome"])
        tries = dict.fromkeys(((to, o) for to in s.upstream_servers for o in UPSTREAM_OUTCOMES), 0)
        tries.update(s.upstream_requests)  # the common outcomes from the start, so a first failure shows in rate()
        for (to, outcome), n in tries.items():
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
        yield from setup_families(s)
        rl = CounterMetricFamily("nodelocal_config_reloads", "Config reloads by result.", labels=["result"])
        for result, n in s.reloads.items():
            rl.add_metric([result], n)
        yield rl
        info = GaugeMetricFamily("nodelocal_build_info", "Always 1; the agent's version in a label.",
                                 labels=["version"])
        info.add_metric([__version__], 1)
        yield info
