"""nodelocal.resolve.upstream: reply validation, the pooled UDP sockets and the pooled, pipelined TCP client."""

from __future__ import annotations

import asyncio
import secrets
import struct
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import Any, TypeVar

import dns.message
import dns.name
import dns.rdatatype
import dns.rrset
import pytest

from nodelocal import UpstreamError, UpstreamTimeout
from nodelocal.config import UpstreamGroup
from nodelocal.dns import wire
from nodelocal.resolve.metrics import ResolveStats
from nodelocal.resolve.upstream import (
    ConnectionLost,
    LoopRef,
    TCPPool,
    UDPPool,
    _UDPQuery,
    _UDPSocket,
    case_mismatch,
    reply_matches,
)
from tests.fakedns import DROP, SPOOF, FakeDNS, free_port

T = TypeVar("T")
NAME = "www.example.test"
HTTPS = 65  # its type's low byte is 'A': lowercasing the whole question turns it into 97


def question(name: str = NAME, rdtype: int = 1) -> bytes:
    owner = dns.name.from_text(name).to_wire()
    assert owner is not None
    return owner + struct.pack(">HH", rdtype, 1)


def name_lc(q: bytes) -> bytes:
    """A question as forward.py hands it to the transports: the name lowercased, type and class as they are."""
    return q[:-4].lower() + q[-4:]


def query(qid: int = 0, name: str = NAME, rdtype: int = 1) -> bytes:
    return wire.build_query(qid, question(name, rdtype), True, False, False, wire.EDNS_PAYLOAD)


def reply_to(q: bytes, ip: str = "192.0.2.1") -> bytes:
    """A NOERROR reply (dnspython) to the query bytes `q`, same ID and question."""
    m = dns.message.from_wire(q)
    r = dns.message.make_response(m)
    if m.question[0].rdtype == dns.rdatatype.A:
        r.answer.append(dns.rrset.from_text(m.question[0].name, 60, "IN", "A", ip))
    return r.to_wire()


def qname_of(reply: bytes) -> str:
    return str(dns.message.from_wire(reply).question[0].name).lower()


def run(fn: Callable[[], Coroutine[Any, Any, T]]) -> T:
    return asyncio.run(fn())


async def until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


# --------------------------------------------------------------------------------------------------
# reply_matches


QID = 0x1234


def make_reply(name: str = NAME, rdtype: str = "A", qid: int = QID) -> bytes:
    q = dns.message.make_query(name, rdtype)
    q.id = qid
    return dns.message.make_response(q).to_wire()


def test_reply_matches_its_query() -> None:
    assert reply_matches(make_reply(), QID, question().lower())


def test_reply_with_another_id_does_not_match() -> None:
    assert not reply_matches(make_reply(qid=QID ^ 1), QID, question().lower())
    assert not reply_matches(make_reply(qid=QID), QID ^ 0x8000, question().lower())


def test_message_without_qr_does_not_match() -> None:
    assert not reply_matches(query(QID), QID, question().lower())


@pytest.mark.parametrize(("name", "rdtype"), [("other.example.test", "A"), (NAME, "AAAA"), ("www.example", "A")])
def test_reply_to_another_question_does_not_match(name: str, rdtype: str) -> None:
    assert not reply_matches(make_reply(name, rdtype), QID, question().lower())


def test_question_compared_without_regard_to_case() -> None:
    mixed = make_reply("WwW.eXaMpLe.TEST")
    assert mixed[12:12 + len(question())] != question()  # the reply really spells it differently
    assert reply_matches(mixed, QID, question().lower())


@pytest.mark.parametrize("cut", [0, 1, 2, 11, 12, 13, 20])
def test_short_reply_does_not_match(cut: int) -> None:
    good = make_reply()
    assert reply_matches(good, QID, question().lower())
    assert not reply_matches(good[:cut], QID, question().lower())


def test_reply_without_exactly_one_question_does_not_match() -> None:
    good = bytearray(make_reply())
    for qd in (0, 2):
        bad = bytes(good[:4]) + struct.pack(">H", qd) + bytes(good[6:])
        assert not reply_matches(bad, QID, question().lower())


def test_reply_for_another_type_sharing_a_lowercased_byte_does_not_match() -> None:
    https_question = question(rdtype=HTTPS)
    other = make_reply(NAME, "TYPE97")
    # forward.py passes the question with its name lowercased and its type and class as they are.
    assert not reply_matches(other, QID, name_lc(https_question))


def test_reply_to_an_https_query_matches() -> None:
    """Type 65 is the byte 'A': the genuine reply must match (and a reply in another name case too)."""
    assert reply_matches(make_reply(NAME, "HTTPS"), QID, name_lc(question(rdtype=HTTPS)))
    assert reply_matches(make_reply(NAME.upper(), "HTTPS"), QID, name_lc(question(rdtype=HTTPS)))


# 0x20: with `exact`, the reply must echo the randomised question byte for byte.

def test_exact_reply_must_echo_the_case_sent() -> None:
    sent = question("wWw.ExAmple.tEST")
    assert reply_matches(make_reply("wWw.ExAmple.tEST"), QID, sent, exact=True)
    assert not reply_matches(make_reply("www.example.test"), QID, sent, exact=True)
    assert not reply_matches(make_reply("wWw.ExAmple.tESt"), QID, sent, exact=True)
    assert case_mismatch(make_reply("www.example.test"), QID, sent)
    assert not case_mismatch(make_reply("other.example.test"), QID, sent)
    assert not case_mismatch(make_reply("www.example.test", qid=QID ^ 1), QID, sent)
    # Type and class stay exact too: HTTPS (65, byte 'A') is not type 97.
    https = wire.randomize_case(name_lc(question(rdtype=HTTPS)))
    assert not reply_matches(make_reply(NAME, "TYPE97"), QID, https, exact=True)


def test_udp_reply_in_the_wrong_case_is_dropped_as_forged_and_counted() -> None:
    """A forger with the right ID, source and question but not the case gets nothing in; the real reply does."""
    async def go() -> tuple[bytes, ResolveStats]:
        got: list[bytes] = []
        loop = asyncio.get_running_loop()

        class Up(asyncio.DatagramProtocol):
            def connection_made(self, t: asyncio.BaseTransport) -> None:
                self.t = t

            def datagram_received(self, data: bytes, addr: Any) -> None:
                got.append(data)
                lower = data[:12] + data[12:].lower()  # the question as a forger who cannot see it spells it
                self.t.sendto(reply_to(lower, "6.6.6.6"), addr)  # type: ignore[attr-defined]
                self.t.sendto(reply_to(data), addr)  # type: ignore[attr-defined]

        t, _ = await loop.create_datagram_endpoint(Up, local_addr=("127.0.0.1", 0))
        peer = t.get_extra_info("sockname")[:2]
        stats = ResolveStats()
        pool = UDPPool(peer, 1, stats, exact=True)
        try:
            sent = wire.randomize_case(name_lc(question()))
            assert sent != name_lc(question())  # 14 letters: all lowercase has odds 2**-14
            r = await pool.exchange(query(0)[:12] + sent + query(0)[12 + len(sent):], sent, 2.0)
            assert got[0][12:12 + len(sent)] == sent  # it went out as given
            return r, stats
        finally:
            pool.close()
            t.close()

    r, stats = run(go)
    assert str(dns.message.from_wire(r).answer[0][0]) == "192.0.2.1"
    assert stats.spoofed == 1
    assert sum(stats.case_mismatch.values()) == 1


def test_tcp_reply_in_the_wrong_case_is_dropped_as_forged() -> None:
    sent = wire.randomize_case(name_lc(question()))

    def forge_then_answer(peer: Peer, q: bytes) -> None:
        peer.send(reply_to(q[:12] + q[12:].lower(), "6.6.6.6"))
        peer.send(reply_to(q))

    async def body(up: TCPUpstream, pool: TCPPool, stats: ResolveStats) -> None:
        r = await pool.exchange(query(0)[:12] + sent + query(0)[12 + len(sent):], sent, 2.0)
        assert str(dns.message.from_wire(r).answer[0][0]) == "192.0.2.1"
        assert stats.spoofed == 1 and sum(stats.case_mismatch.values()) == 1

    pool_test(body, on_query=forge_then_answer, exact=True)


# --------------------------------------------------------------------------------------------------
# UDPPool: one query at a time


@pytest.fixture
def fake() -> Iterator[FakeDNS]:
    with FakeDNS(zone="example.test.") as f:
        f.add(NAME, "A", 100, "192.0.2.1")
        yield f


async def udp_once(peer: tuple[str, int], stats: ResolveStats, timeout: float = 2.0, retransmit: float = 0.0,
                   name: str = NAME) -> bytes:
    """One exchange through a pool of its own (closed after)."""
    pool = UDPPool(peer, 1, stats)
    try:
        return await pool.exchange(query(0, name), question(name).lower(), timeout, retransmit)
    finally:
        pool.close()


def test_udp_exchange_returns_the_reply(fake: FakeDNS) -> None:
    stats = ResolveStats()
    r = run(lambda: udp_once(("127.0.0.1", fake.port), stats))
    msg = dns.message.from_wire(r)
    assert qname_of(r) == NAME + "." and str(msg.answer[0][0]) == "192.0.2.1"
    assert stats.spoofed == 0


def test_udp_exchange_ignores_spoofed_replies_and_takes_the_real_one(fake: FakeDNS) -> None:
    """The fake sends a reply with a wrong ID, then one for another question, then the real one."""
    fake.behaviour[NAME + "."] = SPOOF
    stats = ResolveStats()
    r = run(lambda: udp_once(("127.0.0.1", fake.port), stats))
    msg = dns.message.from_wire(r)
    assert qname_of(r) == NAME + "."
    assert str(msg.answer[0][0]) == "192.0.2.1"  # not the spoofer's 6.6.6.6
    assert stats.spoofed == 2


def test_udp_exchange_times_out(fake: FakeDNS) -> None:
    fake.behaviour[NAME + "."] = DROP
    stats = ResolveStats()
    with pytest.raises(UpstreamTimeout):
        run(lambda: udp_once(("127.0.0.1", fake.port), stats, 0.2))
    assert fake.count(NAME) == 1


def test_udp_exchange_port_unreachable_is_an_error_not_a_timeout() -> None:
    with pytest.raises(UpstreamError) as e:
        run(lambda: udp_once(("127.0.0.1", free_port()), ResolveStats(), 3.0))
    assert not isinstance(e.value, UpstreamTimeout)


class _Responder(asyncio.DatagramProtocol):
    """A UDP upstream whose replies the test writes: respond(query) -> datagrams to send back."""

    def __init__(self, respond: Callable[[bytes], list[bytes]]) -> None:
        self.respond = respond
        self.sources: list[Any] = []
        self.queries: list[bytes] = []
        self.relay: asyncio.DatagramTransport | None = None  # send replies from this socket instead

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t: Any = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.sources.append(addr)
        self.queries.append(data)
        if self.relay is not None:
            self.relay.sendto(reply_to(data), addr)
        for out in self.respond(data):
            self.t.sendto(out, addr)


async def _responder(respond: Callable[[bytes], list[bytes]]) -> tuple[asyncio.DatagramTransport, _Responder]:
    loop = asyncio.get_running_loop()
    t, p = await loop.create_datagram_endpoint(lambda: _Responder(respond), local_addr=("127.0.0.1", 0))
    return t, p


def test_udp_exchange_only_spoofed_replies_is_a_timeout() -> None:
    stats = ResolveStats()

    def wrong(q: bytes) -> list[bytes]:
        good = reply_to(q)
        return [bytes([good[0] ^ 0x55]) + good[1:], reply_to(query(q[0] << 8 | q[1], "evil.example.test"))]

    async def go() -> None:
        t, _p = await _responder(wrong)
        try:
            await udp_once(t.get_extra_info("sockname"), stats, 0.3)
        finally:
            t.close()

    with pytest.raises(UpstreamTimeout):
        run(go)
    assert stats.spoofed == 2


def test_udp_exchange_ignores_a_reply_from_another_address() -> None:
    """The right ID and question, but sent from another port than the one queried: never believed."""
    stats = ResolveStats()

    async def go() -> None:
        loop = asyncio.get_running_loop()
        other, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0))
        t, p = await _responder(lambda q: [])
        p.relay = other  # replies leave from `other`, not from the address the query went to
        try:
            await udp_once(t.get_extra_info("sockname"), stats, 0.3)
        finally:
            t.close()
            other.close()

    with pytest.raises(UpstreamTimeout):
        run(go)


def udp_socket_sees(peer: tuple[str, int], source: tuple[Any, ...]) -> tuple[bool, int]:
    """Hand a genuine reply, as if from `source`, to a pooled socket's protocol for `peer` (no socket involved)."""

    async def go() -> tuple[bool, int]:
        stats = ResolveStats()
        sock = _UDPSocket(UDPPool(peer, 1, stats), float("inf"))
        fut = asyncio.get_running_loop().create_future()
        sock.pending[QID] = _UDPQuery(sock, QID, question().lower(), fut, b"", float("inf"), 1.0, 0.0)
        sock.datagram_received(make_reply(), source)
        return fut.done(), stats.spoofed

    return asyncio.run(go())


def test_udp_reply_source_is_checked() -> None:
    assert udp_socket_sees(("127.0.0.1", 5353), ("127.0.0.1", 5353)) == (True, 0)
    assert udp_socket_sees(("127.0.0.1", 5353), ("127.0.0.2", 5353)) == (False, 1)
    assert udp_socket_sees(("127.0.0.1", 5353), ("127.0.0.1", 5354)) == (False, 1)
    assert udp_socket_sees(("fd00::53", 53), ("fd00::53", 53, 0, 0)) == (True, 0)  # IPv6: a 4-tuple


@pytest.mark.parametrize("written", ["FD00::53", "fd00:0:0::53", "fd00:0000::0053"])
def test_udp_reply_from_an_ipv6_upstream_written_another_way_is_accepted(written: str) -> None:
    # The config hands the forwarder canonical addresses, the form the kernel reports a reply's source in.
    (peer,) = UpstreamGroup(servers=(f"[{written}]:53",)).addresses()
    assert udp_socket_sees(peer, ("fd00::53", 53, 0, 0)) == (True, 0)


# --------------------------------------------------------------------------------------------------
# UDPPool: many queries on a few sockets


def qid_of(msg: bytes) -> int:
    return msg[0] << 8 | msg[1]


def udp_pool_test(body: Callable[[_Responder, UDPPool, ResolveStats], Awaitable[T]], size: int = 4,
                  respond: Callable[[bytes], list[bytes]] = lambda q: [], **kw: Any) -> T:
    """Run `body` against a scripted UDP upstream (answering per `respond`) and a pool of `size` sockets."""
    async def go() -> T:
        t, up = await _responder(respond)
        stats = ResolveStats()
        pool = UDPPool(t.get_extra_info("sockname"), size, stats, **kw)
        try:
            return await body(up, pool, stats)
        finally:
            pool.close()
            t.close()
            await asyncio.sleep(0)

    return asyncio.run(go())


def udp_ask(pool: UDPPool, name: str = NAME, timeout: float = 5.0, retransmit: float = 0.0) -> asyncio.Task[bytes]:
    return asyncio.get_running_loop().create_task(pool.exchange(query(0, name), question(name).lower(), timeout,
                                                                retransmit))


def fixed_draws(monkeypatch: pytest.MonkeyPatch, first: list[int]) -> None:
    """secrets.randbits as the pool sees it: the values in `first`, then the real thing. Only draws made in
    this test's thread take from `first`: an agent that an earlier test left running in a thread of this
    process draws IDs too, and must not take this test's values."""
    real = secrets.randbits
    queue = list(first)
    mine = threading.get_ident()

    def draw(k: int) -> int:
        return queue.pop(0) if queue and threading.get_ident() == mine else real(k)

    monkeypatch.setattr(secrets, "randbits", draw)


def test_udp_ids_are_unique_among_a_sockets_pending_queries(monkeypatch: pytest.MonkeyPatch) -> None:
    """The draws keep saying ID 0x0101: the second and third query on the socket draw again until theirs is free."""
    fixed_draws(monkeypatch, [0x0101, 0x0101, 0x0101, 0x0202, 0x0101, 0x0101, 0x0303])

    async def body(up: _Responder, pool: UDPPool, stats: ResolveStats) -> None:
        names = [f"q{i}.example.test" for i in range(3)]
        tasks = [udp_ask(pool, n) for n in names]
        await until(lambda: len(up.queries) == 3)
        assert [qid_of(m) for m in up.queries] == [0x0101, 0x0202, 0x0303]
        assert len({s for s in up.sources}) == 1  # one socket carried them all
        for m in up.queries:
            up.t.sendto(reply_to(m), up.sources[0])
        got = await asyncio.gather(*tasks)
        assert [qname_of(r) for r in got] == [n + "." for n in names]
        # Many at once: every ID in flight on a socket is distinct.
        monkeypatch.undo()
        tasks = [udp_ask(pool, f"m{i}.example.test") for i in range(200)]
        await until(lambda: len(up.queries) == 203)
        per_socket: dict[Any, list[int]] = {}
        for src, m in zip(up.sources[3:], up.queries[3:], strict=True):
            per_socket.setdefault(src, []).append(qid_of(m))
        assert all(len(ids) == len(set(ids)) for ids in per_socket.values())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert all(s is None or not s.pending for s in pool.slots)

    udp_pool_test(body, size=1)


def test_udp_replies_matched_across_sockets_out_of_order() -> None:
    async def body(up: _Responder, pool: UDPPool, stats: ResolveStats) -> None:
        names = [f"q{i}.example.test" for i in range(24)]
        tasks = [udp_ask(pool, n) for n in names]
        await until(lambda: len(up.queries) == len(names))
        assert len(set(up.sources)) > 1  # taken at random: 24 queries did not all pick one of 4 sockets
        assert len(set(up.sources)) <= 4
        for m, src in reversed(list(zip(up.queries, up.sources, strict=True))):  # answered last first
            up.t.sendto(reply_to(m), src)
        got = await asyncio.gather(*tasks)
        assert [qname_of(r) for r in got] == [n + "." for n in names]
        assert stats.spoofed == 0

    udp_pool_test(body, size=4)


def test_udp_spoofed_replies_counted_while_the_real_one_is_still_taken() -> None:
    """Before the real reply: one with an ID not in flight on the socket, one with the right ID for another
    question. Both are dropped and counted; the query still gets the real one."""
    def spoof_then_answer(q: bytes) -> list[bytes]:
        good = reply_to(q)
        wrong_id = bytes([good[0] ^ 0x80]) + good[1:]
        wrong_question = reply_to(query(qid_of(q), "evil.example.test"), ip="6.6.6.6")
        return [wrong_id, wrong_question, good]

    async def body(up: _Responder, pool: UDPPool, stats: ResolveStats) -> None:
        r = await udp_ask(pool)
        assert qname_of(r) == NAME + "."
        assert str(dns.message.from_wire(r).answer[0][0]) == "192.0.2.1"
        assert stats.spoofed == 2

    udp_pool_test(body, size=2, respond=spoof_then_answer)


def test_udp_socket_replaced_after_max_queries_with_a_new_port() -> None:
    async def body(up: _Responder, pool: UDPPool, stats: ResolveStats) -> None:
        for i in range(7):
            assert qname_of(await udp_ask(pool, f"q{i}.example.test")) == f"q{i}.example.test."
        ports = [port for _h, port in up.sources]
        assert ports[0] == ports[1] == ports[2]
        assert ports[3] == ports[4] == ports[5]
        assert len({ports[0], ports[3], ports[6]}) == 3  # a new socket, a new source port, each time
        await asyncio.sleep(0)
        assert not pool.draining  # the replaced ones had nothing waiting: closed at once

    udp_pool_test(body, size=1, respond=lambda q: [reply_to(q)], max_queries=3)


def test_udp_socket_replaced_once_too_old() -> None:
    async def body(up: _Responder, pool: UDPPool, stats: ResolveStats) -> None:
        for i in range(3):
            await udp_ask(pool, f"q{i}.example.test")
        assert len({port for _h, port in up.sources}) == 3

    udp_pool_test(body, size=1, respond=lambda q: [reply_to(q)], max_age=0.0)


def test_udp_replaced_socket_stays_open_for_its_pending_queries() -> None:
    async def body(up: _Responder, pool: UDPPool, stats: ResolveStats) -> None:
        a = udp_ask(pool, "a.example.test")
        await until(lambda: len(up.queries) == 1)
        (old,) = pool.slots
        assert old is not None
        b = udp_ask(pool, "b.example.test")  # the socket has carried its one query: b takes a new one
        await until(lambda: len(up.queries) == 2)
        assert up.sources[0] != up.sources[1]
        assert pool.draining == {old} and not old.closed
        for m, src in zip(up.queries, up.sources, strict=True):
            up.t.sendto(reply_to(m), src)
        assert qname_of(await a) == "a.example.test."  # answered on the old socket, to its port
        assert qname_of(await b) == "b.example.test."
        assert old.closed and not pool.draining  # closed once its last query was answered

    udp_pool_test(body, size=1, max_queries=1)


def test_udp_timeout_frees_the_id(monkeypatch: pytest.MonkeyPatch) -> None:
    """Queries a and c draw the same ID on the same socket: c gets it once a has timed out. a's reply,
    arriving late while c waits under that ID, is dropped without being taken for c's or for a spoof."""
    fixed_draws(monkeypatch, [0x4242, 0x1111, 0x4242])

    async def body(up: _Responder, pool: UDPPool, stats: ResolveStats) -> None:
        a = udp_ask(pool, "late.example.test", timeout=1.0)  # b is answered well within it, even on a busy machine
        await until(lambda: len(up.queries) == 1)
        b = udp_ask(pool, "b.example.test")
        await until(lambda: len(up.queries) == 2)
        up.t.sendto(reply_to(up.queries[1]), up.sources[1])  # b is answered, a is not
        assert qname_of(await b) == "b.example.test."
        with pytest.raises(UpstreamTimeout):
            await a
        (sock,) = pool.slots
        assert sock is not None and sock.pending == {}  # the ID is free again
        c = udp_ask(pool, "c.example.test")
        await until(lambda: len(up.queries) == 3)
        assert [qid_of(m) for m in up.queries] == [0x4242, 0x1111, 0x4242]
        assert len(set(up.sources)) == 1  # the socket stayed: it was answering
        up.t.sendto(reply_to(up.queries[0]), up.sources[0])  # a's reply, late
        up.t.sendto(reply_to(up.queries[2]), up.sources[2])
        assert qname_of(await c) == "c.example.test."
        assert stats.spoofed == 0

    udp_pool_test(body, size=1)


def test_udp_socket_silent_for_a_whole_try_is_replaced() -> None:
    async def body(up: _Responder, pool: UDPPool, stats: ResolveStats) -> None:
        with pytest.raises(UpstreamTimeout):
            await udp_ask(pool, "lost.example.test", timeout=0.2)
        assert pool.slots == [None]  # nothing came back on it for the whole try: a new flow next time
        up.respond = lambda q: [reply_to(q)]
        assert qname_of(await udp_ask(pool)) == NAME + "."
        assert up.sources[0] != up.sources[1]

    udp_pool_test(body, size=1)


def test_udp_port_unreachable_fails_the_queries_on_that_socket_at_once() -> None:
    async def go() -> list[BaseException | bytes]:
        pool = UDPPool(("127.0.0.1", free_port()), 1, ResolveStats())
        try:
            tasks = [udp_ask(pool, f"q{i}.example.test", timeout=30.0) for i in range(3)]
            return await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            pool.close()

    got = run(go)
    # Failed by the ICMP error, not by their 30 s timeout (which the test would not wait out).
    assert all(isinstance(e, UpstreamError) and not isinstance(e, UpstreamTimeout) for e in got)


def test_udp_socket_an_icmp_error_came_back_on_is_replaced() -> None:
    async def go() -> tuple[bool, list[_UDPSocket | None]]:
        pool = UDPPool(("127.0.0.1", free_port()), 1, ResolveStats())
        try:
            with pytest.raises(UpstreamError):
                await udp_ask(pool, timeout=30.0)
            return bool(pool.draining), pool.slots
        finally:
            pool.close()

    assert run(go) == (False, [None])


def test_udp_pool_close_fails_the_waiting_queries_and_reopens_on_use() -> None:
    async def body(up: _Responder, pool: UDPPool, stats: ResolveStats) -> None:
        a = udp_ask(pool)
        await until(lambda: len(up.queries) == 1)
        pool.close()
        with pytest.raises(UpstreamError):
            await a
        up.respond = lambda q: [reply_to(q)]
        assert qname_of(await udp_ask(pool)) == NAME + "."
        assert up.sources[0] != up.sources[1]

    udp_pool_test(body, size=1)


def test_udp_pool_closed_while_its_socket_opens_fails_the_query_not_cancels_it() -> None:
    async def body(up: _Responder, pool: UDPPool, stats: ResolveStats) -> None:
        a = udp_ask(pool)
        await asyncio.sleep(0)  # the query waits for its socket to open
        assert pool.opening
        pool.close()
        with pytest.raises(UpstreamError):
            await a
        assert not a.cancelled()

    udp_pool_test(body, size=1)


# --------------------------------------------------------------------------------------------------
# TCPPool against a scripted TCP upstream


class Peer(asyncio.Protocol):
    """One connection of the scripted upstream."""

    def __init__(self, up: TCPUpstream) -> None:
        self.up = up
        self.buf = bytearray()
        self.closed = False
        self.t: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t = transport  # type: ignore[assignment]
        self.up.conns.append(self)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        for msg in wire.pop_frames(self.buf):
            self.up.received.append((self, msg))
            if self.up.on_query is not None:
                self.up.on_query(self, msg)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True

    def send(self, msg: bytes) -> None:
        assert self.t is not None
        self.t.write(wire.frame(msg))


class TCPUpstream:
    """A TCP upstream on 127.0.0.1 that records each query with its connection; the test answers."""

    def __init__(self, on_query: Callable[[Peer, bytes], None] | None = None) -> None:
        self.conns: list[Peer] = []
        self.received: list[tuple[Peer, bytes]] = []
        self.on_query = on_query

    async def start(self) -> tuple[str, int]:
        self.server = await asyncio.get_running_loop().create_server(lambda: Peer(self), "127.0.0.1", 0)
        host, port = self.server.sockets[0].getsockname()[:2]
        return host, port

    def close(self) -> None:
        self.server.close()
        for c in self.conns:
            if c.t is not None:
                c.t.close()


def received(up: TCPUpstream, n: int) -> Callable[[], bool]:
    return lambda: len(up.received) == n


def answer_now(peer: Peer, q: bytes) -> None:
    peer.send(reply_to(q))


def pool_test(body: Callable[[TCPUpstream, TCPPool, ResolveStats], Awaitable[T]], size: int = 4,
              idle: float = 10.0, on_query: Callable[[Peer, bytes], None] | None = None, exact: bool = False) -> T:
    async def go() -> T:
        up = TCPUpstream(on_query)
        peer = await up.start()
        stats = ResolveStats()
        pool = TCPPool(peer, size, idle, stats, exact=exact)
        try:
            return await body(up, pool, stats)
        finally:
            pool.close()
            up.close()
            await asyncio.sleep(0)

    return asyncio.run(go())


def exchange(pool: TCPPool, name: str = NAME, timeout: float = 5.0) -> asyncio.Task[bytes]:
    return asyncio.get_running_loop().create_task(pool.exchange(query(0, name), question(name).lower(), timeout))


async def in_turn(up: TCPUpstream, pool: TCPPool, names: list[str], timeout: float = 5.0) -> list[asyncio.Task[bytes]]:
    """Start one exchange per name, each once the previous one has reached the upstream (a warm pool)."""
    tasks = []
    for name in names:
        n = len(up.received)
        tasks.append(exchange(pool, name, timeout))
        await until(received(up, n + 1))
    return tasks


def test_tcp_pipelined_queries_on_one_connection_answered_out_of_order() -> None:
    async def body(up: TCPUpstream, pool: TCPPool, stats: ResolveStats) -> None:
        a, b, c = await in_turn(up, pool, ["a.example.test", "b.example.test", "c.example.test"])
        assert len(up.conns) == 1  # size 1: all three share the connection
        ids = [m[0] << 8 | m[1] for _p, m in up.received]
        assert len(set(ids)) == 3  # each query got an ID of its own on the connection
        by_name = {qname_of(m): (p, m) for p, m in up.received}
        for n in ("c", "a", "b"):  # answered in another order than asked
            p, m = by_name[f"{n}.example.test."]
            p.send(reply_to(m))
        got = await asyncio.gather(a, b, c)
        assert [qname_of(r) for r in got] == ["a.example.test.", "b.example.test.", "c.example.test."]
        assert stats.spoofed == 0

    pool_test(body, size=1)


def test_tcp_reuses_an_idle_connection() -> None:
    async def body(up: TCPUpstream, pool: TCPPool, stats: ResolveStats) -> None:
        for _ in range(5):
            r = await exchange(pool)
            assert qname_of(r) == NAME + "."
        assert len(up.conns) == 1
        assert len(pool.conns) == 1

    pool_test(body, size=4, on_query=answer_now)


def test_tcp_new_connection_only_when_all_are_busy_up_to_size() -> None:
    async def body(up: TCPUpstream, pool: TCPPool, stats: ResolveStats) -> None:
        tasks = []
        for i in range(1, 4):  # each query finds every open connection busy: a new one, up to 3
            tasks.append(exchange(pool, f"q{i}.example.test"))
            await until(received(up, i))
            assert len(up.conns) == i
        for i in range(4, 8):  # at the cap: the least busy connection takes it, pipelined
            tasks.append(exchange(pool, f"q{i}.example.test"))
            await until(received(up, i))
        assert len(up.conns) == 3
        per_conn = sorted(sum(1 for p, _m in up.received if p is c) for c in up.conns)
        assert per_conn == [2, 2, 3]  # spread to the least busy each time
        for p, m in up.received:
            p.send(reply_to(m))
        got = await asyncio.gather(*tasks)
        assert [qname_of(r) for r in got] == [f"q{i}.example.test." for i in range(1, 8)]
        # All idle again: the next query takes an open connection rather than a new one.
        up.on_query = answer_now
        assert qname_of(await exchange(pool, "again.example.test")) == "again.example.test."
        assert len(up.conns) == 3

    pool_test(body, size=3)


def test_tcp_burst_on_a_cold_pool_stays_within_size() -> None:
    async def body(up: TCPUpstream, pool: TCPPool, stats: ResolveStats) -> None:
        tasks = [exchange(pool, f"q{i}.example.test") for i in range(6)]
        got = await asyncio.gather(*tasks)
        assert len(got) == 6
        assert len(up.conns) <= 2

    pool_test(body, size=2, on_query=answer_now)


def test_tcp_reply_with_unknown_id_is_spoofed_and_the_query_keeps_waiting() -> None:
    def spoof_then_answer(peer: Peer, q: bytes) -> None:
        good = reply_to(q)
        peer.send(bytes([good[0] ^ 0xFF, good[1] ^ 0xFF]) + good[2:])  # an ID nobody asked with
        peer.send(reply_to(q[:2] + query(0, "evil.example.test")[2:], "6.6.6.6"))  # right ID, other question
        peer.send(good)

    async def body(up: TCPUpstream, pool: TCPPool, stats: ResolveStats) -> None:
        r = await exchange(pool)
        msg = dns.message.from_wire(r)
        assert qname_of(r) == NAME + "." and str(msg.answer[0][0]) == "192.0.2.1"
        assert stats.spoofed == 2

    pool_test(body, on_query=spoof_then_answer)


def test_tcp_connection_closed_by_peer_fails_every_pending_query() -> None:
    async def body(up: TCPUpstream, pool: TCPPool, stats: ResolveStats) -> None:
        a, b = await in_turn(up, pool, ["a.example.test", "b.example.test"])
        assert len(up.conns) == 1
        assert up.conns[0].t is not None
        up.conns[0].t.close()
        for t in (a, b):
            with pytest.raises(UpstreamError) as e:
                await t
            assert not isinstance(e.value, UpstreamTimeout)  # failed at once, not after waiting
            assert "closed" in str(e.value)
        assert pool.conns == []  # forgotten: the next query opens a fresh connection
        up.on_query = answer_now
        r = await exchange(pool)
        assert qname_of(r) == NAME + "."
        assert len(up.conns) == 2

    pool_test(body, size=1)


def test_tcp_connect_refused_is_an_error() -> None:
    async def go() -> None:
        pool = TCPPool(("127.0.0.1", free_port()), 2, 5.0, ResolveStats())
        try:
            await pool.exchange(query(), question().lower(), 3.0)
        finally:
            pool.close()

    with pytest.raises(UpstreamError) as e:
        asyncio.run(go())
    assert not isinstance(e.value, UpstreamTimeout)


def test_tcp_timeout_abandons_the_query_and_frees_the_connection() -> None:
    async def body(up: TCPUpstream, pool: TCPPool, stats: ResolveStats) -> None:
        with pytest.raises(UpstreamTimeout):
            await exchange(pool, "slow.example.test", 0.2)
        (conn,) = pool.conns
        assert conn.pending == {}  # abandoned: nothing left waiting on the connection
        assert conn.idle is not None  # the idle timer runs again
        # The late reply finds nobody waiting: dropped as spoofed, and the connection stays usable.
        (peer, late), = up.received
        peer.send(reply_to(late))
        await until(lambda: stats.spoofed == 1)
        up.on_query = answer_now
        r = await exchange(pool)
        assert qname_of(r) == NAME + "."
        assert len(up.conns) == 1  # no new connection: the timed-out query did not keep it busy

    pool_test(body, size=4)


def test_tcp_idle_connection_is_closed_after_idle_timeout() -> None:
    async def body(up: TCPUpstream, pool: TCPPool, stats: ResolveStats) -> None:
        await exchange(pool)
        (peer,) = up.conns
        await until(lambda: peer.closed)
        await until(lambda: pool.conns == [])
        await exchange(pool)  # a new connection when needed again
        assert len(up.conns) == 2

    pool_test(body, idle=0.2, on_query=answer_now)


def test_tcp_abandoned_query_lets_the_idle_timer_close_the_connection() -> None:
    async def body(up: TCPUpstream, pool: TCPPool, stats: ResolveStats) -> None:
        with pytest.raises(UpstreamTimeout):
            await exchange(pool, timeout=0.1)
        (peer,) = up.conns
        await until(lambda: peer.closed)

    pool_test(body, idle=0.2)


def test_tcp_busy_connection_is_not_closed_by_the_idle_timer() -> None:
    async def body(up: TCPUpstream, pool: TCPPool, stats: ResolveStats) -> None:
        t = exchange(pool, timeout=5.0)
        await until(lambda: len(up.received) == 1)
        await asyncio.sleep(0.4)  # twice the idle timeout, with the query in flight
        (peer,) = up.conns
        assert not peer.closed
        peer.send(reply_to(up.received[0][1]))
        assert qname_of(await t) == NAME + "."

    pool_test(body, idle=0.2)


def test_tcp_pool_close_closes_its_connections() -> None:
    async def body(up: TCPUpstream, pool: TCPPool, stats: ResolveStats) -> None:
        await exchange(pool)
        pool.close()
        await until(lambda: all(p.closed for p in up.conns))

    pool_test(body, on_query=answer_now)


# --------------------------------------------------------------------------------------------------
# Losses noticed early: UDP retransmits, connections lost or stalled under their queries


def drop_first() -> Callable[[bytes], list[bytes]]:
    """A responder script that loses the first datagram and answers the rest."""
    count = [0]

    def respond(q: bytes) -> list[bytes]:
        count[0] += 1
        return [] if count[0] == 1 else [reply_to(q)]

    return respond


def test_udp_exchange_retransmits_the_same_datagram_after_a_silence() -> None:
    stats = ResolveStats()

    async def go() -> tuple[bytes, _Responder, tuple[str, int]]:
        t, p = await _responder(drop_first())
        peer = t.get_extra_info("sockname")
        try:
            return await udp_once(peer, stats, 3.0, retransmit=0.1), p, peer
        finally:
            t.close()

    r, p, peer = run(go)
    assert qname_of(r) == NAME + "."
    assert len(p.sources) == 2 and p.sources[0] == p.sources[1]  # again from the same socket
    assert p.queries[0] == p.queries[1]  # the same datagram: the same ID
    assert qid_of(r) == qid_of(p.queries[0])
    assert stats.retransmits == {(f"{peer[0]}:{peer[1]}", "udp"): 1}
    assert stats.spoofed == 0


def test_udp_second_reply_to_a_resent_query_is_not_a_spoof() -> None:
    """Both copies of a resent query answered: the query takes the first reply, the second is dropped quietly."""
    async def body(up: _Responder, pool: UDPPool, stats: ResolveStats) -> None:
        t = udp_ask(pool, retransmit=0.1)
        await until(lambda: len(up.queries) == 2)  # the first copy got no reply: resent
        for m, src in zip(up.queries, up.sources, strict=True):  # now both copies are answered
            up.t.sendto(reply_to(m), src)
        assert qname_of(await t) == NAME + "."
        # One more query on the same socket: its reply comes in after the second one (one socket pair,
        # in order), so by the time it is answered the second reply has been seen.
        up.respond = lambda q: [reply_to(q)]
        assert qname_of(await udp_ask(pool, "after.example.test")) == "after.example.test."
        assert stats.spoofed == 0

    udp_pool_test(body, size=1)


@pytest.mark.parametrize(("timeout", "sends"), [(0.15, 1), (0.25, 2), (0.6, 3)])
def test_udp_retransmits_leave_as_long_again_for_the_reply_and_stop_at_two(timeout: float, sends: int) -> None:
    """With 0.1 s: a resend at 0.1 s needs a try of 0.2 s or more, one at 0.2 s 0.3 s; there is no third."""
    stats = ResolveStats()

    async def go() -> _Responder:
        t, p = await _responder(lambda q: [])
        try:
            with pytest.raises(UpstreamTimeout):
                await udp_once(t.get_extra_info("sockname"), stats, timeout, retransmit=0.1)
            return p
        finally:
            t.close()

    p = run(go)
    assert len(p.sources) == sends
    assert sum(stats.retransmits.values()) == sends - 1


def test_tcp_lost_connection_raises_connection_lost_with_its_time() -> None:
    async def body(up: TCPUpstream, pool: TCPPool, stats: ResolveStats) -> None:
        (a,) = await in_turn(up, pool, ["a.example.test"])
        before = asyncio.get_running_loop().time()
        assert up.conns[0].t is not None
        up.conns[0].t.close()
        with pytest.raises(ConnectionLost) as e:
            await a
        assert e.value.at >= before

    pool_test(body, size=2)


def test_tcp_resend_after_a_loss_takes_a_connection_made_since() -> None:
    """A connection older than the loss may lead to the same dead pod: the resend opens a new one."""
    async def body(up: TCPUpstream, pool: TCPPool, stats: ResolveStats) -> None:
        up.on_query = answer_now
        await exchange(pool, "warm.example.test")  # one idle connection in the pool
        (old,) = pool.conns
        lost_at = asyncio.get_running_loop().time()
        r = await pool.exchange(query(0), question().lower(), 5.0, since=lost_at)
        assert qname_of(r) == NAME + "."
        assert len(up.conns) == 2 and len(pool.conns) == 2
        assert up.received[-1][0] is up.conns[1]  # the resend went on the new connection, not the idle old one
        assert old in pool.conns
        r = await exchange(pool, "later.example.test")  # without `since`, the old one serves again
        assert len(up.conns) == 2

    pool_test(body, size=2)


def test_tcp_resends_after_one_loss_share_one_new_connection() -> None:
    async def body(up: TCPUpstream, pool: TCPPool, stats: ResolveStats) -> None:
        lost_at = asyncio.get_running_loop().time()
        up.on_query = answer_now
        got = await asyncio.gather(*(pool.exchange(query(0, f"q{i}.example.test"),
                                                   question(f"q{i}.example.test").lower(), 5.0, since=lost_at)
                                     for i in range(5)))
        assert len(got) == 5
        assert len(up.conns) == 1  # they waited for the one being opened rather than each opening its own

    pool_test(body, size=1)


def test_tcp_connection_silent_for_a_whole_try_is_closed_as_stalled() -> None:
    async def go() -> None:
        up = TCPUpstream()  # never answers
        pool = TCPPool(await up.start(), 4, 10.0, ResolveStats(), stall_timeout=0.2)
        try:
            with pytest.raises(UpstreamTimeout):
                await pool.exchange(query(), question().lower(), 0.2)
            (peer,) = up.conns
            await until(lambda: peer.closed)  # stalled: closed rather than kept for the next query
            assert pool.conns == []
            up.on_query = answer_now
            assert qname_of(await pool.exchange(query(), question().lower(), 5.0)) == NAME + "."
            assert len(up.conns) == 2
        finally:
            pool.close()
            up.close()
            await asyncio.sleep(0)

    asyncio.run(go())


def test_tcp_stalled_connection_is_not_picked_and_its_queries_fail_at_once() -> None:
    async def go() -> None:
        up = TCPUpstream()
        pool = TCPPool(await up.start(), 1, 10.0, ResolveStats(), stall_timeout=0.2)
        loop = asyncio.get_running_loop()
        try:
            waiting = loop.create_task(pool.exchange(query(0, "stuck.example.test"),
                                                     question("stuck.example.test").lower(), 30.0))
            await until(received(up, 1))
            await asyncio.sleep(0.3)  # longer than the stall timeout, nothing received
            up.on_query = answer_now
            fresh = await pool.exchange(query(), question().lower(), 5.0)
            assert qname_of(fresh) == NAME + "."
            assert len(up.conns) == 2 and up.received[-1][0] is up.conns[1]  # a new connection took it
            with pytest.raises(ConnectionLost) as e:
                await waiting  # failed when its connection was closed, not after its 30 s
            assert "stalled" in str(e.value)
            assert up.conns[0].closed
        finally:
            pool.close()
            up.close()
            await asyncio.sleep(0)

    asyncio.run(go())


def test_tcp_connection_that_keeps_answering_is_not_stalled() -> None:
    """A slow query on a connection whose other queries are answered: the connection is alive."""
    async def body(up: TCPUpstream, pool: TCPPool, stats: ResolveStats) -> None:
        slow = exchange(pool, "slow.example.test", 30.0)
        await until(received(up, 1))
        up.on_query = answer_now
        for i in range(4):
            await exchange(pool, f"q{i}.example.test")
            await asyncio.sleep(0.1)  # 0.4 s in all, twice the stall timeout, with replies coming in
        assert len(up.conns) == 1 and not slow.done()
        (peer, m), *_ = up.received
        peer.send(reply_to(m))
        assert qname_of(await slow) == "slow.example.test."

    async def go() -> None:
        up = TCPUpstream()
        pool = TCPPool(await up.start(), 1, 10.0, ResolveStats(), stall_timeout=0.2)
        try:
            await body(up, pool, pool.stats)
        finally:
            pool.close()
            up.close()
            await asyncio.sleep(0)

    asyncio.run(go())


def test_tcp_cancelled_query_leaves_no_pending_entry() -> None:
    async def body(up: TCPUpstream, pool: TCPPool, stats: ResolveStats) -> None:
        t = exchange(pool)
        await until(received(up, 1))
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t
        (conn,) = pool.conns
        assert conn.pending == {}

    pool_test(body)


# --------------------------------------------------------------------------------------------------
# LoopRef


def test_loop_ref_follows_the_running_loop_from_one_run_to_the_next() -> None:
    ref = LoopRef()

    async def both() -> tuple[bool, bool]:
        loop = asyncio.get_running_loop()
        return ref() is loop, ref() is loop

    assert run(both) == (True, True)
    assert run(both) == (True, True)  # a new loop: looked up afresh, not the closed one kept
