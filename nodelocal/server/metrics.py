"""The listeners' counters (queries in, responses out, TCP connections) and their series.

The UDP hot path binds `queries`/`queries6` and `rcodes` once per listener and bumps them with `+= 1`;
nothing here locks or looks anything up per query. Names and labels are CoreDNS's where the meaning is
the same (dashboards keep working), `nodelocal_*` otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from nodelocal.dns.wire import RCODE_NAMES
from nodelocal.observe.histogram import Histogram

SERVER_LABEL = "dns://:53"
LIMITED = (("acl", "refused"), ("acl", "dropped"), ("pending", "refused"), ("rate", "dropped"),
           ("rate", "truncated"))  # CoreDNS's `server` label for a server bound to every address on port 53


class ServerStats:
    """What the UDP and TCP listeners received and sent."""

    def __init__(self) -> None:
        self.queries = {"udp": 0, "tcp": 0}  # received on IPv4 listeners (CoreDNS family "1")
        self.queries6 = {"udp": 0, "tcp": 0}  # received on IPv6 listeners (family "2")
        self.rcodes = [0] * len(RCODE_NAMES)  # responses sent, by rcode (index = rcode)
        self.dropped = 0  # queries with an unreadable header or QR set: no reply at all
        # Queries dropped unanswered under overload, by reason: "busy" (the slow path was full: dropped
        # before any work) and "late" (older than the client's timeout: nobody waits for the answer).
        self.shed = {"busy": 0, "late": 0}
        self.pending = 0  # UDP queries on the slow path now, over every listener
        self.request_duration = Histogram()  # client queries, from receipt to reply (hits: sampled)
        self.tcp_connections = 0
        self.tcp_rejected = 0
        # Queries refused, dropped or truncated by client policy (server/clients.py), by (reason, action):
        # acl (outside the allowed ranges), pending (the client's cap on queries in flight), rate (RRL).
        self.limited = {k: 0 for k in LIMITED}
        self.client_sizes: Callable[[], dict[str, int]] = dict  # entries of per-client state, by kind
        self.acl_networks = 0  # networks in the access list (0: everyone is answered)

    def count_reply(self, reply: bytes | None) -> None:
        """One answer sent by the slow path (a reply), or one query dropped without reply (None)."""
        if reply is None:
            self.dropped += 1
        else:
            self.rcodes[reply[3] & 0xF] += 1


class ServerCollector(Collector):
    """coredns_dns_* and the listeners' nodelocal_* series."""

    def __init__(self, stats: ServerStats, server: str = SERVER_LABEL) -> None:
        self.stats = stats
        self.server = server

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily]:
        s, srv = self.stats, self.server
        # `zone` is fixed: one pipeline serves every zone (the cache_* series carry per-zone labels).
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
        dq = CounterMetricFamily("nodelocal_dropped_queries",
                                 "Client queries dropped without reply: malformed (unreadable header or QR set), "
                                 "busy (slow path full), late (older than the client timeout).", labels=["reason"])
        dq.add_metric(["malformed"], s.dropped)
        for reason, n in s.shed.items():
            dq.add_metric([reason], n)
        yield dq
        lim = CounterMetricFamily("nodelocal_client_limited",
                                  "Client queries refused, dropped or truncated by client policy, by reason (acl: "
                                  "outside the allowed ranges; pending: the client's queries in flight at its cap; "
                                  "rate: over the client's response rate) and action.", labels=["reason", "action"])
        for (reason, action), n in s.limited.items():
            lim.add_metric([reason, action], n)
        yield lim
        state = GaugeMetricFamily("nodelocal_client_state_entries",
                                  "Entries of per-client state (bounded): acl_verdicts, pending, rate.",
                                  labels=["kind"])
        for kind, n in s.client_sizes().items():
            state.add_metric([kind], n)
        yield state
        yield GaugeMetricFamily("nodelocal_acl_networks", "Networks whose clients are answered (0: everyone).",
                                value=s.acl_networks)
        yield GaugeMetricFamily("nodelocal_tcp_connections", "Open client TCP connections.",
                                value=s.tcp_connections)
        yield CounterMetricFamily("nodelocal_tcp_rejected", "Client TCP connections closed at the cap.",
                                  value=s.tcp_rejected)
