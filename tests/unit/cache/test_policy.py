"""nodelocal.cache.policy: what is cached for how long (RFC 2308), and the entry that serves an answer."""

from __future__ import annotations

import struct

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nodelocal import WireError
from nodelocal.cache.policy import UNCAPPED, TTLPolicy, decide, entry_for
from nodelocal.cache.store import DENIAL, SUCCESS
from nodelocal.dns import wire

SETTINGS = settings(max_examples=200, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])

QNAME = "web.default.svc.cluster.local."
ZONE = "cluster.local."


def response(rcode: int = dns.rcode.NOERROR, answer: tuple[int, ...] = (), authority: tuple[int, ...] = (),
             additional: tuple[int, ...] = (), soa: tuple[int, int] | None = None, edns: bool = True,
             tc: bool = False, qname: str = QNAME) -> bytes:
    """An upstream answer: A records with the given TTLs per section, maybe an SOA (ttl, minimum)."""
    q = dns.message.make_query(qname, "A", use_edns=0 if edns else False)
    r = dns.message.make_response(q)
    r.set_rcode(rcode)
    for i, ttl in enumerate(answer):
        r.answer.append(dns.rrset.from_text(qname, ttl, "IN", "A", f"10.0.0.{i}"))
    for i, ttl in enumerate(authority):
        r.authority.append(dns.rrset.from_text(ZONE, ttl, "IN", "NS", f"ns{i}.{ZONE}"))
    if soa is not None:
        ttl, minimum = soa
        r.authority.append(dns.rrset.from_text(
            ZONE, ttl, "IN", "SOA", f"ns.dns.{ZONE} hostmaster.{ZONE} 1 7200 1800 86400 {minimum}"))
    for i, ttl in enumerate(additional):
        r.additional.append(dns.rrset.from_text(f"ns{i}.{ZONE}", ttl, "IN", "A", f"10.9.0.{i}"))
    if tc:
        r.flags |= dns.flags.TC
    return r.to_wire(max_size=65535)


DEFAULT = TTLPolicy()


def verdict(buf: bytes, policy: TTLPolicy = DEFAULT) -> tuple[int, int] | None:
    return decide(buf, wire.scan(buf), policy)


def key_for(query: bytes, do: bool = False) -> bytes:
    qend = wire.question_end(query)
    return wire.question_key(query, qend, wire.key_suffix(bool(query[2] & 1), bool(query[3] & 0x10), do))


def render(e: object, qname: str = QNAME, edns: bool = True, now: float = 100.0) -> dns.message.Message:
    q = dns.message.make_query(qname, "A", use_edns=0 if edns else False, id=4242).to_wire()
    out = e.render(q, wire.question_end(q), 0, edns, now)  # type: ignore[attr-defined]
    m = dns.message.from_wire(out, one_rr_per_rrset=True)
    assert m.id == 4242
    return m


def ttls_of(m: dns.message.Message) -> list[int]:
    return [rr.ttl for sec in (m.answer, m.authority, m.additional) for rr in sec]


# --------------------------------------------------------------------------------------------------
# decide: positive answers


@pytest.mark.parametrize(
    ("answer", "authority", "additional", "policy", "ttl"),
    [
        ((100, 50), (200,), (), TTLPolicy(), 30),  # min 50, cut to success max 30
        ((100, 50), (200,), (), TTLPolicy(success_max_ttl=1000), 50),
        ((100, 50), (20,), (), TTLPolicy(success_max_ttl=1000), 20),  # authority counts too
        ((100,), (), (7,), TTLPolicy(success_max_ttl=1000), 7),  # and additional
        ((1,), (), (), TTLPolicy(), 5),  # raised to min 5
        ((0,), (), (), TTLPolicy(), 5),
        ((12,), (), (), TTLPolicy(min_ttl=12, success_max_ttl=12), 12),
    ],
)
def test_positive_ttl_is_min_over_records_clamped(answer: tuple[int, ...], authority: tuple[int, ...],
                                                  additional: tuple[int, ...], policy: TTLPolicy, ttl: int) -> None:
    assert verdict(response(answer=answer, authority=authority, additional=additional), policy) == (SUCCESS, ttl)


def test_positive_with_zero_ttl_and_no_minimum_is_not_cached() -> None:
    assert verdict(response(answer=(0, 300)), TTLPolicy(min_ttl=0)) is None


@SETTINGS
@given(
    st.lists(st.integers(0, 0x7FFFFFFF), min_size=1, max_size=4),
    st.lists(st.integers(0, 0x7FFFFFFF), max_size=3),
    st.lists(st.integers(0, 0x7FFFFFFF), max_size=3),
    st.integers(0, 100), st.integers(0, 100000), st.booleans(),
)
def test_positive_ttl_property(answer: list[int], authority: list[int], additional: list[int], lo: int,
                               hi: int, edns: bool) -> None:
    policy = TTLPolicy(min_ttl=lo, success_max_ttl=hi)
    ttl = max(lo, min(min(answer + authority + additional), hi))
    expect = (SUCCESS, ttl) if ttl > 0 else None
    assert verdict(response(answer=tuple(answer), authority=tuple(authority), additional=tuple(additional),
                            edns=edns), policy) == expect


# --------------------------------------------------------------------------------------------------
# decide: negative answers (RFC 2308)


@pytest.mark.parametrize("rcode", [dns.rcode.NXDOMAIN, dns.rcode.NOERROR])
@pytest.mark.parametrize(
    ("soa", "policy", "ttl"),
    [
        ((100, 20), TTLPolicy(), 20),  # min(SOA TTL, MINIMUM)
        ((20, 100), TTLPolicy(), 20),
        ((3600, 600), TTLPolicy(), 30),  # cut to denial max
        ((3600, 600), TTLPolicy(denial_max_ttl=5), 5),
        ((3600, 600), TTLPolicy(success_max_ttl=1, denial_max_ttl=300), 300),  # the denial max, not success
        ((3, 60), TTLPolicy(), 5),  # raised to min
    ],
)
def test_negative_ttl_from_soa(rcode: int, soa: tuple[int, int], policy: TTLPolicy, ttl: int) -> None:
    assert verdict(response(rcode, soa=soa), policy) == (DENIAL, ttl)


def test_negative_finds_the_soa_after_other_authority_records() -> None:
    assert verdict(response(dns.rcode.NXDOMAIN, authority=(3600,), soa=(60, 10))) == (DENIAL, 10)


def test_nxdomain_after_a_cname_is_a_denial() -> None:
    q = dns.message.make_query(QNAME, "A")
    r = dns.message.make_response(q)
    r.set_rcode(dns.rcode.NXDOMAIN)
    r.answer.append(dns.rrset.from_text(QNAME, 300, "IN", "CNAME", "gone.example."))
    r.authority.append(dns.rrset.from_text("example.", 900, "IN", "SOA", "ns.example. h.example. 1 2 3 4 15"))
    assert verdict(r.to_wire()) == (DENIAL, 15)


@pytest.mark.parametrize("rcode", [dns.rcode.NXDOMAIN, dns.rcode.NOERROR])
def test_negative_without_soa_is_not_cached(rcode: int) -> None:
    assert verdict(response(rcode)) is None
    assert verdict(response(rcode, authority=(300,), additional=(300,))) is None  # a referral


def test_soa_in_the_additional_section_does_not_count() -> None:
    q = dns.message.make_query(QNAME, "A")
    r = dns.message.make_response(q)
    r.set_rcode(dns.rcode.NXDOMAIN)
    r.additional.append(dns.rrset.from_text(ZONE, 60, "IN", "SOA", "ns. h. 1 2 3 4 60"))
    assert verdict(r.to_wire()) is None


def test_negative_with_zero_ttl_and_no_minimum_is_not_cached() -> None:
    assert verdict(response(dns.rcode.NXDOMAIN, soa=(0, 60)), TTLPolicy(min_ttl=0)) is None


# --------------------------------------------------------------------------------------------------
# decide: everything else


def test_servfail_is_cached_for_servfail_ttl() -> None:
    assert verdict(response(dns.rcode.SERVFAIL)) == (DENIAL, 5)
    assert verdict(response(dns.rcode.SERVFAIL), TTLPolicy(servfail_ttl=17)) == (DENIAL, 17)
    assert verdict(response(dns.rcode.SERVFAIL), TTLPolicy(servfail_ttl=0)) is None


@pytest.mark.parametrize("rcode", [dns.rcode.REFUSED, dns.rcode.FORMERR, dns.rcode.NOTIMP, dns.rcode.YXDOMAIN,
                                   dns.rcode.NOTAUTH])
def test_other_rcodes_are_not_cached(rcode: int) -> None:
    assert verdict(response(rcode, answer=(300,), soa=(300, 300))) is None


@pytest.mark.parametrize("rcode", [dns.rcode.NOERROR, dns.rcode.NXDOMAIN, dns.rcode.SERVFAIL])
def test_truncated_answers_are_not_cached(rcode: int) -> None:
    assert verdict(response(rcode, answer=(300,), soa=(300, 300), tc=True)) is None


@pytest.mark.parametrize("rcode", [dns.rcode.BADVERS, dns.rcode.BADCOOKIE, 0x100 | dns.rcode.NXDOMAIN])
def test_extended_rcode_in_opt_is_not_cached(rcode: int) -> None:
    q = dns.message.make_query(QNAME, "A", use_edns=0)
    r = dns.message.make_response(q)
    r.answer.append(dns.rrset.from_text(QNAME, 300, "IN", "A", "10.0.0.1"))
    r.authority.append(dns.rrset.from_text(ZONE, 300, "IN", "SOA", "ns. h. 1 2 3 4 60"))
    r.set_rcode(rcode)
    buf = r.to_wire()
    sc = wire.scan(buf)
    assert sc.opt is not None and buf[sc.opt.ttl_offset] != 0
    assert decide(buf, sc, TTLPolicy()) is None


# --------------------------------------------------------------------------------------------------
# entry_for


def test_uncacheable_answers_keep_the_upstream_ttls() -> None:
    buf = response(answer=(7200, 300), additional=(86400,), tc=True)
    query = dns.message.make_query(QNAME, "A", use_edns=0).to_wire()
    e, ok = entry_for(key_for(query), buf, False, 100.0, TTLPolicy())
    assert not ok and e.ttl == UNCAPPED
    m = render(e)
    assert ttls_of(m) == [7200, 300, 86400]
    assert m.flags & dns.flags.TC


def test_uncacheable_refused_is_served_as_it_came() -> None:
    buf = response(dns.rcode.REFUSED, answer=(1234,))
    query = dns.message.make_query(QNAME, "A").to_wire()
    e, ok = entry_for(key_for(query), buf, False, 100.0, TTLPolicy())
    assert not ok
    m = render(e)
    assert m.rcode() == dns.rcode.REFUSED and ttls_of(m) == [1234]


def test_cacheable_answers_cap_each_ttl_at_the_entry_ttl() -> None:
    # min_ttl raises the entry to 5 s; the record saying 2 keeps 2, the one saying 100 is cut to 5.
    buf = response(answer=(2, 100), authority=(3600,))
    query = dns.message.make_query(QNAME, "A").to_wire()
    e, ok = entry_for(key_for(query), buf, False, 100.0, TTLPolicy())
    assert ok and (e.kind, e.ttl, e.expires) == (SUCCESS, 5, 105.0)
    assert ttls_of(render(e)) == [2, 5, 5]
    assert ttls_of(render(e, now=103.0)) == [0, 2, 2]


def test_cacheable_denial_caps_the_soa_ttl() -> None:
    buf = response(dns.rcode.NXDOMAIN, soa=(3600, 600))
    query = dns.message.make_query(QNAME, "A").to_wire()
    e, ok = entry_for(key_for(query), buf, False, 100.0, TTLPolicy())
    assert ok and (e.kind, e.ttl, e.rcode) == (DENIAL, 30, dns.rcode.NXDOMAIN)
    m = render(e)
    assert m.rcode() == dns.rcode.NXDOMAIN
    assert [(rr.rdtype, rr.ttl) for rr in m.authority] == [(dns.rdatatype.SOA, 30)]
    assert m.authority[0][0].minimum == 600  # rdata untouched


def test_entry_strips_the_upstream_opt_and_keeps_header_flags() -> None:
    q = dns.message.make_query(QNAME, "A", use_edns=0, want_dnssec=True)
    r = dns.message.make_response(q)
    r.flags |= dns.flags.AA | dns.flags.AD | dns.flags.RA
    r.answer.append(dns.rrset.from_text(QNAME, 20, "IN", "A", "10.0.0.1"))
    r.additional.append(dns.rrset.from_text("x." + ZONE, 20, "IN", "A", "10.0.0.2"))
    r.use_edns(0, dns.flags.DO, 4000)
    e, ok = entry_for(key_for(q.to_wire(), True), r.to_wire(), True, 100.0, TTLPolicy())
    assert ok
    q2 = dns.message.make_query(QNAME, "A", use_edns=False).to_wire()
    plain_bytes = e.render(q2, wire.question_end(q2), 0, False, 100.0)
    plain = dns.message.from_wire(plain_bytes)
    assert plain.edns == -1 and struct.unpack_from(">H", plain_bytes, 10)[0] == 1
    assert plain.flags & dns.flags.AA and plain.flags & dns.flags.AD and plain.flags & dns.flags.RA
    with_opt = render(e)
    assert with_opt.edns == 0 and with_opt.payload == 1232 and with_opt.ednsflags & dns.flags.DO
    assert len(with_opt.additional) == 1


def opt_not_last(edns_do: bool = False) -> tuple[bytes, bytes]:
    """(query, answer) where the OPT record sits before another additional record."""
    q = dns.message.make_query(QNAME, "A", use_edns=0)
    r = dns.message.make_response(q)
    r.answer.append(dns.rrset.from_text(QNAME, 300, "IN", "A", "10.0.0.1"))
    r.additional.append(dns.rrset.from_text("ns." + ZONE, 300, "IN", "A", "10.0.0.53"))
    r.use_edns(0, dns.flags.DO if edns_do else 0, 1232)
    buf = r.to_wire()
    sc = wire.scan(buf)
    assert sc.opt is not None and sc.opt.end == len(buf)
    glue = sc.records[-1]
    moved = buf[: glue.offset] + buf[sc.opt.offset : sc.opt.end] + buf[glue.offset : glue.end]
    assert wire.scan(moved).opt is not None and wire.scan(moved).opt.end != len(moved)  # type: ignore[union-attr]
    return q.to_wire(), moved


@pytest.mark.parametrize("client_edns", [True, False])
def test_opt_not_last_in_additional_is_handled(client_edns: bool) -> None:
    query, buf = opt_not_last()
    e, ok = entry_for(key_for(query), buf, False, 100.0, TTLPolicy())
    assert ok and e.ttl == 30
    m = render(e, edns=client_edns)
    assert [(rr.name.to_text(), rr.ttl) for rr in m.answer] == [(QNAME, 30)]
    assert [(rr.name.to_text(), rr.ttl, rr[0].address) for rr in m.additional] == [("ns." + ZONE, 30, "10.0.0.53")]
    assert m.edns == (0 if client_edns else -1)


def test_opt_not_last_uncacheable_is_still_served() -> None:
    query, buf = opt_not_last()
    e, ok = entry_for(key_for(query), buf, False, 100.0, TTLPolicy(min_ttl=0, success_max_ttl=0))
    assert not ok
    m = render(e)
    assert ttls_of(m) == [300, 300] and m.edns == 0


def test_entry_for_rejects_answers_without_exactly_one_question() -> None:
    q = dns.message.make_query(QNAME, "A")
    r = dns.message.make_response(q)
    r.question.append(dns.rrset.RRset(dns.name.from_text("other."), 1, 1))
    r.answer.append(dns.rrset.from_text(QNAME, 300, "IN", "A", "10.0.0.1"))
    with pytest.raises(WireError):
        entry_for(key_for(q.to_wire()), r.to_wire(), False, 0.0, TTLPolicy())
    r.question = []
    with pytest.raises(WireError):
        entry_for(key_for(q.to_wire()), r.to_wire(), False, 0.0, TTLPolicy())


@SETTINGS
@given(
    st.lists(st.integers(0, 100000), min_size=1, max_size=4),
    st.lists(st.integers(0, 100000), max_size=3),
    st.integers(0, 60), st.integers(0, 600), st.integers(0, 1000),
)
def test_entry_ttls_property(answer: list[int], additional: list[int], lo: int, hi: int, age: int) -> None:
    """Every served TTL is min(record TTL, entry TTL) minus the age, floored at 0; uncached ones pass through."""
    buf = response(answer=tuple(answer), additional=tuple(additional))
    query = dns.message.make_query(QNAME, "A").to_wire()
    e, ok = entry_for(key_for(query), buf, False, 100.0, TTLPolicy(min_ttl=lo, success_max_ttl=hi))
    cap = e.ttl if ok else UNCAPPED
    expect = [max(0, min(t, cap) - age) for t in answer + additional]
    assert ttls_of(render(e, now=100.0 + age)) == expect
