"""The resolver's and forwarder's counters and series: coalescing, the concurrency bound, each upstream's
tries, round trips, retransmits and health, replies dropped as spoofed, upstreams taken out as loops."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from nodelocal.observe.histogram import Histogram

# Upstream outcomes exported from the start for every server (others appear when they first happen).
UPSTREAM_OUTCOMES = ("NOERROR", "NXDOMAIN", "SERVFAIL", "REFUSED", "timeout", "error", "malformed")

# CoreDNS forward's max_fails: consecutive tries without a reply before a server counts as down (the
# default of UpstreamGroup.max_fails).
MAX_FAILS = 2
HEALTH_STATES = ("down", "up")


class ResolveStats:
    """Counters of the slow path, from the in-flight table to each upstream try."""

    def __init__(self) -> None:
        self.coalesced = 0
        self.minimal_any = 0  # ANY queries over UDP answered with the RFC 8482 HINFO
        self.fallthrough = 0
        self.concurrency_rejects = 0
        self.spoofed = 0
        # to -> replies dropped only because the name's case differed from the randomised case we sent (0x20)
        self.case_mismatch: dict[str, int] = {}
        self.upstream_requests: dict[tuple[str, str], int] = {}  # (to, rcode or error) -> count
        self.upstream_duration: dict[tuple[str, str], Histogram] = {}  # (to, rcode) -> answered tries
        self.upstream_servers: dict[str, str] = {}  # to -> group name, every configured server
        self.upstream_fails: dict[str, int] = {}  # to -> consecutive tries without any reply
        self.upstream_down: set[str] = set()  # servers the forwarder skips (forward.Server's state, mirrored)
        self.upstream_transports: dict[str, str] = {}  # to -> its group's transport
        self.health_changes: dict[tuple[str, str, str], int] = {}  # (group, to, down|up) -> count
        self.retransmits: dict[tuple[str, str], int] = {}  # (to, udp|tcp) -> queries sent again within a try
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
        """Not marked down by the forwarder (its group's max_fails tries in a row got no reply at all; any
        reply, whatever its rcode, brings it back: CoreDNS forward's rule)."""
        return to not in self.upstream_down

    def health_change(self, group: str, to: str, state: str) -> None:
        key = (group, to, state)
        self.health_changes[key] = self.health_changes.get(key, 0) + 1

    def retransmit(self, to: str, transport: str) -> None:
        key = (to, transport)
        self.retransmits[key] = self.retransmits.get(key, 0) + 1


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
                               "0 while the server is marked down (its group's max_fails tries in a row got no "
                               "reply) and skipped for another server of its group; 1 otherwise.",
                               labels=["group", "to"])
        for to, group in s.upstream_servers.items():
            up.add_metric([group, to], int(s.upstream_healthy(to)))
        yield up
        hc = CounterMetricFamily("nodelocal_upstream_health_changes",
                                 "Servers marked down (max_fails tries without a reply) or up again (a reply).",
                                 labels=["group", "to", "state"])
        changes = dict.fromkeys(((g, to, st) for to, g in s.upstream_servers.items() for st in HEALTH_STATES), 0)
        changes.update(s.health_changes)
        for (group, to, state), n in changes.items():
            hc.add_metric([group, to, state], n)
        yield hc
        rt = CounterMetricFamily("nodelocal_upstream_retransmits",
                                 "Queries sent again within one try: over UDP after udp_retransmit seconds of "
                                 "silence, over TCP on a new connection after theirs was closed, reset or stalled.",
                                 labels=["to", "transport"])
        resent = {(to, s.upstream_transports.get(to, "udp")): 0 for to in s.upstream_servers}
        resent.update(s.retransmits)
        for (to, transport), n in resent.items():
            rt.add_metric([to, transport], n)
        yield rt
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
        yield CounterMetricFamily("nodelocal_minimal_any",
                                  "ANY queries over UDP answered with a synthesized HINFO (RFC 8482), not forwarded.",
                                  value=s.minimal_any)
        yield CounterMetricFamily("nodelocal_coalesced_queries",
                                  "Client queries answered by joining an identical query in flight.",
                                  value=s.coalesced)
        yield CounterMetricFamily("nodelocal_fallthrough",
                                  "Queries passed from one upstream group to the next after a failure.",
                                  value=s.fallthrough)
        yield CounterMetricFamily("nodelocal_spoofed_replies_dropped",
                                  "Upstream replies dropped for a wrong ID, question or source.",
                                  value=s.spoofed)
        cm = CounterMetricFamily("nodelocal_upstream_case_mismatches",
                                 "Upstream replies dropped (and counted as spoofed) only because the question's "
                                 "case differed from the randomised case sent (0x20): many from one server "
                                 "mean it does not preserve case (randomize_case: false for its group).",
                                 labels=["to"])
        for to, n in sorted(s.case_mismatch.items()):
            cm.add_metric([to], n)
        yield cm
        yield GaugeMetricFamily("nodelocal_ready", "1 once an upstream has answered.", value=int(s.ready))
