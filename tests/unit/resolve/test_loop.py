"""nodelocal.resolve.loop: the guard that recognises our own probes, static loops, and probe() on loopback."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable, Iterator
from typing import Any

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import pytest

from nodelocal.config import Config, load
from nodelocal.dns import wire
from nodelocal.resolve import loop as loopmod
from nodelocal.resolve.loop import LoopGuard, explain, own_addresses, probe, static_loops, without
from nodelocal.resolve.metrics import ResolveStats
from tests.fakedns import FakeDNS

TO, GROUP = "10.0.0.53:53", "host"


def config(**over: Any) -> Config:
    return load(None, over, env={}, resolv_conf="/nonexistent")


def probe_query(name: str, rdtype: str = "HINFO", qid: int = 4242, rdclass: str = "IN") -> bytes:
    return dns.message.make_query(name, rdtype, rdclass).to_wire()


def guard_with(name: str) -> LoopGuard:
    g = LoopGuard()
    g.probes[g.question(name)] = (TO, GROUP)
    return g


# --------------------------------------------------------------------------------------------------
# LoopGuard


def test_question_is_the_lowercased_wire_name_hinfo_in() -> None:
    owner = dns.name.from_text("AbC.Example.TEST").to_wire()
    assert owner is not None
    want = owner.lower() + struct.pack(">HH", dns.rdatatype.HINFO, dns.rdataclass.IN)
    assert LoopGuard().question("AbC.Example.TEST") == want
    assert LoopGuard().question("abc.example.test.") == want


def test_check_refuses_a_returning_probe() -> None:
    g = guard_with("1a2b.3c4d.cluster.local")
    q = probe_query("1a2b.3c4d.cluster.local.")
    out = g.check(q)
    assert out is not None
    r = dns.message.from_wire(out)
    assert r.rcode() == dns.rcode.REFUSED
    assert r.id == dns.message.from_wire(q).id
    assert r.flags & dns.flags.QR
    assert r.question[0].name == dns.name.from_text("1a2b.3c4d.cluster.local.")
    assert r.question[0].rdtype == dns.rdatatype.HINFO
    assert g.found == {TO: GROUP}


def test_check_matches_the_probe_in_any_case() -> None:
    g = guard_with("1a2b.3c4d.cluster.local")
    out = g.check(probe_query("1A2B.3c4D.Cluster.LOCAL."))
    assert out is not None and dns.message.from_wire(out).rcode() == dns.rcode.REFUSED
    assert g.found == {TO: GROUP}


def test_a_loop_is_recorded_and_reported_once() -> None:
    g = guard_with("1a2b.3c4d.cluster.local")
    told: list[tuple[str, str]] = []
    g.on_loop = lambda to, group: told.append((to, group))
    for _ in range(3):
        assert g.check(probe_query("1a2b.3c4d.cluster.local.")) is not None  # refused every time
    assert told == [(TO, GROUP)]
    assert g.found == {TO: GROUP}


def test_a_loop_is_recorded_without_a_listener() -> None:
    g = guard_with("x.y")
    assert g.on_loop is None
    assert g.check(probe_query("x.y.")) is not None
    assert g.found == {TO: GROUP}


@pytest.mark.parametrize(("name", "rdtype", "rdclass"), [
    ("other.cluster.local.", "HINFO", "IN"),  # another name
    ("1a2b.3c4d.cluster.local.", "A", "IN"),  # the probe's name, another type
    ("1a2b.3c4d.cluster.local.", "HINFO", "CH"),  # another class
    ("3c4d.cluster.local.", "HINFO", "IN"),  # a parent of the probe name
])
def test_check_ignores_other_queries(name: str, rdtype: str, rdclass: str) -> None:
    g = guard_with("1a2b.3c4d.cluster.local")
    told: list[tuple[str, str]] = []
    g.on_loop = lambda to, group: told.append((to, group))
    assert g.check(probe_query(name, rdtype, rdclass=rdclass)) is None
    assert g.found == {} and told == []


@pytest.mark.parametrize("data", [
    b"",
    b"\x12\x34",
    b"\x00" * 11,
    b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00",  # a header, then nothing
    b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x01x\x01y",  # the name runs out
    b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x01x\x01y\x00\x00\x0d",  # type without class
    b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xc0\x0c\x00\x0d\x00\x01",  # compressed question
])
def test_check_ignores_malformed_bytes(data: bytes) -> None:
    g = guard_with("x.y")
    assert g.check(data) is None
    assert g.found == {}


def test_check_with_no_probes_out() -> None:
    assert LoopGuard().check(probe_query("x.y.")) is None


# --------------------------------------------------------------------------------------------------
# Static loops, without(), explain()


def test_own_addresses_are_every_localip_on_the_listen_port() -> None:
    cfg = config(listen={"localip": ["169.254.20.10", "10.96.0.10", "fd00::10"], "port": 5353})
    assert own_addresses(cfg) == {("169.254.20.10", 5353), ("10.96.0.10", 5353), ("fd00::10", 5353)}


def test_static_loops_are_upstreams_at_our_own_address() -> None:
    cfg = config(
        listen={"localip": ["169.254.20.10", "10.96.0.10", "fd00::10"]},
        upstreams={
            "cluster": {"servers": ["10.96.0.10"]},  # port 53 implied: our own listener
            "host": {"servers": ["169.254.20.10:5353", "192.0.2.53", "[fd00::10]:53"]},  # another port: fine
        },
    )
    assert static_loops(cfg, own_addresses(cfg)) == {"10.96.0.10:53": "cluster", "[fd00::10]:53": "host"}


def test_static_loops_none_when_no_upstream_is_ours() -> None:
    cfg = config(listen={"localip": ["169.254.20.10"]}, upstreams={"cluster": {"servers": ["10.96.0.10"]},
                                                                    "host": {"servers": ["192.0.2.53"]}})
    assert static_loops(cfg, own_addresses(cfg)) == {}
    assert static_loops(cfg, [("192.0.2.53", 53)]) == {"192.0.2.53:53": "host"}  # `own` is what counts


def test_static_loops_recognise_an_ipv6_address_however_it_is_written() -> None:
    cfg = config(listen={"localip": ["FD00::10"]}, upstreams={"cluster": {"servers": ["10.96.0.10"]},
                                                              "host": {"servers": ["[fd00:0::10]:53"]}})
    assert static_loops(cfg, own_addresses(cfg)) == {"[fd00::10]:53": "host"}  # labelled in canonical form


def test_without_takes_the_servers_out_of_every_group() -> None:
    cfg = config(upstreams={
        "cluster": {"servers": ["10.96.0.10", "10.96.0.11:53"]},
        "host": {"servers": ["10.96.0.10:53", "192.0.2.53"]},
        "other": {"servers": ["198.51.100.1"]},
    })
    out = without(cfg, ["10.96.0.10:53"])  # written with and without the port: the same server
    assert out.upstreams["cluster"].servers == ("10.96.0.11:53",)
    assert out.upstreams["host"].servers == ("192.0.2.53",)
    assert out.upstreams["other"] is cfg.upstreams["other"]  # untouched groups are left as they are
    assert out.upstreams["cluster"].transport == cfg.upstreams["cluster"].transport
    assert cfg.upstreams["cluster"].servers == ("10.96.0.10", "10.96.0.11:53")  # the original is unchanged
    assert out.zones == cfg.zones and out.listen == cfg.listen


def test_without_nothing_or_unknown_servers_changes_nothing() -> None:
    cfg = config(upstreams={"cluster": {"servers": ["10.96.0.10"]}, "host": {"servers": ["192.0.2.53"]}})
    assert without(cfg, []) == cfg
    assert without(cfg, ["10.96.0.10:5353"]) == cfg


def test_explain_names_the_server_and_group() -> None:
    text = explain("192.0.2.53:53", "host")
    assert "192.0.2.53:53" in text and "host" in text and "loop" in text


# --------------------------------------------------------------------------------------------------
# probe() against loopback upstreams


class Looping(asyncio.DatagramProtocol):
    """An upstream that forwards to the agent: our listener's guard sees the query and answers it."""

    def __init__(self, guard: LoopGuard) -> None:
        self.guard = guard
        self.names: list[str] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t: Any = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.names.append(str(dns.message.from_wire(data).question[0].name))
        refused = self.guard.check(data)  # what the agent's listener does with it
        if refused is not None:
            self.t.sendto(refused, addr)


class LoopingTCP(asyncio.Protocol):
    def __init__(self, guard: LoopGuard, names: list[str]) -> None:
        self.guard = guard
        self.names = names
        self.buf = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t: Any = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        for msg in wire.pop_frames(self.buf):
            self.names.append(str(dns.message.from_wire(msg).question[0].name))
            refused = self.guard.check(msg)
            if refused is not None:
                self.t.write(wire.frame(refused))


@pytest.fixture
def normal() -> Iterator[FakeDNS]:
    """An upstream that answers (NXDOMAIN for the probe name) and does not loop."""
    with FakeDNS(zone="cluster.local.") as f:
        yield f


async def looping_udp(guard: LoopGuard) -> tuple[asyncio.DatagramTransport, Looping, str]:
    t, p = await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: Looping(guard), local_addr=("127.0.0.1", 0))
    return t, p, f"127.0.0.1:{t.get_extra_info('sockname')[1]}"


def run_probe(make_cfg: Callable[[str], Config], guard: LoopGuard) -> tuple[dict[str, str], Looping, str]:
    """probe() with one looping UDP upstream, whose HOST:PORT make_cfg puts in the config."""

    async def go() -> tuple[dict[str, str], Looping, str]:
        t, p, to = await looping_udp(guard)
        try:
            return await probe(make_cfg(to), guard, ResolveStats(), timeout=0.5), p, to
        finally:
            t.close()

    return asyncio.run(go())


def test_probe_reports_the_upstream_that_sends_the_probe_back(normal: FakeDNS) -> None:
    guard = LoopGuard()
    told: list[tuple[str, str]] = []
    guard.on_loop = lambda to, group: told.append((to, group))

    def cfg(to: str) -> Config:
        return config(upstreams={"cluster": {"servers": [f"127.0.0.1:{normal.port}"], "transport": "udp"},
                                 "host": {"servers": [to], "transport": "udp"}})

    found, looping, to = run_probe(cfg, guard)
    assert found == {to: "host"}
    assert told == [(to, "host")]
    assert len(looping.names) == 1
    assert normal.count() == 1  # the normal upstream got its probe, answered it, and is not reported
    assert normal.seen[0].rdtype == "HINFO"


def test_probe_names_are_random_under_the_groups_zone(normal: FakeDNS) -> None:
    guard = LoopGuard()

    def cfg(to: str) -> Config:
        return config(upstreams={"cluster": {"servers": [to], "transport": "udp"},
                                 "host": {"servers": [to], "transport": "udp"}})

    _found, looping, _to = run_probe(cfg, guard)
    assert len(looping.names) == 2 and looping.names[0] != looping.names[1]
    by_zone = sorted(looping.names, key=lambda n: n.endswith(".cluster.local."), reverse=True)
    cluster_probe, root_probe = (dns.name.from_text(n) for n in by_zone)
    assert cluster_probe.is_subdomain(dns.name.from_text("cluster.local."))  # cluster's first zone
    assert len(cluster_probe.labels) == 2 + 3
    assert len(root_probe.labels) == 2 + 1  # host only serves '.': two random labels under the root


def test_probe_with_no_loop_reports_nothing(normal: FakeDNS) -> None:
    silent = FakeDNS(zone="cluster.local.").start()
    try:
        silent.down = True  # never answers: a timeout is not a loop either
        guard = LoopGuard()
        cfg = config(upstreams={"cluster": {"servers": [f"127.0.0.1:{normal.port}"], "transport": "udp"},
                                "host": {"servers": [f"127.0.0.1:{silent.port}"], "transport": "udp"}})
        found = asyncio.run(probe(cfg, guard, ResolveStats(), timeout=0.3))
        assert found == {}
        assert guard.found == {}
        assert normal.count() == 1
    finally:
        silent.stop()


def test_probe_skips_groups_no_zone_uses(normal: FakeDNS) -> None:
    guard = LoopGuard()

    def cfg(to: str) -> Config:
        return config(upstreams={"cluster": {"servers": [f"127.0.0.1:{normal.port}"], "transport": "udp"},
                                 "host": {"servers": [f"127.0.0.1:{normal.port}"], "transport": "udp"},
                                 "spare": {"servers": [to], "transport": "udp"}})

    found, looping, _to = run_probe(cfg, guard)
    assert found == {}
    assert looping.names == []


def test_probe_skip_leaves_a_server_out_and_out_of_the_result() -> None:
    guard = LoopGuard()

    async def go() -> tuple[dict[str, str], dict[str, str], list[str], str]:
        t, p, to = await looping_udp(guard)
        cfg = config(upstreams={"cluster": {"servers": [to], "transport": "udp"}, "host": {"servers": []}})
        try:
            first = await probe(cfg, guard, ResolveStats(), timeout=0.5)
            asked = len(p.names)
            second = await probe(cfg, guard, ResolveStats(), timeout=0.5, skip=[to])
            assert len(p.names) == asked  # the skipped server got no probe
            return first, second, p.names, to
        finally:
            t.close()

    first, second, names, to = asyncio.run(go())
    assert first == {to: "cluster"}
    assert second == {}  # still in guard.found, but skipped
    assert guard.found == {to: "cluster"}
    assert len(names) == 1  # one probe per server per pass, and none in the second pass


def test_probe_over_tcp_transport() -> None:
    guard = LoopGuard()
    names: list[str] = []

    async def go() -> tuple[dict[str, str], str]:
        server = await asyncio.get_running_loop().create_server(
            lambda: LoopingTCP(guard, names), "127.0.0.1", 0)
        to = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
        cfg = config(upstreams={"cluster": {"servers": [to], "transport": "tcp"}, "host": {"servers": []}})
        try:
            return await probe(cfg, guard, ResolveStats(), timeout=0.5), to
        finally:
            server.close()

    found, to = asyncio.run(go())
    assert found == {to: "cluster"}
    assert len(names) == 1


def test_probe_names_stay_recognised_for_the_late_window_then_are_forgotten(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loopmod, "LATE_WINDOW", 0.1)
    guard = LoopGuard()

    async def go() -> tuple[int, int, bool]:
        t, _p, to = await looping_udp(guard)
        t.close()  # nobody answers now: the probe's reply would come later (a slow loop)
        cfg = config(upstreams={"cluster": {"servers": [to], "transport": "udp"}, "host": {"servers": []}})
        await probe(cfg, guard, ResolveStats(), timeout=0.1)
        during = len(guard.probes)
        q = next(iter(guard.probes))
        late = guard.check(wire.build_query(1, q, True, False, False, wire.EDNS_PAYLOAD)) is not None
        await asyncio.sleep(0.3)
        return during, len(guard.probes), late

    during, after, late = asyncio.run(go())
    assert during == 1
    assert late  # a probe that comes back after the pass still counts
    assert after == 0
    assert list(guard.found.values()) == ["cluster"]
