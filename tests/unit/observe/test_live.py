"""observe/live.py and the UDP hot path's sampling: what the live page and `nodelocal stats` are built from."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import dns.flags
import dns.message
import dns.rrset
import pytest

from nodelocal.cache.policy import TTLPolicy, entry_for
from nodelocal.cache.store import SUCCESS, Store
from nodelocal.config import load
from nodelocal.dns.names import to_text as name_text
from nodelocal.observe import live as live_mod
from nodelocal.observe.histogram import DURATION_BUCKETS
from nodelocal.observe.live import Live, quantile, split_question, type_text
from nodelocal.observe.meters import Meters
from nodelocal.resolve.resolver import Resolver
from nodelocal.server.udp import UDPServer
from tests.fakes import FakeTransport


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class Rig:
    """A UDPServer with a Live, over a store holding answers for `cached` names."""

    def __init__(self, cached: list[str], target: int = 500) -> None:
        self.clock = Clock()
        self.meters = Meters()
        self.stats = self.meters.server
        self.store = Store(1 << 24, now=self.clock)
        cfg = load(None, {}, env={}, resolv_conf="/nonexistent")
        self.resolver = Resolver(cfg, self.store, self.meters.cache, self.meters.resolve, now=self.clock)
        self.live = Live(self.meters, self.store, node="node-a", target=target, now=self.clock,
                         wall=lambda: 1.7e9, cpu=lambda: 0.0)
        self.server = UDPServer(self.resolver, self.store, self.stats, 1232, now=self.clock, live=self.live)
        self.transport = FakeTransport()
        self.server.connection_made(self.transport)  # type: ignore[arg-type]
        part = self.store.partition(".", SUCCESS, 1000)
        for name in cached:
            q = dns.message.make_query(name, "A")
            r = dns.message.make_response(q)
            r.flags |= dns.flags.RA
            r.answer.append(dns.rrset.from_text(q.question[0].name, 300, "IN", "A", "192.0.2.1"))
            wire = q.to_wire()
            e, ok = entry_for(wire[12:], r.to_wire(), False, self.clock.t, TTLPolicy(0, 3600))
            assert ok
            self.store.put(e, part)

    def send(self, name: str, client: str = "10.0.0.1", rdtype: str = "A") -> None:
        self.server.datagram_received(dns.message.make_query(name, rdtype).to_wire(), (client, 5353))


def drive(rig: Rig, fn: Any) -> None:
    """Run fn inside a loop (misses start tasks), then let the tasks finish."""

    async def main() -> None:
        fn()
        while rig.server.tasks:
            await asyncio.sleep(0)
            await asyncio.gather(*rig.server.tasks, return_exceptions=True)

    asyncio.run(main())


# --------------------------------------------------------------------------------------------------
# helpers


def test_name_text_and_split_question() -> None:
    q = dns.message.make_query("WWW.Example.COM", "AAAA").to_wire()
    name, qtype = split_question(q[12:]) or (b"", 0)
    assert name_text(name) == "www.example.com" and qtype == 28 and type_text(qtype) == "AAAA"
    assert name_text(b"\x00") == "."
    assert name_text(b"\x03a.b\x01\\\x02\x00\xff\x00") == "a\\.b.\\\\.\\000\\255"
    assert split_question(b"\xc0\x0c\x00\x01\x00\x01") is None  # a pointer is not a query's name
    assert split_question(b"\x03abc") is None  # cut short
    assert type_text(65280) == "TYPE65280" and type_text(-1) == "(malformed)"


def test_quantile_interpolates_like_histogram_quantile() -> None:
    counts = [0] * (len(DURATION_BUCKETS) + 1)
    assert quantile(0.5, counts) is None
    counts[0] = 10  # all ten in (0, 0.25 ms]
    assert quantile(0.5, counts) == pytest.approx(0.000125)
    counts[2] = 10  # ten more in (0.5 ms, 1 ms]
    assert quantile(0.75, counts) == pytest.approx(0.00075)
    counts[-1] = 100  # most in +Inf: the highest finite bound, as Prometheus
    assert quantile(0.99, counts) == DURATION_BUCKETS[-1]


# --------------------------------------------------------------------------------------------------
# sampling on the hot path


def test_every_datagram_counted_once_and_sampled_at_low_rate() -> None:
    rig = Rig(["a.example", "b.example"])
    assert rig.live.every == 1 and rig.server.countdown == 1

    def go() -> None:
        for i in range(10):
            rig.send("a.example", client=f"10.0.0.{i % 2}")
        rig.send("b.example")
        rig.send("miss.example")

    drive(rig, go)
    assert rig.stats.queries["udp"] == 12
    assert len(rig.transport.sent) == 11 + 1  # 11 hits inline, the miss answered by its task (SERVFAIL)
    assert len(rig.live.ring) == 12
    timed = [s for s in rig.live.ring if s[3] is not None]
    assert len(timed) == 11  # the hits; the miss is timed by the resolver
    rig.clock.t += 1
    n_before = rig.stats.request_duration.n
    rig.live.tick()
    assert rig.live.ring == []
    assert rig.stats.request_duration.n == n_before + 11
    top = dict(rig.live.names.top(10))
    assert top == {"a.example": 10.0, "b.example": 1.0, "miss.example": 1.0}
    assert dict(rig.live.clients.top(10)) == {"10.0.0.1": 7.0, "10.0.0.0": 5.0}
    assert dict(rig.live.types.top(10)) == {"A": 12.0}


def test_sampling_adapts_to_the_rate_and_weights_the_samples() -> None:
    rig = Rig(["a.example"], target=10)
    rig.server.requests[0] += 5000  # as if 5000 queries came in during the last second
    rig.clock.t += 1
    rig.live.tick()
    assert rig.live.every == 500
    assert rig.server.countdown <= 500
    rig.server.countdown = 3
    for _ in range(3):
        rig.send("a.example")
    assert len(rig.live.ring) == 1 and rig.live.ring[0][2] == 500  # one sample standing for 500
    assert rig.server.countdown == 500
    for _ in range(6):  # the rate fell: once it is out of the last five seconds, every datagram again
        rig.clock.t += 1
        rig.live.tick()
    assert rig.live.every == 1 and rig.server.countdown == 1
    assert rig.stats.request_duration.n == 500


def test_a_burst_backs_off_before_the_next_tick() -> None:
    rig = Rig(["a.example"], target=100)
    for _ in range(20_000):  # from idle to a burst: every datagram sampled at first
        rig.send("a.example")
    ring = rig.live.ring
    assert rig.live.every >= 64 and len(ring) < 1000
    assert sum(w for _q, _c, w, _s in ring) == pytest.approx(20_000, abs=rig.live.every)
    assert rig.live.lost == 0


def test_ipv6_listeners_count_as_family_2() -> None:
    from prometheus_client import generate_latest

    rig = Rig(["a.example"])
    v6 = UDPServer(rig.resolver, rig.store, rig.stats, 1232, now=rig.clock, ipv6=True)
    v6.connection_made(rig.transport)  # type: ignore[arg-type]
    v6.datagram_received(dns.message.make_query("a.example", "A").to_wire(), ("fd00::1", 5353, 0, 0))
    rig.send("a.example")
    assert rig.stats.queries6["udp"] == 1 and rig.stats.queries["udp"] == 1
    reg = rig.meters.registry(rig.store, process=False)
    text = generate_latest(reg).decode()
    assert 'family="2",proto="udp",server="dns://:53",type="other",view="",zone="."} 1.0' in text
    assert 'family="1",proto="udp",server="dns://:53",type="other",view="",zone="."} 1.0' in text


def test_ring_is_bounded() -> None:
    rig = Rig([])
    for _ in range(live_mod.RING_MAX + 10):
        rig.live.record(b"\x00" * 40, "10.0.0.1", 2, None)
    assert len(rig.live.ring) == live_mod.RING_MAX and rig.live.lost == 20
    rig.live.record(b"\x00" * 5000, "10.0.0.1", 1, None)  # a sample keeps no more than a question
    rig.live.ring.clear()
    rig.live.record(b"\x00" * 5000, "10.0.0.1", 1, None)
    assert len(rig.live.ring[0][0]) == live_mod.QUESTION_MAX - 12


def test_without_live_nothing_is_sampled() -> None:
    rig = Rig(["a.example"])
    server = UDPServer(rig.resolver, rig.store, rig.stats, 1232, now=rig.clock)
    server.connection_made(rig.transport)  # type: ignore[arg-type]
    server.datagram_received(dns.message.make_query("a.example", "A").to_wire(), ("10.0.0.1", 1))
    assert rig.transport.sent and rig.live.ring == []


# --------------------------------------------------------------------------------------------------
# the /api/stats document


def test_snapshot_totals_match_the_counters_and_serialise() -> None:
    rig = Rig(["a.example", "b.example"])

    def go() -> None:
        for _ in range(6):
            rig.send("a.example")
        rig.send("b.example", client="10.9.9.9", rdtype="A")
        rig.send("nx.example")

    drive(rig, go)
    rig.clock.t += 1
    rig.live.tick()
    snap = rig.live.snapshot()
    json.dumps(snap, allow_nan=False)
    t = snap["totals"]
    assert t["queries"] == t["udp"] == 8 and t["tcp"] == 0
    assert t["hits"] == t["hits_success"] == 7 and t["hits_denial"] == 0
    assert t["misses"] == 1 and t["hit_rate"] == pytest.approx(7 / 8)
    assert t["responses"] == {"NOERROR": 7, "SERVFAIL": 1}
    assert snap["node"] == "node-a" and snap["schema"] == 1
    assert snap["window"]["qps"] == pytest.approx(8.0)
    assert snap["window"]["hit_rate"] == pytest.approx(7 / 8)
    assert snap["series"]["qps"] == [8.0] and snap["series"]["hit_rate"] == [pytest.approx(7 / 8)]
    assert snap["cache"]["entries"] == 2
    assert snap["top"]["names"][0]["key"] == "a.example"
    assert snap["top"]["names"][0]["share"] == pytest.approx(6 / 8)
    assert snap["top"]["names"][0]["qps"] == pytest.approx(6.0)
    dot = next(z for z in snap["zones"] if z["zone"] == ".")
    assert dot["hits"] == 7 and dot["misses"] == 1


def test_window_covers_the_last_minute_only() -> None:
    rig = Rig(["a.example"])
    for _ in range(10):
        rig.send("a.example")
    for _ in range(120):  # two quiet minutes
        rig.clock.t += 1
        rig.live.tick()
    snap = rig.live.snapshot()
    assert snap["window"]["qps"] == 0.0 and snap["window"]["hit_rate"] is None
    assert snap["totals"]["hits"] == 10
    assert len(snap["series"]["qps"]) == 120 and snap["series"]["qps"][0] == 10.0


def test_history_is_bounded() -> None:
    rig = Rig([])
    for _ in range(live_mod.HISTORY + 50):
        rig.clock.t += 1
        rig.live.tick()
    assert len(rig.live.history) == live_mod.HISTORY
    assert len(rig.live.snapshot()["series"]["t"]) == live_mod.HISTORY - 1
