"""nodelocal.server.tcp: framing, out-of-order answers, the pipelining bound, idle timeout, the cap and counters."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import dns.message
import dns.rcode
import dns.rrset
import pytest

from nodelocal.dns.wire import frame
from nodelocal.resolve.resolver import Resolver
from nodelocal.server.metrics import ServerStats
from nodelocal.server.tcp import TCPConnection, TCPServer

T = TypeVar("T")
WAIT = 5.0  # seconds to wait for something that must happen


class FakeResolver:
    """Answers by the first label of the name: nx -> NXDOMAIN, fail -> SERVFAIL, drop -> None, boom -> raises.

    A name listed in `hold` is answered only once its event is set.
    """

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.hold: dict[str, asyncio.Event] = {}

    def zone_of(self, query: bytes) -> int:
        return 0  # no zones here: counted under zone="dropped"

    async def answer(self, query: bytes, tcp: bool) -> bytes | None:
        assert tcp is True
        q = dns.message.from_wire(query)
        name = str(q.question[0].name)
        self.calls.append(name)
        ev = self.hold.get(name)
        if ev is not None:
            await ev.wait()
        first = name.split(".")[0]
        if first == "drop":
            return None
        if first == "boom":
            raise RuntimeError("resolver bug")
        r = dns.message.make_response(q)
        if first == "nx":
            r.set_rcode(dns.rcode.NXDOMAIN)
        elif first == "fail":
            r.set_rcode(dns.rcode.SERVFAIL)
        else:
            r.answer.append(dns.rrset.from_text(q.question[0].name, 60, "IN", "A", "192.0.2.1"))
        return r.to_wire()


class FakeLive:
    def __init__(self) -> None:
        self.records: list[tuple[bytes, str, int, float | None]] = []

    def record(self, data: bytes, client: str, weight: int, seconds: float | None) -> None:
        self.records.append((data, client, weight, seconds))


@dataclass
class Ctx:
    fake: FakeResolver
    stats: ServerStats
    srv: TCPServer
    port: int
    writers: list[asyncio.StreamWriter] = field(default_factory=list)

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        r, w = await asyncio.open_connection("127.0.0.1", self.port)
        self.writers.append(w)
        return r, w

    def hold(self, name: str) -> asyncio.Event:
        ev = self.fake.hold[name] = asyncio.Event()
        return ev

    def conn(self) -> TCPConnection:
        (c,) = self.srv.connections
        return c


def serve(body: Callable[[Ctx], Awaitable[T]], idle: float = 10.0, max_connections: int = 16,
          max_pipelined: int = 8, live: FakeLive | None = None) -> T:
    async def go() -> T:
        fake = FakeResolver()
        stats = ServerStats()
        srv = TCPServer(cast(Resolver, fake), stats, idle, max_connections, max_pipelined, live=cast(Any, live))
        server = await asyncio.get_running_loop().create_server(srv.protocol, "127.0.0.1", 0)
        ctx = Ctx(fake, stats, srv, server.sockets[0].getsockname()[1])
        try:
            return await body(ctx)
        finally:
            for ev in fake.hold.values():
                ev.set()
            for w in ctx.writers:
                w.close()
            srv.close_all()
            server.close()
            await asyncio.sleep(0.01)

    return asyncio.run(go())


def query(name: str, qid: int) -> bytes:
    q = dns.message.make_query(name, "A")
    q.id = qid
    return q.to_wire()


async def read_reply(r: asyncio.StreamReader) -> dns.message.Message:
    n = int.from_bytes(await asyncio.wait_for(r.readexactly(2), WAIT), "big")
    return dns.message.from_wire(await asyncio.wait_for(r.readexactly(n), WAIT))


async def read_eof(r: asyncio.StreamReader) -> bytes:
    """What is left before the server closes the connection (b'' when nothing)."""
    return await asyncio.wait_for(r.read(), WAIT)


async def until(cond: Callable[[], bool], timeout: float = WAIT) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


# --------------------------------------------------------------------------------------------------
# Framing


def test_several_queries_in_one_segment_are_all_answered() -> None:
    async def body(c: Ctx) -> None:
        r, w = await c.connect()
        w.write(b"".join(frame(query(f"q{i}.example.test", 100 + i)) for i in range(3)))
        replies = [await read_reply(r) for _ in range(3)]
        assert sorted(m.id for m in replies) == [100, 101, 102]
        for m in replies:  # each reply is its own query's
            assert str(m.question[0].name) == f"q{m.id - 100}.example.test."
        assert c.stats.queries == {"udp": 0, "tcp": 3}
        assert c.stats.rcodes[dns.rcode.NOERROR] == 3
        assert c.stats.request_duration.n == 3

    serve(body)


def test_one_query_split_across_segments() -> None:
    async def body(c: Ctx) -> None:
        r, w = await c.connect()
        data = frame(query("split.example.test", 7))
        for piece in (data[:1], data[1:2], data[2:9], data[9:-1]):  # not even the length prefix at once
            w.write(piece)
            await w.drain()
            await asyncio.sleep(0.03)
            assert c.fake.calls == []  # nothing is handed on before the message is complete
        w.write(data[-1:])
        m = await read_reply(r)
        assert m.id == 7 and c.fake.calls == ["split.example.test."]
        assert c.stats.queries["tcp"] == 1

    serve(body)


def test_a_frame_boundary_inside_a_segment() -> None:
    """The first query and the first byte of the second arrive together: the first is answered at once."""
    async def body(c: Ctx) -> None:
        r, w = await c.connect()
        second = frame(query("b.example.test", 2))
        w.write(frame(query("a.example.test", 1)) + second[:1])
        assert (await read_reply(r)).id == 1
        w.write(second[1:])
        assert (await read_reply(r)).id == 2

    serve(body)


def test_answers_go_out_as_they_are_ready_not_in_order() -> None:
    async def body(c: Ctx) -> None:
        slow = c.hold("slow.example.test.")
        r, w = await c.connect()
        w.write(frame(query("slow.example.test", 1)) + frame(query("fast.example.test", 2)))
        assert (await read_reply(r)).id == 2
        slow.set()
        assert (await read_reply(r)).id == 1

    serve(body)


# --------------------------------------------------------------------------------------------------
# Bounds: pipelining, idle timeout, connection cap


def test_reading_pauses_at_max_pipelined_and_resumes_below_it() -> None:
    async def body(c: Ctx) -> None:
        a, b = c.hold("a.example.test."), c.hold("b.example.test.")
        r, w = await c.connect()
        w.write(frame(query("a.example.test", 1)) + frame(query("b.example.test", 2)))
        await until(lambda: len(c.fake.calls) == 2)
        assert c.conn().paused
        w.write(frame(query("c.example.test", 3)))
        await w.drain()
        await asyncio.sleep(0.1)
        assert c.fake.calls == ["a.example.test.", "b.example.test."]  # the third waits in the socket
        a.set()
        assert (await read_reply(r)).id == 1
        await until(lambda: len(c.fake.calls) == 3)
        assert (await read_reply(r)).id == 3
        assert not c.conn().paused
        b.set()
        assert (await read_reply(r)).id == 2

    serve(body, max_pipelined=2)


def test_queries_in_one_segment_stay_within_max_pipelined() -> None:
    async def body(c: Ctx) -> None:
        holds = [c.hold(f"q{i}.example.test.") for i in range(5)]
        r, w = await c.connect()
        w.write(b"".join(frame(query(f"q{i}.example.test", i)) for i in range(5)))
        await until(lambda: len(c.fake.calls) >= 2)
        await asyncio.sleep(0.1)
        assert len(c.fake.calls) == 2  # the rest wait until an answer makes room
        for h in holds:
            h.set()
        assert sorted([(await read_reply(r)).id for _ in range(5)]) == [0, 1, 2, 3, 4]

    serve(body, max_pipelined=2)


def test_idle_connection_is_closed() -> None:
    async def body(c: Ctx) -> None:
        r, _w = await c.connect()
        await until(lambda: c.stats.tcp_connections == 1)
        assert await read_eof(r) == b""
        await until(lambda: c.stats.tcp_connections == 0)

    serve(body, idle=0.2)


def test_idle_timer_restarts_after_the_last_answer() -> None:
    async def body(c: Ctx) -> None:
        slow = c.hold("slow.example.test.")
        r, w = await c.connect()
        w.write(frame(query("slow.example.test", 1)))
        await until(lambda: len(c.fake.calls) == 1)
        await asyncio.sleep(0.5)  # well past the idle timeout, with a query in flight: still open
        slow.set()
        assert (await read_reply(r)).id == 1
        w.write(frame(query("next.example.test", 2)))  # and still usable after the answer
        assert (await read_reply(r)).id == 2
        assert await read_eof(r) == b""  # then idle again: closed

    serve(body, idle=0.2)


def test_a_partial_frame_does_not_keep_a_connection_open() -> None:
    async def body(c: Ctx) -> None:
        r, w = await c.connect()
        w.write(frame(query("x.example.test", 1))[:5])
        assert await read_eof(r) == b""
        assert c.fake.calls == []

    serve(body, idle=0.2)


def test_connections_past_the_cap_are_closed_and_counted() -> None:
    async def body(c: Ctx) -> None:
        r1, w1 = await c.connect()
        await until(lambda: c.stats.tcp_connections == 1)
        r2, _w2 = await c.connect()
        assert await read_eof(r2) == b""
        assert c.stats.tcp_rejected == 1
        assert c.stats.tcp_connections == 1
        w1.write(frame(query("still.example.test", 5)))  # the first connection is unaffected
        assert (await read_reply(r1)).id == 5
        w1.close()
        await until(lambda: c.stats.tcp_connections == 0)
        r3, w3 = await c.connect()  # room again
        w3.write(frame(query("third.example.test", 6)))
        assert (await read_reply(r3)).id == 6
        assert c.stats.tcp_rejected == 1

    serve(body, max_connections=1)


def test_close_all_closes_every_connection() -> None:
    async def body(c: Ctx) -> None:
        readers = [(await c.connect())[0] for _ in range(3)]
        await until(lambda: c.stats.tcp_connections == 3)
        c.srv.close_all()
        for r in readers:
            assert await read_eof(r) == b""
        await until(lambda: c.stats.tcp_connections == 0)

    serve(body)


# --------------------------------------------------------------------------------------------------
# What is counted


def test_rcodes_are_counted_per_reply() -> None:
    async def body(c: Ctx) -> None:
        r, w = await c.connect()
        names = ["ok.example.test", "nx.example.test", "nx.other.test", "fail.example.test"]
        w.write(b"".join(frame(query(n, i)) for i, n in enumerate(names)))
        got = {m.id: m.rcode() for m in [await read_reply(r) for _ in names]}
        assert got == {0: dns.rcode.NOERROR, 1: dns.rcode.NXDOMAIN, 2: dns.rcode.NXDOMAIN, 3: dns.rcode.SERVFAIL}
        assert c.stats.rcodes[dns.rcode.NOERROR] == 1
        assert c.stats.rcodes[dns.rcode.NXDOMAIN] == 2
        assert c.stats.rcodes[dns.rcode.SERVFAIL] == 1
        assert sum(c.stats.rcodes) == 4
        assert c.stats.dropped == 0

    serve(body)


def test_a_query_the_resolver_drops_gets_no_reply_and_is_counted() -> None:
    async def body(c: Ctx) -> None:
        r, w = await c.connect()
        w.write(frame(query("drop.example.test", 1)))
        await until(lambda: c.stats.dropped == 1)
        w.write(frame(query("ok.example.test", 2)))
        assert (await read_reply(r)).id == 2  # the next reply is the second query's: nothing for the first
        assert c.stats.queries["tcp"] == 2
        assert sum(c.stats.rcodes) == 1

    serve(body)


def test_a_resolver_exception_costs_one_answer_not_the_connection(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="nodelocal.tcp")

    async def body(c: Ctx) -> None:
        r, w = await c.connect()
        w.write(frame(query("boom.example.test", 1)))
        await until(lambda: any("tcp query failed" in rec.getMessage() for rec in caplog.records))
        w.write(frame(query("ok.example.test", 2)))
        assert (await read_reply(r)).id == 2
        assert c.conn().inflight == 0

    serve(body)


def test_every_query_is_recorded_for_the_live_page() -> None:
    live = FakeLive()

    async def body(c: Ctx) -> None:
        r, w = await c.connect()
        qs = [query("a.example.test", 1), query("b.example.test", 2)]
        w.write(b"".join(frame(q) for q in qs))
        for _ in qs:
            await read_reply(r)
        assert [(d, who, weight) for d, who, weight, _s in live.records] == [(q, "127.0.0.1", 1) for q in qs]

    serve(body, live=live)
