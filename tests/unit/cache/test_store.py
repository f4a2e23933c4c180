"""nodelocal.cache.store: LRU order, caps, byte budget, expiry with a fake clock, and Entry rendering."""

from __future__ import annotations

import dns.flags
import dns.message
import dns.name
import dns.rrset
import pytest

from nodelocal.cache.policy import TTLPolicy, entry_for
from nodelocal.cache.store import DENIAL, ENTRY_OVERHEAD, SUCCESS, Entry, Store
from nodelocal.dns import wire

HDR = bytes([0x81, 0x80, 0, 1, 0, 0, 0, 0, 0, 0])  # QR RD RA NOERROR, QDCOUNT 1, nothing else


def entry(key: bytes, *, stored: float = 0.0, ttl: int = 30, template: bytes = b"") -> Entry:
    """An entry with no records; the store only looks at key, size and expiry."""
    return Entry(key, 0, SUCCESS, HDR, template, (), (), False, stored, ttl)


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


# --------------------------------------------------------------------------------------------------
# LRU and caps


def test_eviction_takes_the_least_recently_put() -> None:
    s = Store(1 << 20)
    part = s.partition("cluster.local", SUCCESS, 2)
    for k in (b"a", b"b", b"c"):
        s.put(entry(k), part)
    assert list(part.lru) == [b"b", b"c"]
    assert set(s.index) == {b"b", b"c"}
    assert part.evictions == 1


def test_get_marks_most_recently_used() -> None:
    s = Store(1 << 20)
    part = s.partition(".", SUCCESS, 2)
    s.put(entry(b"a"), part)
    s.put(entry(b"b"), part)
    assert s.get(b"a", 1.0) is not None  # a is now the most recent
    s.put(entry(b"c"), part)
    assert s.get(b"b", 1.0) is None
    assert s.get(b"a", 1.0) is not None and s.get(b"c", 1.0) is not None
    assert list(part.lru) == [b"a", b"c"]


def test_get_counts_hits_on_the_entry_and_the_partition() -> None:
    s = Store(1 << 20)
    part = s.partition(".", SUCCESS, 10)
    e = entry(b"a")
    s.put(e, part)
    s.get(b"a", 1.0)
    s.get(b"a", 2.0)
    s.get(b"missing", 2.0)
    assert e.hits == 2 and part.hits == 2


def test_partitions_have_their_own_caps() -> None:
    s = Store(1 << 20)
    small = s.partition("cluster.local", SUCCESS, 1)
    big = s.partition("cluster.local", DENIAL, 3)
    other = s.partition(".", SUCCESS, 2)
    for i in range(3):
        s.put(entry(b"big%d" % i), big)
        s.put(entry(b"other%d" % i), other)
    s.put(entry(b"s1"), small)
    s.put(entry(b"s2"), small)
    assert list(small.lru) == [b"s2"]
    assert list(big.lru) == [b"big0", b"big1", b"big2"]
    assert list(other.lru) == [b"other1", b"other2"]
    assert (small.evictions, big.evictions, other.evictions) == (1, 0, 1)
    assert s.entries(SUCCESS) == 3 and s.entries(DENIAL) == 3


def test_partition_is_created_once_and_follows_the_latest_cap() -> None:
    s = Store(1 << 20)
    p = s.partition("x", SUCCESS, 5)
    assert s.partition("x", SUCCESS, 7) is p and p.capacity == 7
    assert s.partition("x", DENIAL, 7) is not p


def test_capacity_zero_stores_nothing() -> None:
    s = Store(1 << 20)
    part = s.partition(".", DENIAL, 0)
    s.put(entry(b"a"), part)
    assert s.get(b"a", 0.0) is None and not s.index and s.bytes == 0


def test_byte_budget_holds_across_partitions() -> None:
    size = entry(b"k00", template=b"x" * 100).size
    assert size == 3 + 200 + ENTRY_OVERHEAD
    s = Store(5 * size)
    a = s.partition("a", SUCCESS, 100)
    b = s.partition("b", SUCCESS, 100)
    for i in range(4):
        s.put(entry(b"a%02d" % i, template=b"x" * 100), a)
    s.put(entry(b"b00", template=b"x" * 100), b)
    assert s.bytes == 5 * size
    s.put(entry(b"b01", template=b"x" * 100), b)  # over budget: the biggest partition gives its LRU
    assert s.bytes == 5 * size <= s.max_bytes
    assert list(a.lru) == [b"a01", b"a02", b"a03"]
    assert list(b.lru) == [b"b00", b"b01"]
    assert a.evictions == 1 and b.evictions == 0
    assert s.bytes == sum(e.size for e in s.index.values()) == a.bytes + b.bytes


def test_byte_budget_with_many_puts_never_overshoots() -> None:
    s = Store(10_000)
    parts = [s.partition(z, k, 1000) for z in ("a", "b", "c") for k in (SUCCESS, DENIAL)]
    for i in range(300):
        s.put(entry(b"key%d" % i, template=b"y" * (i % 37) * 10), parts[i % len(parts)])
        assert s.bytes <= s.max_bytes
        assert s.bytes == sum(e.size for e in s.index.values()) == sum(p.bytes for p in parts)
        assert len(s.index) == sum(len(p.lru) for p in parts)


def test_entry_bigger_than_the_budget_is_not_stored() -> None:
    s = Store(1000)
    part = s.partition(".", SUCCESS, 10)
    s.put(entry(b"small"), part)
    s.put(entry(b"huge", template=b"z" * 1000), part)
    assert b"huge" not in s.index and b"small" in s.index


def test_re_put_replaces_the_entry() -> None:
    s = Store(1 << 20)
    part = s.partition(".", SUCCESS, 10)
    old = entry(b"a", template=b"old")
    new = entry(b"a", template=b"newer!")
    s.put(old, part)
    s.put(entry(b"b"), part)
    s.put(new, part)
    assert s.get(b"a", 0.0) is new
    assert list(part.lru) == [b"b", b"a"]
    assert s.bytes == part.bytes == new.size + entry(b"b").size
    assert old.part is None


def test_re_put_into_another_partition_moves_the_entry() -> None:
    s = Store(1 << 20)
    ok = s.partition(".", SUCCESS, 10)
    neg = s.partition(".", DENIAL, 10)
    s.put(entry(b"a"), ok)
    s.put(entry(b"a"), neg)
    assert not ok.lru and list(neg.lru) == [b"a"] and ok.bytes == 0


# --------------------------------------------------------------------------------------------------
# Expiry


def test_entries_expire_and_sweep_reclaims_them() -> None:
    clock = Clock(1000.0)
    s = Store(1 << 20, now=clock)
    part = s.partition(".", SUCCESS, 10)
    s.put(entry(b"short", stored=clock(), ttl=5), part)
    s.put(entry(b"long", stored=clock(), ttl=60), part)
    clock.t = 1004.999
    assert s.get(b"short", clock()) is not None
    clock.t = 1005.0
    assert s.get(b"short", clock()) is None  # expired at stored + ttl exactly
    assert s.get(b"long", clock()) is not None
    assert b"short" in s.index  # not yet reclaimed
    assert s.sweep(clock()) == 1
    assert b"short" not in s.index and s.expired_reclaimed == 1
    assert s.bytes == part.bytes == entry(b"long").size
    clock.t = 2000.0
    assert s.sweep(clock()) == 1
    assert s.expired_reclaimed == 2 and s.bytes == 0 and not s.index


def test_sweep_looks_at_no_more_than_its_budget() -> None:
    s = Store(1 << 20)
    part = s.partition(".", SUCCESS, 10)
    for k in (b"a", b"b", b"c"):
        s.put(entry(k, ttl=1), part)
    assert s.sweep(10.0, budget=2) == 2
    assert list(part.lru) == [b"c"]
    assert s.sweep(10.0) == 1 and s.expired_reclaimed == 3


def test_sweep_keeps_live_entries() -> None:
    s = Store(1 << 20)
    part = s.partition(".", SUCCESS, 10)
    s.put(entry(b"a", ttl=100), part)
    assert s.sweep(50.0) == 0 and s.expired_reclaimed == 0 and b"a" in s.index


# --------------------------------------------------------------------------------------------------
# Clear


def test_clear_one_zone_keeps_the_others() -> None:
    s = Store(1 << 20)
    c_ok = s.partition("cluster.local", SUCCESS, 10)
    c_neg = s.partition("cluster.local", DENIAL, 10)
    root = s.partition(".", SUCCESS, 10)
    s.put(entry(b"c1"), c_ok)
    s.put(entry(b"c2"), c_neg)
    s.put(entry(b"r1"), root)
    s.clear("cluster.local")
    assert set(s.index) == {b"r1"}
    assert not c_ok.lru and not c_neg.lru and c_ok.bytes == c_neg.bytes == 0
    assert s.bytes == root.bytes
    s.clear()
    assert not s.index and s.bytes == 0


# --------------------------------------------------------------------------------------------------
# Entry: TTL countdown and rendering, read back with dnspython


def make_answer(qname: str = "web.default.svc.cluster.local", n: int = 2, ttls: tuple[int, ...] = (300, 10),
                edns: bool = True) -> tuple[bytes, bytes]:
    """(query, upstream answer) with n A records whose TTLs cycle through `ttls`."""
    q = dns.message.make_query(qname, "A", use_edns=0 if edns else False)
    r = dns.message.make_response(q)
    r.flags |= dns.flags.RA | dns.flags.AA
    for i in range(n):
        r.answer.append(dns.rrset.from_text(qname + ".", ttls[i % len(ttls)], "IN", "A", f"10.0.{i // 250}.{i % 250}"))
    return q.to_wire(), r.to_wire(max_size=65535)


UNCLAMPED = TTLPolicy(min_ttl=0, success_max_ttl=3600)


def cached(query: bytes, answer: bytes, *, do: bool = False, now: float = 100.0,
           policy: TTLPolicy = UNCLAMPED) -> Entry:
    qend = wire.question_end(query)
    key = wire.question_key(query, qend, wire.key_suffix(bool(query[2] & 1), bool(query[3] & 0x10), do))
    e, ok = entry_for(key, answer, do, now, policy)
    assert ok
    return e


def client_query(qname: str, qid: int, edns: bool = True, payload: int = 1232) -> tuple[bytes, int]:
    q = dns.message.make_query(qname, "A", use_edns=0 if edns else False, payload=payload, id=qid).to_wire()
    return q, wire.question_end(q)


# min_ttl 100 over TTLs (300, 10): the entry lives 100 s, the records say 100 and 10 (each capped at it).
SPREAD = TTLPolicy(min_ttl=100, success_max_ttl=3600)


@pytest.mark.parametrize(
    ("elapsed", "expect"),
    [(0.0, [100, 10]), (0.999, [100, 10]), (1.0, [99, 9]), (9.5, [91, 1]), (10.0, [90, 0]),
     (11.7, [89, 0]), (99.99, [1, 0]), (400.0, [0, 0])],
)
def test_body_at_counts_down_whole_seconds_and_floors_at_zero(elapsed: float, expect: list[int]) -> None:
    query, answer = make_answer()
    e = cached(query, answer, now=100.0, policy=SPREAD)
    q, qend = client_query("web.default.svc.cluster.local", 7)
    m = dns.message.from_wire(e.render(q, qend, 0, True, 100.0 + elapsed), one_rr_per_rrset=True)
    assert [rr.ttl for rr in m.answer] == expect


def test_body_at_is_patched_once_per_second() -> None:
    query, answer = make_answer()
    e = cached(query, answer, now=100.0, policy=SPREAD)
    first = e.body_at(103.1)
    assert e.body_at(103.9) is first  # same whole second: no new bytes
    assert e.body_at(104.0) != first


def test_body_at_going_back_and_forth_in_time() -> None:
    query, answer = make_answer()
    e = cached(query, answer, now=100.0, policy=SPREAD)
    q, qend = client_query("web.default.svc.cluster.local", 7)
    for t, expect in ((105.0, [95, 5]), (100.0, [100, 10]), (150.2, [50, 0]), (105.5, [95, 5])):
        m = dns.message.from_wire(e.render(q, qend, 0, False, t), one_rr_per_rrset=True)
        assert [rr.ttl for rr in m.answer] == expect, t


def test_render_uses_the_clients_id_and_spelling() -> None:
    query, answer = make_answer("web.default.svc.cluster.local")
    e = cached(query, answer)
    q, qend = client_query("WeB.DeFault.SVC.cluster.LOCAL", 0xBEEF)
    m = dns.message.from_wire(e.render(q, qend, 0, True, 100.0))
    assert m.id == 0xBEEF
    assert [label.decode() for label in m.question[0].name.labels] == ["WeB", "DeFault", "SVC", "cluster", "LOCAL", ""]
    assert m.flags & dns.flags.QR and m.flags & dns.flags.AA and m.flags & dns.flags.RA
    assert [rr.to_text() for rr in m.answer[0]] == ["10.0.0.0", "10.0.0.1"]


@pytest.mark.parametrize("do", [False, True])
def test_render_appends_opt_iff_the_client_sent_edns(do: bool) -> None:
    query, answer = make_answer(edns=True)
    e = cached(query, answer, do=do)
    q, qend = client_query("web.default.svc.cluster.local", 1, edns=True)
    with_opt = dns.message.from_wire(e.render(q, qend, 0, True, 100.0))
    assert with_opt.edns == 0 and with_opt.payload == 1232
    assert bool(with_opt.ednsflags & dns.flags.DO) == do
    q, qend = client_query("web.default.svc.cluster.local", 1, edns=False)
    plain_bytes = e.render(q, qend, 0, False, 100.0)
    plain = dns.message.from_wire(plain_bytes)
    assert plain.edns == -1
    assert plain_bytes[10:12] == b"\x00\x00"  # ARCOUNT counts no OPT
    assert len(plain.answer[0]) == 2


def test_render_without_edns_when_upstream_sent_none() -> None:
    query, answer = make_answer(edns=False)
    e = cached(query, answer)
    q, qend = client_query("web.default.svc.cluster.local", 1, edns=True)
    m = dns.message.from_wire(e.render(q, qend, 0, True, 100.0))
    assert m.edns == 0 and len(m.answer[0]) == 2


def test_render_sets_tc_when_over_the_limit() -> None:
    query, answer = make_answer(n=60)
    e = cached(query, answer)
    q, qend = client_query("web.default.svc.cluster.local", 0x1234)
    full = e.render(q, qend, 0, True, 100.0)
    assert len(full) > 512
    assert e.render(q, qend, len(full), True, 100.0) == full  # exactly at the limit still fits
    tc = e.render(q, qend, len(full) - 1, True, 100.0)
    m = dns.message.from_wire(tc)
    assert m.flags & dns.flags.TC and m.id == 0x1234
    assert not m.answer and not m.authority and not m.additional
    assert m.question[0].name == dns.name.from_text("web.default.svc.cluster.local")
    assert m.edns == 0  # the OPT is kept for an EDNS client
    q, qend = client_query("web.default.svc.cluster.local", 0x1234, edns=False)
    m = dns.message.from_wire(e.render(q, qend, 512, False, 100.0))
    assert m.flags & dns.flags.TC and m.edns == -1 and not m.answer


def test_render_with_limit_zero_never_truncates() -> None:
    query, answer = make_answer(n=400)
    e = cached(query, answer)
    q, qend = client_query("web.default.svc.cluster.local", 1)
    out = e.render(q, qend, 0, True, 100.0)
    assert len(out) > 4096
    m = dns.message.from_wire(out)
    assert not m.flags & dns.flags.TC and len(m.answer[0]) == 400


def test_entry_size_counts_key_template_twice_and_overhead() -> None:
    e = entry(b"0123456789", template=b"t" * 50)
    assert e.size == 10 + 100 + ENTRY_OVERHEAD
    assert e.expires == e.stored + e.ttl


# --------------------------------------------------------------------------------------------------
# The AD bit (RFC 6840 §5.8): only to a client that set AD or DO


def ad_answer(do: bool, n: int = 2) -> tuple[bytes, bytes]:
    """(query, upstream answer with AD, AA and RA set) for web.default.svc.cluster.local A."""
    q = dns.message.make_query("web.default.svc.cluster.local", "A", use_edns=0, want_dnssec=do)
    r = dns.message.make_response(q)
    r.flags |= dns.flags.AD | dns.flags.AA | dns.flags.RA
    for i in range(n):
        r.answer.append(dns.rrset.from_text(q.question[0].name, 300, "IN", "A", f"10.0.{i // 250}.{i % 250}"))
    return q.to_wire(), r.to_wire(max_size=65535)


def ad_query(ad: bool, do: bool, edns: bool = True) -> tuple[bytes, int]:
    q = dns.message.make_query("web.default.svc.cluster.local", "A", use_edns=0 if edns else False,
                               want_dnssec=do, flags=dns.flags.RD | (dns.flags.AD if ad else 0), id=77)
    data = q.to_wire()
    return data, wire.question_end(data)


@pytest.mark.parametrize("edns", [True, False])
def test_ad_is_cleared_for_a_client_with_neither_ad_nor_do(edns: bool) -> None:
    query, answer = ad_answer(do=False)
    e = cached(query, answer)
    q, qend = ad_query(ad=False, do=False, edns=edns)
    m = dns.message.from_wire(e.render(q, qend, 0, edns, 100.0))
    assert not m.flags & dns.flags.AD
    # Nothing else changes: the other flags, the rcode, the records, the OPT.
    assert m.flags & dns.flags.QR and m.flags & dns.flags.AA and m.flags & dns.flags.RA and m.flags & dns.flags.RD
    assert m.rcode() == 0 and len(m.answer[0]) == 2 and (m.edns == 0) == edns


@pytest.mark.parametrize("edns", [True, False])
def test_ad_is_kept_for_a_client_that_set_ad(edns: bool) -> None:
    query, answer = ad_answer(do=False)
    e = cached(query, answer)
    q, qend = ad_query(ad=True, do=False, edns=edns)
    m = dns.message.from_wire(e.render(q, qend, 0, edns, 100.0))
    assert m.flags & dns.flags.AD and m.flags & dns.flags.AA and m.flags & dns.flags.RA
    # Byte for byte the answer but for the ID and AD: the two headers differ in that one bit only.
    q2, qend2 = ad_query(ad=False, do=False, edns=edns)
    plain = e.render(q2, qend2, 0, edns, 100.0)
    with_ad = e.render(q, qend, 0, edns, 100.0)
    assert with_ad[3] == plain[3] | wire.AD and with_ad[:3] + with_ad[4:] == plain[:3] + plain[4:]


@pytest.mark.parametrize("ad", [False, True])
def test_ad_is_kept_for_a_do_client(ad: bool) -> None:
    query, answer = ad_answer(do=True)
    e = cached(query, answer, do=True)  # the DO bit is in the key: this entry serves DO queries only
    q, qend = ad_query(ad=ad, do=True)
    m = dns.message.from_wire(e.render(q, qend, 0, True, 100.0))
    assert m.flags & dns.flags.AD and m.ednsflags & dns.flags.DO


@pytest.mark.parametrize(("ad", "edns"), [(False, True), (False, False), (True, True), (True, False)])
def test_truncated_reply_follows_the_ad_rule(ad: bool, edns: bool) -> None:
    query, answer = ad_answer(do=False, n=60)
    e = cached(query, answer)
    q, qend = ad_query(ad=ad, do=False, edns=edns)
    m = dns.message.from_wire(e.render(q, qend, 512, edns, 100.0))
    assert m.flags & dns.flags.TC and not m.answer
    assert bool(m.flags & dns.flags.AD) == ad
    assert m.flags & dns.flags.AA and m.flags & dns.flags.RA


def test_entries_without_ad_have_nothing_to_strip() -> None:
    query, answer = make_answer()
    assert cached(query, answer).noad is None
    query, answer = ad_answer(do=True)
    assert cached(query, answer, do=True).noad is None  # DO entries keep AD for everyone they serve
    query, answer = ad_answer(do=False)
    assert cached(query, answer).noad is not None


# --------------------------------------------------------------------------------------------------
# serve-stale (RFC 8767): expired entries kept for the partition's stale window


def test_get_stale_only_within_the_window_and_sweep_keeps_them_until_it_ends() -> None:
    s = Store(1 << 20)
    part = s.partition("cluster.local", SUCCESS, 10, stale=100.0)
    s.put(entry(b"a", stored=0.0, ttl=30), part)
    assert s.get_stale(b"a", 29.0) is None  # live: not stale
    assert s.get(b"a", 31.0) is None and s.get_stale(b"a", 31.0) is not None  # expired, within the window
    assert s.sweep(129.0) == 0 and b"a" in s.index  # 99 s past expiry: kept
    assert s.get_stale(b"a", 130.0) is None  # the window ended
    assert s.sweep(130.0) == 1 and b"a" not in s.index and s.expired_reclaimed == 1
    off = s.partition(".", SUCCESS, 10)  # stale 0: reclaimed at expiry, as before
    s.put(entry(b"b", stored=0.0, ttl=30), off)
    assert s.get_stale(b"b", 30.0) is None and s.sweep(30.0) == 1


def test_partition_stale_window_follows_the_config() -> None:
    s = Store(1 << 20)
    part = s.partition("z", SUCCESS, 10, stale=5.0)
    assert s.partition("z", SUCCESS, 10, stale=0.0) is part and part.stale == 0.0


def test_render_stale_sets_every_ttl_and_keeps_the_records() -> None:
    q = dns.message.make_query("a.example.", "A")
    r = dns.message.make_response(q)
    r.answer.append(dns.rrset.from_text("a.example.", 300, "IN", "A", "192.0.2.1", "192.0.2.2"))
    r.authority.append(dns.rrset.from_text("example.", 3600, "IN", "NS", "ns.example."))
    e, ok = entry_for(b"k", r.to_wire(), False, 0.0, TTLPolicy(5, 30, 30, 5))
    assert ok
    wq = q.to_wire()
    out = dns.message.from_wire(e.render_stale(wq, len(wq), 512, False, 30))
    assert out.id == q.id and out.rcode() == 0
    assert [rr.ttl for rr in out.answer + out.authority] == [30, 30]
    assert sorted(str(x) for x in out.answer[0]) == ["192.0.2.1", "192.0.2.2"]
    live = dns.message.from_wire(e.render(wq, len(wq), 512, False, 10.0))  # render itself is unchanged
    assert [rr.ttl for rr in live.answer] == [20]
