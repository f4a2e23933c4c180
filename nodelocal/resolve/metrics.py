"""The resolver's and forwarder's counters and series: coalescing, the concurrency bound, each upstream's
tries, round trips and health, replies dropped as spoofed, upstreams taken out as loops."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from nodelocal.observe.histogram import Histogram

# Upstream outcomes exported from the start for every server (others appear when they first happen).
UPSTREAM_OUTCOMES = ("NOERROR", "NXDOMAIN", "SERVFAIL", "REFUSED", "timeout", "error", "malformed")

# CoreDNS forward's max_fails: consecutive tries without a reply before a server counts as down.
MAX_FAILS = 2


class ResolveStats:
    """Counters of the slow path, from the in-flight table to each upstream try."""

    def __init__(self) -> None:
        self.coalesced = 0
        self.fallthrough = 0
        self.concurrency_rejects = 0
        self.spoofed = 0
        self.upstream_requests: dict[tuple[str, str], int] = {}  # (to, rcode or error) -> count
        self.upstream_duration: dict[tuple[str, str], Histogram] = {}  # (to, rcode) -> answered tries
        self.upstream_servers: dict[str, str] = {}  # to -> group name, every configured server
        self.upstream_fails: dict[str, int] = {}  # to -> consecutive tries without any reply
        self.healthcheck_broken = 0  # queries for which every upstream try failed
        self.loops: dict[str, str] = {}  # upstream -> group, taken out for sending queries back to us (loop.py)
        self.ready = False  # an upstream has answered at least once

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


class ResolveCollector(Collector):
    """coredns_proxy_*/coredns_forward_* and the resolver's nodelocal_* series."""

    def __init__(self, stats: ResolveStats) -> None:
        self.stats = stats

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily]:
        s = self.stats
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
        yield GaugeMetricFamily("nodelocal_ready", "1 once an upstream has answered.", value=int(s.ready))
