"""The listeners' counters (queries in, responses out, TCP connections) and their series.

Requests and responses are counted per listener and per zone, and exported with CoreDNS's labels:
`server` is the listener as CoreDNS writes it (`dns://169.254.20.10:53`), `zone` the zone that took the
query (`dropped` for one refused, dropped or shed before any zone took it, as CoreDNS labels a query no
server block takes). Neither costs a lookup per query: each listener holds its ListenerStats, whose lists
are indexed by the zone number every cache partition carries (Partition.zid), so the UDP hot path bumps
`requests[part.zid]` and `rcodes[part.zid][rcode]` with `+= 1`. Names and labels are CoreDNS's where the
meaning is the same (dashboards keep working), `nodelocal_*` otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from nodelocal.cache.store import NO_ZONE
from nodelocal.config import Address, format_hostport
from nodelocal.dns.wire import RCODE_NAMES
from nodelocal.observe.histogram import Histogram

SERVER_LABEL = "dns://:53"  # CoreDNS's `server` label for a server bound to every address on port 53
LIMITED = (("acl", "refused"), ("acl", "dropped"), ("pending", "refused"), ("rate", "dropped"),
           ("rate", "truncated"))
NO_ZONE_ID = 0  # Store.zone_names[0] is NO_ZONE


def server_label(addr: Address | tuple[str, int, int, int]) -> str:
    """CoreDNS's `server` label for a listener bound to `addr` (a socket name): dns://IP:PORT, [IPv6]."""
    return "dns://" + format_hostport((str(addr[0]), int(addr[1])))


class ListenerStats:
    """What one listener (one bound address, one protocol) received and answered, by zone number."""

    __slots__ = ("durations", "family", "proto", "rcodes", "requests", "server")

    def __init__(self, server: str, proto: str, family: str, zones: int) -> None:
        self.server = server
        self.proto = proto
        self.family = family  # CoreDNS's: "1" IPv4, "2" IPv6
        self.requests: list[int] = []  # client queries, by zone number
        self.rcodes: list[list[int]] = []  # responses sent, by zone number, by rcode
        self.durations: list[Histogram] = []  # receipt to reply, by zone number (UDP hits: sampled)
        self.grow(zones)

    def grow(self, zones: int) -> None:
        """Room for `zones` zones (a reload added one: it gets its number before any query can use it)."""
        while len(self.requests) < zones:
            self.requests.append(0)
            self.rcodes.append([0] * len(RCODE_NAMES))
            self.durations.append(Histogram())


class ServerStats:
    """What the UDP and TCP listeners received and sent."""

    def __init__(self) -> None:
        # Every listener's counters, by (server label, proto, family); zone numbers name Store.zone_names' entries.
        self.listeners: dict[tuple[str, str, str], ListenerStats] = {}
        self.zone_names: list[str] = [NO_ZONE]
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

    def use_zones(self, zone_names: list[str]) -> None:
        """Number zones as the cache store does (the same list object: a zone it adds is seen here)."""
        self.zone_names = zone_names
        self.grow()

    def grow(self) -> None:
        """Give every listener room for every zone (the store calls it when it numbers a new zone)."""
        for ls in self.listeners.values():
            ls.grow(len(self.zone_names))

    def listener(self, server: str, proto: str, family: str) -> ListenerStats:
        """The counters of the listener `server` (a server_label) for `proto`, made on first use."""
        ls = self.listeners.get((server, proto, family))
        if ls is None:
            ls = self.listeners[(server, proto, family)] = ListenerStats(server, proto, family, len(self.zone_names))
        return ls

    def count_reply(self, ls: ListenerStats, zid: int, reply: bytes | None, seconds: float | None = None) -> None:
        """One query the slow path handled: its reply sent (rcode counted), or dropped without reply (None)."""
        if zid >= len(ls.requests):  # a zone numbered by a store these counters were not told of (tests)
            ls.grow(zid + 1)
        ls.requests[zid] += 1
        if reply is None:
            self.dropped += 1
            return
        ls.rcodes[zid][reply[3] & 0xF] += 1
        if seconds is not None:
            ls.durations[zid].observe(seconds)
            self.request_duration.observe(seconds)

    # Totals over every listener and zone (the live page, tests).

    def _requests(self, family: str) -> dict[str, int]:
        out = {"udp": 0, "tcp": 0}
        for ls in self.listeners.values():
            if ls.family == family:
                out[ls.proto] += sum(ls.requests)
        return out

    @property
    def queries(self) -> dict[str, int]:
        """Client queries received on IPv4 listeners, by protocol."""
        return self._requests("1")

    @property
    def queries6(self) -> dict[str, int]:
        """Client queries received on IPv6 listeners, by protocol."""
        return self._requests("2")

    @property
    def rcodes(self) -> list[int]:
        """Responses sent, by rcode (index = rcode)."""
        out = [0] * len(RCODE_NAMES)
        for ls in self.listeners.values():
            for by_rcode in ls.rcodes:
                for code, n in enumerate(by_rcode):
                    out[code] += n
        return out


class ServerCollector(Collector):
    """coredns_dns_* and the listeners' nodelocal_* series."""

    def __init__(self, stats: ServerStats, server: str = SERVER_LABEL) -> None:
        self.stats = stats
        self.server = server

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily]:
        s = self.stats
        names = s.zone_names
        listeners = [s.listeners[k] for k in sorted(s.listeners)]
        req = CounterMetricFamily("coredns_dns_requests", "Client queries received, by listener and zone.",
                                  labels=["server", "zone", "view", "proto", "family", "type"])
        resp = CounterMetricFamily("coredns_dns_responses", "Responses sent, by listener, zone and rcode.",
                                   labels=["server", "zone", "view", "rcode", "plugin"])
        dur = HistogramMetricFamily("coredns_dns_request_duration_seconds",
                                    "Time from receiving a client query to replying, by listener and zone (UDP "
                                    "cache hits: sampled).", labels=["server", "zone", "view", "type"])
        for ls in listeners:
            for zid, n in enumerate(ls.requests):
                zone = names[zid] if zid < len(names) else NO_ZONE
                req.add_metric([ls.server, zone, "", ls.proto, ls.family, "other"], n)
                for code, m in enumerate(ls.rcodes[zid]):
                    if m or code <= 5:  # the common rcodes from the start, so a first SERVFAIL shows in rate()
                        resp.add_metric([ls.server, zone, "", RCODE_NAMES[code], ""], m)
                h = ls.durations[zid]
                if h.n or zid:
                    dur.add_metric([ls.server, zone, "", "other"], h.buckets(), h.total)
        yield req
        yield resp
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
