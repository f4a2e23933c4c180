"""The UDP hot path (UDPServer.datagram_received) recognises queries from bytes; it must agree with the slow path.

A hit is answered synchronously, inside datagram_received, with exactly the bytes Resolver.answer (the slow
path, the oracle here) would send for the same query and store; anything else goes to the resolver.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Awaitable, Callable
from typing import TypeVar

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.rrset
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from nodelocal.cache.metrics import CacheStats
from nodelocal.cache.policy import TTLPolicy, entry_for
from nodelocal.cache.store import SUCCESS, Store
from nodelocal.config import load
from nodelocal.dns import wire
from nodelocal.resolve.metrics import ResolveStats
from nodelocal.resolve.resolver import Resolver
from nodelocal.server.metrics import ServerStats
from nodelocal.server.udp import UDPServer
from tests.fakes import FakeTransport

SETTINGS = settings(max_examples=200, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MAX_UDP = 1400
NOW = 5000.0
CLIENT = ("10.1.2.3", 40000)
T = TypeVar("T")


class RecordingResolver:
    """Stands in for the slow path: records what it is handed and answers nothing."""

    def __init__(self) -> None:
        self.seen: list[bytes] = []

    def zone_of(self, query: bytes) -> int:
        return 0  # no zones here: counted under zone="dropped"

    async def answer(self, query: bytes, tcp: bool) -> bytes | None:
        self.seen.append(query)
        return None


class Rig:
    """A UDPServer on a fake transport, a store, and the real Resolver over the same store as the oracle."""

    def __init__(self) -> None:
        self.store = Store(1 << 24, now=lambda: NOW)
        self.stats = ServerStats()
        # minimal_any off: ANY answers are never cached by the agent, but here the store is filled directly
        # for every type, and the oracle must render them as the fast path does.
        cfg = load(None, {"listen": {"max_udp_payload": MAX_UDP}, "resolve": {"minimal_any": False}}, env={},
                   resolv_conf="/nonexistent")
        # No upstream servers: a miss SERVFAILs.
        self.oracle = Resolver(cfg, self.store, CacheStats(), ResolveStats(), now=lambda: NOW)
        self.slow = RecordingResolver()
        self.server = UDPServer(self.slow, self.store, self.stats, MAX_UDP, now=lambda: NOW)  # type: ignore[arg-type]
        self.transport = FakeTransport()
        self.server.connection_made(self.transport)  # type: ignore[arg-type]
        self.part = self.store.partition(".", SUCCESS, 100000)

    def cache(self, key: bytes, query: dns.message.Message, n_answers: int = 2, ad: bool = False) -> None:
        """Store the answer a dnspython upstream would give `query`, under `key` (with AD if `ad`)."""
        r = dns.message.make_response(query)
        r.flags |= dns.flags.RA | (dns.flags.AD if ad else 0)
        for i in range(n_answers):
            r.answer.append(dns.rrset.from_text(query.question[0].name, 300, "IN", "A", f"10.0.{i // 200}.{i % 200}"))
        e, ok = entry_for(key, r.to_wire(max_size=65535), bool(query.ednsflags & dns.flags.DO), NOW - 3,
                          TTLPolicy(min_ttl=0, success_max_ttl=3600))
        assert ok
        self.store.put(e, self.part)

    def hot(self, data: bytes) -> bytes | None:
        """Feed one datagram; the reply if one was sent synchronously (a hit)."""
        before = len(self.transport.sent)
        self.server.datagram_received(data, CLIENT)
        sent = self.transport.sent[before:]
        assert len(sent) <= 1
        if sent:
            assert sent[0][1] == CLIENT
            return sent[0][0]
        return None


def run(factory: Callable[[], Awaitable[T]]) -> T:
    async def main() -> T:
        return await factory()

    return asyncio.run(main())


def slow_key(data: bytes) -> bytes:
    """The cache key exactly as Resolver.answer computes it (steps 3-5 accepted)."""
    qend = wire.question_end(data)
    opt = wire.parse_opt(data, qend) if data[11] else None
    return wire.question_key(data, qend, wire.key_suffix(bool(data[2] & wire.RD), bool(data[3] & wire.CD),
                                                         bool(opt and opt.do)))


def respell(name: dns.name.Name, pattern: list[bool]) -> dns.name.Name:
    out = []
    for i, label in enumerate(name.labels):
        out.append(bytes((c ^ 0x20) if (pattern[i % len(pattern)] and 0x61 <= (c | 0x20) <= 0x7A) else c
                         for c in label))
    return dns.name.Name(out)


@st.composite
def client_queries(draw: st.DrawFn) -> dns.message.Message:
    name = draw(st.sampled_from(["web.default.svc.cluster.local", "www.example.com", "a.b", "x", "."]))
    qname = respell(dns.name.from_text(name), draw(st.lists(st.booleans(), min_size=1, max_size=5)))
    qtype = draw(st.sampled_from([1, 28, 33, 12, 16, 64, 65, 99, 255]))
    flags = 0
    for bit in (dns.flags.RD, dns.flags.CD, dns.flags.AD):
        if draw(st.booleans()):
            flags |= bit
    edns = draw(st.booleans())
    qid = draw(st.integers(0, 0xFFFF))
    if not edns:
        return dns.message.make_query(qname, qtype, use_edns=False, flags=flags, id=qid)
    payload = draw(st.sampled_from([0, 100, 511, 512, 513, 1232, MAX_UDP - 1, MAX_UDP, MAX_UDP + 1, 4096, 65535]))
    options = draw(st.sampled_from([[], [dns.edns.GenericOption(65001, b"cookie!!")]]))
    return dns.message.make_query(qname, qtype, use_edns=0, want_dnssec=draw(st.booleans()), payload=payload,
                                  options=options, flags=flags, id=qid)


# --------------------------------------------------------------------------------------------------
# Hits: the fast path answers synchronously with the slow path's bytes


@SETTINGS
@given(client_queries(), st.integers(1, 40), st.booleans())
def test_hit_is_answered_synchronously_with_the_slow_paths_reply(q: dns.message.Message, n: int, ad: bool) -> None:
    rig = Rig()
    data = q.to_wire()
    rig.cache(slow_key(data), q, n, ad=ad)

    async def go() -> tuple[bytes | None, bytes | None]:
        fast = rig.hot(data)  # no await in between: a hit is sent from inside datagram_received
        slow = await rig.oracle.answer(data, tcp=False)
        return fast, slow

    fast, slow = run(go)
    assert fast is not None, "a cached answer to a plain query must be a hit"
    assert fast == slow
    assert rig.slow.seen == []
    m = dns.message.from_wire(fast)
    assert m.id == q.id and m.question[0].name.labels == q.question[0].name.labels
    assert (m.edns >= 0) == (q.edns >= 0)
    limit = 512 if q.edns < 0 else max(512, min(q.payload, MAX_UDP))
    assert len(fast) <= limit
    assert bool(m.flags & dns.flags.TC) == (len(m.answer) == 0)
    assert rig.stats.queries["udp"] == 1 and rig.stats.rcodes[0] == 1
    # RFC 6840 §5.8: the upstream's AD only to a client that set AD or DO.
    assert bool(m.flags & dns.flags.AD) == (ad and bool(q.flags & dns.flags.AD or q.ednsflags & dns.flags.DO))


def test_all_eight_flag_combinations_have_their_own_entry() -> None:
    combos = [(rd, cd, do) for rd in (False, True) for cd in (False, True) for do in (False, True)]

    async def go() -> None:
        for rd, cd, do in combos:
            flags = (dns.flags.RD if rd else 0) | (dns.flags.CD if cd else 0)
            q = dns.message.make_query("Web.Example.com", "A", use_edns=0, want_dnssec=do, flags=flags)
            if not do and rd:
                q.use_edns(False)  # the common case, without EDNS
            data = q.to_wire()
            qend = wire.question_end(data)
            base = wire.question_key(data, qend, b"")
            assert slow_key(data) == base + wire.key_suffix(rd, cd, do)
            rig = Rig()
            # every other combination cached, not this one: a miss, handed to the slow path
            for other in combos:
                if other != (rd, cd, do):
                    rig.cache(base + wire.key_suffix(*other), q)
            assert rig.hot(data) is None, (rd, cd, do)
            await asyncio.sleep(0)
            assert rig.slow.seen == [data]
            rig.cache(slow_key(data), q)
            assert rig.hot(data) is not None, (rd, cd, do)

    run(go)


@pytest.mark.parametrize("edns", [False, True])
def test_hot_path_sends_ad_only_to_clients_that_set_ad_or_do(edns: bool) -> None:
    rig = Rig()
    plain = dns.message.make_query("ad.example", "A", use_edns=0 if edns else False, id=1)
    rig.cache(slow_key(plain.to_wire()), plain, ad=True)
    with_ad = dns.message.make_query("ad.example", "A", use_edns=0 if edns else False,
                                     flags=dns.flags.RD | dns.flags.AD, id=2)
    do = dns.message.make_query("ad.example", "A", use_edns=0, want_dnssec=True, id=3)
    rig.cache(slow_key(do.to_wire()), do, ad=True)  # DO is in the key: its own entry, built for DO
    expect = [(plain, False), (with_ad, True), (do, True)]

    async def go() -> list[tuple[bytes | None, bytes | None]]:
        out = []
        # Twice over, interleaved: the second round comes from the reply memo, keyed on the AD bit too.
        for q, _ad in expect + expect:
            fast = rig.hot(q.to_wire())
            out.append((fast, await rig.oracle.answer(q.to_wire(), tcp=False)))
        return out

    replies = run(go)
    assert rig.slow.seen == []
    assert len(rig.server.memo) == 3
    for (q, ad), (fast, slow) in zip(expect + expect, replies, strict=True):
        assert fast is not None and fast == slow
        m = dns.message.from_wire(fast)
        assert m.id == q.id and bool(m.flags & dns.flags.AD) == ad, q
        assert m.flags & dns.flags.RA and m.flags & dns.flags.QR and len(m.answer[0]) == 2


def test_hot_path_truncated_reply_follows_the_ad_rule() -> None:
    rig = Rig()
    plain = dns.message.make_query("ad.example", "A", use_edns=False, id=1)
    rig.cache(slow_key(plain.to_wire()), plain, n_answers=60, ad=True)  # > 512 bytes: TC to a non-EDNS client
    with_ad = dns.message.make_query("ad.example", "A", use_edns=False, flags=dns.flags.RD | dns.flags.AD, id=2)

    async def go() -> tuple[bytes | None, bytes | None]:
        return rig.hot(plain.to_wire()), rig.hot(with_ad.to_wire())

    tc_plain, tc_ad = run(go)
    assert tc_plain is not None and tc_ad is not None
    m_plain, m_ad = dns.message.from_wire(tc_plain), dns.message.from_wire(tc_ad)
    assert m_plain.flags & dns.flags.TC and m_ad.flags & dns.flags.TC and not m_plain.answer
    assert not m_plain.flags & dns.flags.AD and m_ad.flags & dns.flags.AD


def test_hit_counts_and_lru_touch() -> None:
    rig = Rig()
    q = dns.message.make_query("a.example", "A")
    other = dns.message.make_query("b.example", "A")
    rig.cache(slow_key(q.to_wire()), q)
    rig.cache(slow_key(other.to_wire()), other)
    assert next(iter(rig.part.lru)) == slow_key(q.to_wire())
    assert rig.hot(q.to_wire()) is not None
    e = rig.store.index[slow_key(q.to_wire())]
    assert e.hits == 1 and rig.part.hits == 1
    assert list(rig.part.lru)[-1] == slow_key(q.to_wire())


def test_expired_entry_is_a_miss() -> None:
    rig = Rig()
    q = dns.message.make_query("a.example", "A")
    rig.cache(slow_key(q.to_wire()), q)
    e = rig.store.index[slow_key(q.to_wire())]
    e.expires = NOW  # expired exactly now

    async def go() -> None:
        assert rig.hot(q.to_wire()) is None
        await asyncio.sleep(0)
        assert rig.slow.seen == [q.to_wire()]

    run(go)


def test_https_query_does_not_hit_an_entry_for_type_97() -> None:
    # HTTPS is type 65 (0x0041, an 'A' byte); the hot path lowercases the whole question, type included.
    rig = Rig()
    q97 = dns.message.make_query("example.com", 97)
    rd_only = wire.key_suffix(True, False, False)
    key97 = dns.name.from_text("example.com").to_wire() + struct.pack(">HH", 97, 1) + rd_only
    rig.cache(key97, q97)
    https = dns.message.make_query("example.com", 65).to_wire()

    async def go() -> bytes | None:
        return rig.hot(https)

    assert run(go) is None


# --------------------------------------------------------------------------------------------------
# Misses and unusual layouts go to the slow path, never answered inline


def _header(qid: int = 0x4242, f1: int = 0x01, f2: int = 0x00, qd: int = 1, an: int = 0, ns: int = 0,
            ar: int = 0) -> bytes:
    return struct.pack(">HBBHHHH", qid, f1, f2, qd, an, ns, ar)


QUESTION = b"\x07example\x03com\x00\x00\x01\x00\x01"


@pytest.mark.parametrize(
    "data",
    [
        _header(f1=0x81) + QUESTION,  # QR set
        _header(f1=0x01 | 0x20) + QUESTION,  # opcode 4 (NOTIFY)
        _header(qd=2) + QUESTION + QUESTION,
        _header(an=1) + QUESTION,
        _header(ar=2) + QUESTION + wire.opt_record(1232, False) * 2,
        _header(ar=1) + QUESTION + b"\x00\x00\x01\x00\x01\x00\x00\x00\x00\x00\x00",  # not an OPT
        _header(ar=1) + QUESTION + b"\x00\x00\x29\x04\xd0\x00\x01\x00\x00\x00\x00",  # EDNS version 1
        _header(ar=1) + QUESTION + wire.opt_record(1232, False) + b"\x00",  # trailing byte
        _header()[:11] + b"\x00\x00",  # too short to be a query
    ],
)
def test_unusual_layouts_go_to_the_slow_path(data: bytes) -> None:
    rig = Rig()
    q = dns.message.make_query("example.com", "A", use_edns=0)
    rig.cache(slow_key(q.to_wire()), q)
    q2 = dns.message.make_query("example.com", "A", use_edns=False)
    rig.cache(slow_key(q2.to_wire()), q2)

    async def go() -> None:
        assert rig.hot(data) is None
        await asyncio.sleep(0)
        assert rig.slow.seen == [data]

    run(go)


def test_opt_cut_short_goes_to_the_slow_path_without_raising() -> None:
    # ARCOUNT 1 and the first bytes of a root OPT, then the datagram ends: the slow path owes a FORMERR.
    tails = [b"\x00\x00\x29", b"\x00\x00\x29\x04\xd0", b"\x00\x00\x29\x04\xd0\x00\x00\x80",
             wire.opt_record(1232, False)[:-1]]
    for tail in tails:
        rig = Rig()
        data = _header(ar=1) + QUESTION + tail

        async def go(rig: Rig = rig, data: bytes = data) -> None:
            assert rig.hot(data) is None
            await asyncio.sleep(0)
            assert rig.slow.seen == [data]

        run(go)


def test_truncated_question_does_not_hit_an_entry_whose_class_byte_looks_like_a_flags_suffix() -> None:
    # A cached question of class 0x0080 asked with RD=1 (key = question, no suffix), then a datagram whose
    # question lacks its last byte, sent with RD=0 (suffix 0x80): name+type+first class byte + 0x80 equals
    # the cached key. The slow path answers that datagram FORMERR; the hot path must not serve the entry.
    rig = Rig()
    cached_q = dns.message.make_query("example.com", "A", rdclass=0x80)
    rig.cache(slow_key(cached_q.to_wire()), cached_q)
    data = _header(f1=0x00) + QUESTION[:-2] + b"\x00"  # class cut to its first byte, RD clear

    async def go() -> tuple[bytes | None, bytes | None]:
        fast = rig.hot(data)
        slow = await rig.oracle.answer(data, tcp=False)
        return fast, slow

    fast, slow = run(go)
    assert slow is not None and slow[3] & 0xF == wire.FORMERR
    assert fast is None, f"hot path answered a malformed query: {fast!r}"


# --------------------------------------------------------------------------------------------------
# Anything at all: never raises, and a hit is always what the slow path would send


@st.composite
def datagrams(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """(a well-formed query whose answer is cached, a datagram made from it: as is, cut, mutated)."""
    q = draw(client_queries()).to_wire()
    data = bytearray(q)
    how = draw(st.sampled_from(["as is", "cut", "flip", "counts", "append", "header bits"]))
    if how == "cut":  # often within the last bytes: the OPT record and the question's type and class
        del data[draw(st.one_of(st.integers(0, len(data) - 1), st.integers(max(0, len(data) - 16), len(data) - 1))):]
    elif how == "flip":
        for _ in range(draw(st.integers(1, 3))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    elif how == "counts":
        data[4:12] = draw(st.binary(min_size=8, max_size=8))
    elif how == "append":
        data += draw(st.binary(min_size=1, max_size=12))
    elif how == "header bits":
        data[2] = draw(st.integers(0, 255))
        data[3] = draw(st.integers(0, 255))
    return q, bytes(data)


_EDNS_Q = dns.message.make_query("example.com", "A", use_edns=0, id=1).to_wire()
_CLASS80_Q = dns.message.make_query("example.com", "A", rdclass=0x80, id=2).to_wire()


@SETTINGS
@given(datagrams())
@example((_EDNS_Q, _EDNS_Q[:-5]))  # ARCOUNT 1, OPT cut after its rdata length's first byte
@example((_CLASS80_Q, _CLASS80_Q[:2] + b"\x00" + _CLASS80_Q[3:-1]))  # RD clear, class cut to its first byte
def test_hot_path_never_raises_and_agrees_with_the_slow_path(case: tuple[bytes, bytes]) -> None:
    query, data = case
    rig = Rig()
    rig.cache(slow_key(query), dns.message.from_wire(query))

    async def go() -> tuple[bytes | None, bytes | None]:
        fast = rig.hot(data)
        if fast is None:
            return None, None
        return fast, await rig.oracle.answer(data, tcp=False)

    fast, slow = run(go)
    if fast is not None:
        assert fast == slow


def _ttls(reply: bytes) -> list[int]:
    return [rrset.ttl for rrset in dns.message.from_wire(reply).answer]


def test_reply_memo_follows_the_ttl_second_replacement_and_expiry() -> None:
    clock = [NOW]
    store = Store(1 << 24, now=lambda: clock[0])
    server = UDPServer(RecordingResolver(), store, ServerStats(), MAX_UDP, now=lambda: clock[0])  # type: ignore[arg-type]
    transport = FakeTransport()
    server.connection_made(transport)  # type: ignore[arg-type]
    part = store.partition(".", SUCCESS, 100)
    q = dns.message.make_query("memo.example.", "A", use_edns=False)
    data = q.to_wire()

    def put(ttl: int, addr: str) -> None:
        r = dns.message.make_response(q)
        r.answer.append(dns.rrset.from_text("memo.example.", ttl, "IN", "A", addr))
        e, ok = entry_for(slow_key(data), r.to_wire(), False, clock[0], TTLPolicy(min_ttl=0, success_max_ttl=3600))
        assert ok
        store.put(e, part)

    def ask(qid: int) -> bytes | None:
        before = len(transport.sent)
        server.datagram_received(struct.pack(">H", qid) + data[2:], CLIENT)
        return transport.sent[-1][0] if len(transport.sent) > before else None

    put(10, "192.0.2.1")
    first = ask(1)
    assert first is not None and len(server.memo) == 1
    clock[0] += 0.5
    again = ask(2)  # from the memo: same reply bytes but for the client's ID
    assert again is not None and again[2:] == first[2:] and again[:2] == b"\x00\x02"
    clock[0] += 0.6  # 1.1 s after storing: the TTLs have gone down by one, the memo must not serve 10
    assert _ttls(ask(3) or b"") == [9]
    put(10, "192.0.2.99")  # a replaced entry: the memo's old reply is dead
    assert "192.0.2.99" in dns.message.from_wire(ask(4) or b"").answer[0].to_text()
    clock[0] += 11  # past expiry: a miss, to the slow path (a task, so inside a loop), nothing sent inline

    async def expired() -> bytes | None:
        return ask(5)

    assert run(expired) is None


# --------------------------------------------------------------------------------------------------
# overload: misses shed before any work, late answers dropped, hits answered throughout


class HeldResolver:
    """A slow path that holds every query until released; the clock moves while it holds."""

    def __init__(self, clock: list[float], takes: float = 0.0) -> None:
        self.clock = clock
        self.takes = takes
        self.release = asyncio.Event()
        self.seen: list[bytes] = []

    def zone_of(self, query: bytes) -> int:
        return 0  # no zones here: counted under zone="dropped"

    async def answer(self, query: bytes, tcp: bool) -> bytes | None:
        self.seen.append(query)
        await self.release.wait()
        self.clock[0] += self.takes
        return wire.error_reply(query, wire.SERVFAIL)


def overload_rig(takes: float = 0.0, max_pending: int = 3) -> tuple[Rig, HeldResolver, list[float]]:
    rig = Rig()
    clock = [NOW]
    held = HeldResolver(clock, takes)
    rig.server = UDPServer(held, rig.store, rig.stats, MAX_UDP, now=lambda: clock[0],  # type: ignore[arg-type]
                           client_timeout=2.0, max_pending=max_pending)
    rig.server.connection_made(rig.transport)  # type: ignore[arg-type]
    return rig, held, clock


def test_misses_past_max_pending_are_shed_while_hits_are_answered() -> None:
    async def body() -> None:
        rig, held, _clock = overload_rig(max_pending=3)
        q = dns.message.make_query("cached.example.", "A")
        rig.cache(slow_key(q.to_wire()), q)
        for i in range(10):
            rig.hot(dns.message.make_query(f"miss{i}.example.", "A").to_wire())
        await asyncio.sleep(0)
        assert len(held.seen) == 3 and rig.stats.shed == {"busy": 7, "late": 0} and rig.stats.pending == 3
        for _ in range(5):  # the slow path is full, and hits are still answered at once
            q.id = (q.id + 1) & 0xFFFF
            reply = rig.hot(q.to_wire())
            assert reply is not None and dns.message.from_wire(reply).answer
        held.release.set()
        await asyncio.sleep(0.01)
        assert rig.stats.pending == 0 and len(rig.transport.sent) == 5 + 3  # the three held ones answered
        rig.hot(dns.message.make_query("again.example.", "A").to_wire())  # room again
        await asyncio.sleep(0.01)
        assert len(held.seen) == 4 and rig.stats.shed["busy"] == 7

    run(body)


def test_an_answer_later_than_the_client_timeout_is_not_sent() -> None:
    async def body() -> None:
        rig, held, _clock = overload_rig(takes=2.5)  # the upstream answers after the client gave up
        rig.hot(dns.message.make_query("slow.example.", "A").to_wire())
        held.release.set()
        await asyncio.sleep(0.01)
        assert rig.transport.sent == [] and rig.stats.shed["late"] == 1
        assert sum(rig.stats.rcodes) == 0  # not counted as a response: none was sent
        held.takes = 1.0  # in time: answered
        rig.hot(dns.message.make_query("quick.example.", "A").to_wire())
        await asyncio.sleep(0.01)
        assert len(rig.transport.sent) == 1 and rig.stats.rcodes[wire.SERVFAIL] == 1

    run(body)


def test_a_query_that_waited_in_the_loop_past_the_timeout_gets_no_work() -> None:
    async def body() -> None:
        rig, held, clock = overload_rig()
        held.release.set()
        rig.hot(dns.message.make_query("queued.example.", "A").to_wire())
        clock[0] += 3.0  # the loop was busy (or the CPU quota ran out) before the task could start
        await asyncio.sleep(0.01)
        assert held.seen == [] and rig.transport.sent == [] and rig.stats.shed["late"] == 1

    run(body)


def test_reply_memo_bytes_are_counted_bounded_and_cover_what_it_holds() -> None:
    """The memo's bytes go into the store's count (nodelocal_cache_bytes); past the store's memo_max the
    memo is cleared and its bytes leave the count; what it holds (tracemalloc) is within the count."""
    import gc
    import tracemalloc
    store = Store(1 << 20, now=lambda: NOW)  # memo_max: 128 KiB
    server = UDPServer(RecordingResolver(), store, ServerStats(), MAX_UDP, now=lambda: NOW)  # type: ignore[arg-type]

    class Discard:  # keeps nothing of what is sent: only the memo is measured
        def sendto(self, data: bytes, addr: object) -> None:
            pass

    server.connection_made(Discard())  # type: ignore[arg-type]
    part = store.partition(".", SUCCESS, 100000)
    queries = []
    for i in range(600):
        q = dns.message.make_query(f"memo{i}.example.", "A", use_edns=bool(i % 2))
        r = dns.message.make_response(q)
        r.answer.append(dns.rrset.from_text(f"memo{i}.example.", 300, "IN", "A", "192.0.2.1", "192.0.2.2"))
        data = q.to_wire()
        e, _ok = entry_for(slow_key(data), r.to_wire(), False, NOW, TTLPolicy(min_ttl=0, success_max_ttl=3600))
        store.put(e, part)
        queries.append(data)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for data in queries[:300]:
            server.datagram_received(data, CLIENT)
        gc.collect()
        real = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(server.memo) == 300
    assert store.memo_bytes == server.memo_bytes and real <= server.memo_bytes <= 2 * real
    for data in queries[300:]:
        server.datagram_received(data, CLIENT)
    assert store.memo_bytes <= store.memo_max + 1024  # cleared when past it, then refilled
    assert len(server.memo) < 600
    server.clear_memo()
    assert store.memo_bytes == 0 and not server.memo
