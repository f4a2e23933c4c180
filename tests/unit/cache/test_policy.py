"""nodelocal.cache.policy: what is cached for how long (RFC 2308), and the entry that serves an answer."""

from __future__ import annotations

import struct

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nodelocal import WireError
from nodelocal.cache.policy import UNCAPPED, TTLPolicy, decide, entry_for, read_name
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


# --------------------------------------------------------------------------------------------------
# decide: CNAME/DNAME chains (RFC 2308 §2.2.1: NODATA after a chain is a negative answer)

CLUSTER = TTLPolicy(denial_max_ttl=5)  # the cluster zone's clamps (config: denial_max_ttl 5)


def chained(qtype: str = "A", chain: tuple[tuple[str, int], ...] = (("alias.example.", 300),),
            data: tuple[tuple[str, str, str, int], ...] = (), soa: tuple[int, int] | None = (900, 600),
            rcode: int = dns.rcode.NOERROR, qname: str = QNAME, dname: tuple[str, str, int] | None = None,
            flags: int = 0) -> bytes:
    """An upstream answer to (qname, qtype): CNAMEs qname -> chain[0] -> chain[1] ... (target, ttl), then
    `data` records (owner, type, rdata, ttl), maybe a DNAME (owner, target, ttl) first, maybe an SOA."""
    q = dns.message.make_query(qname, qtype, use_edns=0)
    r = dns.message.make_response(q)
    r.set_rcode(rcode)
    r.flags |= flags
    if dname is not None:
        r.answer.append(dns.rrset.from_text(dname[0], dname[2], "IN", "DNAME", dname[1]))
    owner = qname
    for target, ttl in chain:
        r.answer.append(dns.rrset.from_text(owner, ttl, "IN", "CNAME", target))
        owner = target
    for name, rtype, rdata, ttl in data:
        r.answer.append(dns.rrset.from_text(name, ttl, "IN", rtype, rdata))
    if soa is not None:
        r.authority.append(dns.rrset.from_text(
            "example.", soa[0], "IN", "SOA", f"ns.example. h.example. 1 7200 1800 86400 {soa[1]}"))
    return r.to_wire(max_size=65535)


@pytest.mark.parametrize(
    ("chain", "soa", "policy", "ttl"),
    [
        ((("alias.example.", 300),), (900, 600), CLUSTER, 5),  # the cluster zone's denial cap, not success's 30
        ((("alias.example.", 300),), (900, 600), DEFAULT, 30),
        ((("alias.example.", 300),), (100, 20), DEFAULT, 20),  # min(SOA TTL, MINIMUM)
        ((("alias.example.", 300),), (20, 100), DEFAULT, 20),
        ((("alias.example.", 12),), (900, 600), DEFAULT, 12),  # the CNAME's own TTL bounds the entry
        ((("a.example.", 300), ("b.example.", 300), ("c.example.", 9)), (900, 600), DEFAULT, 9),
        ((("alias.example.", 300),), (900, 600), TTLPolicy(success_max_ttl=1, denial_max_ttl=300), 300),
    ],
)
def test_cname_chain_without_data_is_nodata(chain: tuple[tuple[str, int], ...], soa: tuple[int, int],
                                            policy: TTLPolicy, ttl: int) -> None:
    assert verdict(chained(chain=chain, soa=soa), policy) == (DENIAL, ttl)


def test_cname_chain_without_data_and_without_soa_is_not_cached() -> None:
    assert verdict(chained(soa=None)) is None
    assert verdict(chained(chain=(("a.example.", 300), ("b.example.", 300)), soa=None)) is None


def test_cname_chain_nodata_entry_serves_the_chain_as_a_denial() -> None:
    buf = chained(qtype="AAAA", soa=(3600, 600))
    query = dns.message.make_query(QNAME, "AAAA").to_wire()
    e, ok = entry_for(key_for(query), buf, False, 100.0, CLUSTER)
    assert ok and (e.kind, e.ttl, e.rcode) == (DENIAL, 5, dns.rcode.NOERROR)
    q = dns.message.make_query(QNAME, "AAAA", use_edns=0, id=4242).to_wire()
    m = dns.message.from_wire(e.render(q, wire.question_end(q), 0, True, 100.0))
    assert [(rr.rdtype, rr.ttl) for rr in m.answer] == [(dns.rdatatype.CNAME, 5)]
    assert [(rr.rdtype, rr.ttl) for rr in m.authority] == [(dns.rdatatype.SOA, 5)]


@pytest.mark.parametrize(
    ("qtype", "chain", "data"),
    [
        ("A", (("alias.example.", 300),), (("alias.example.", "A", "10.0.0.1", 300),)),
        ("AAAA", (("a.example.", 300), ("b.example.", 300)), (("b.example.", "AAAA", "fd00::1", 300),)),
        # names compare case-insensitively (RFC 4343); dnspython writes one spelling here (it compresses
        # case-insensitively): test_chain_names_compare_case_insensitively has distinct spellings
        ("A", (("Alias.EXAMPLE.", 300),), (("aLIAS.example.", "A", "10.0.0.1", 300),)),
        ("TXT", (("alias.example.", 300),), (("alias.example.", "TXT", '"x"', 300),)),
    ],
)
def test_cname_chain_ending_in_the_asked_type_is_a_success(qtype: str, chain: tuple[tuple[str, int], ...],
                                                           data: tuple[tuple[str, str, str, int], ...]) -> None:
    # An SOA in authority (some servers add one) must not turn a positive answer into a denial.
    assert verdict(chained(qtype=qtype, chain=chain, data=data, soa=None)) == (SUCCESS, 30)
    assert verdict(chained(qtype=qtype, chain=chain, data=data, soa=(900, 600))) == (SUCCESS, 30)


def test_cname_chain_with_data_off_the_chain_is_nodata() -> None:
    # An A record for a name the chain never reaches answers nothing about the question.
    buf = chained(data=(("elsewhere.example.", "A", "10.0.0.1", 300),), soa=(900, 600))
    assert verdict(buf, CLUSTER) == (DENIAL, 5)
    # Data of another type at the end of the chain is not data of the asked type either.
    buf = chained(qtype="AAAA", data=(("alias.example.", "A", "10.0.0.1", 300),), soa=(900, 600))
    assert verdict(buf, CLUSTER) == (DENIAL, 5)


def spelled(qname: str, cname_owner: str, target: str, data_owner: str, qtype: int = 1, data_type: int = 1) -> bytes:
    """A NOERROR answer with no name compressed (dnspython compresses case-insensitively, so each name
    is written as spelled): question, CNAME cname_owner -> target, one record at data_owner, an SOA."""
    def rr(owner: str, rtype: int, rdata: bytes) -> bytes:
        return dns.name.from_text(owner).to_wire() + struct.pack(">HHIH", rtype, 1, 300, len(rdata)) + rdata

    data = b"\x0a\x00\x00\x01" if data_type == 1 else bytes(16)
    soa = dns.name.from_text("ns.example.").to_wire() + dns.name.from_text("h.example.").to_wire()
    buf = (struct.pack(">HBBHHHH", 1, 0x81, 0x80, 1, 2, 1, 0) + dns.name.from_text(qname).to_wire()
           + struct.pack(">HH", qtype, 1) + rr(cname_owner, 5, dns.name.from_text(target).to_wire())
           + rr(data_owner, data_type, data) + rr("example.", 6, soa + struct.pack(">IIIII", 1, 2, 3, 4, 600)))
    m = dns.message.from_wire(buf)  # the oracle reads it: two answer RRsets, names equal but for case
    assert len(m.answer) == 2 and m.answer[0][0].target == m.answer[1].name
    return buf


@pytest.mark.parametrize(
    ("qname", "owner", "target", "data_owner"),
    [
        ("web.example.", "WEB.Example.", "Alias.EXAMPLE.", "aLIAS.example."),
        ("WEB.EXAMPLE.", "web.example.", "alias.example.", "ALIAS.EXAMPLE."),
    ],
)
def test_chain_names_compare_case_insensitively(qname: str, owner: str, target: str, data_owner: str) -> None:
    # RFC 4343: the chain is followed whatever the spelling of each name on the wire.
    assert verdict(spelled(qname, owner, target, data_owner), CLUSTER) == (SUCCESS, 30)
    # The same answer to an AAAA question (the data is an A record): NODATA.
    assert verdict(spelled(qname, owner, target, data_owner, qtype=28), CLUSTER) == (DENIAL, 5)
    assert verdict(spelled(qname, owner, target, data_owner, qtype=28, data_type=28), CLUSTER) == (SUCCESS, 30)


@pytest.mark.parametrize("qtype", ["CNAME", "ANY"])
def test_cname_and_any_queries_are_answered_by_the_cname(qtype: str) -> None:
    assert verdict(chained(qtype=qtype, soa=None)) == (SUCCESS, 30)
    assert verdict(chained(qtype=qtype, soa=(900, 600)), CLUSTER) == (SUCCESS, 30)


def test_nxdomain_after_a_cname_chain_is_a_denial_bounded_by_the_chain() -> None:
    nx = dns.rcode.NXDOMAIN
    assert verdict(chained(rcode=nx, soa=(900, 600)), CLUSTER) == (DENIAL, 5)
    assert verdict(chained(rcode=nx, chain=(("gone.example.", 8),), soa=(900, 600))) == (DENIAL, 8)
    assert verdict(chained(rcode=nx, chain=(("a.example.", 300), ("gone.example.", 300)), soa=None)) is None


def test_dname_chain() -> None:
    qname = "x.foo.example."
    dname = ("foo.example.", "bar.example.", 300)
    # The DNAME with the CNAME synthesised from it (RFC 6672 §3.1), then data: a success.
    data = (("x.bar.example.", "A", "10.0.0.1", 300),)
    assert verdict(chained(qname=qname, dname=dname, chain=(("x.bar.example.", 300),), data=data)) == (SUCCESS, 30)
    # A server that sent no synthesised CNAME: the DNAME itself rewrites the name (RFC 6672 §2.2).
    assert verdict(chained(qname=qname, dname=dname, chain=(), data=data, soa=(900, 600))) == (SUCCESS, 30)
    # The DNAME and its CNAME, nothing of the type at x.bar.example: NODATA.
    assert verdict(chained(qname=qname, dname=dname, chain=(("x.bar.example.", 300),)), CLUSTER) == (DENIAL, 5)
    assert verdict(chained(qname=qname, dname=dname, chain=(), soa=(900, 600)), CLUSTER) == (DENIAL, 5)
    # A DNAME applies below its owner only (RFC 6672 §2.3): asking the owner itself follows nothing.
    data = (("bar.example.", "A", "10.0.0.1", 300),)
    assert verdict(chained(qname="foo.example.", dname=dname, chain=(), data=data), CLUSTER) == (DENIAL, 5)
    # A DNAME query is answered by the DNAME at the question name.
    assert verdict(chained(qname="foo.example.", qtype="DNAME", dname=dname, chain=())) == (SUCCESS, 30)


def test_cname_chain_with_signatures_and_no_data_is_nodata() -> None:
    # A DO answer carries RRSIGs beside the CNAMEs (RFC 4035 §3.1.1); they are not data of the asked type.
    q = dns.message.make_query(QNAME, "AAAA", use_edns=0, want_dnssec=True)
    r = dns.message.make_response(q)
    r.answer.append(dns.rrset.from_text(QNAME, 300, "IN", "CNAME", "alias.example."))
    r.answer.append(dns.rrset.from_text(
        QNAME, 300, "IN", "RRSIG", "CNAME 13 4 300 20300101000000 20200101000000 1 example. AAAA"))
    r.authority.append(dns.rrset.from_text("example.", 900, "IN", "SOA", "ns.example. h.example. 1 2 3 4 600"))
    assert verdict(r.to_wire(), CLUSTER) == (DENIAL, 5)


def test_cname_loop_is_not_a_success() -> None:
    buf = chained(chain=(("a.example.", 300), ("b.example.", 300), ("a.example.", 300)), soa=(900, 600))
    assert verdict(buf, CLUSTER) == (DENIAL, 5)
    assert verdict(chained(chain=(("a.example.", 300), (QNAME, 300)), soa=None)) is None


def test_cname_chain_with_an_unreadable_target_is_not_cached() -> None:
    buf = bytearray(chained(chain=(("x.", 300),), soa=None))
    cname = wire.scan(bytes(buf)).records[0]
    assert cname.rdlen == 3  # b"\x01x\x00"
    # A compression pointer to itself: never a name (RFC 1035 §4.1.4 points to a prior occurrence).
    off = cname.rdata_offset
    buf[off : off + 3] = bytes([0xC0 | off >> 8, off & 0xFF, 0])
    assert verdict(bytes(buf)) is None
    e, ok = entry_for(key_for(dns.message.make_query(QNAME, "A").to_wire()), bytes(buf), False, 0.0, DEFAULT)
    assert not ok and e.ttl == UNCAPPED  # still served once, as it came


_LABEL = st.binary(min_size=1, max_size=20)


@SETTINGS
@given(st.lists(st.lists(_LABEL, min_size=0, max_size=5), min_size=1, max_size=6), st.booleans())
def test_read_name_matches_dnspython(names: list[list[bytes]], upper: bool) -> None:
    """read_name follows compression exactly as dnspython reads the owner and CNAME target names."""
    q = dns.message.make_query(QNAME, "A")
    r = dns.message.make_response(q)
    parsed = [dns.name.Name([*labels, b""]) for labels in names]
    owner = dns.name.from_text(QNAME.upper() if upper else QNAME)
    for target in parsed:
        rrset = dns.rrset.RRset(owner, dns.rdataclass.IN, dns.rdatatype.CNAME)
        rdata = target.to_wire()
        rrset.add(dns.rdata.from_wire(dns.rdataclass.IN, dns.rdatatype.CNAME, rdata, 0, len(rdata)))
        r.answer.append(rrset)
        owner = target
    buf = r.to_wire(max_size=65535)
    sc = wire.scan(buf)
    m = dns.message.from_wire(buf, one_rr_per_rrset=True)
    got = [(read_name(buf, rec.offset), read_name(buf, rec.rdata_offset)) for rec in sc.records]
    expect = [(rrset.name.to_wire().lower(), rd.target.to_wire().lower()) for rrset in m.answer for rd in rrset]
    assert got == expect


def test_read_name_pointers_must_keep_going_backwards() -> None:
    # At 5 a pointer to 1; at 1 a one-byte label, then at 3 a pointer to 2: before itself, but not before
    # the previous target (1). dnspython refuses it (BadPointer), and so must we; pointers to 0 are fine.
    buf = b"\x00" + b"\x01\x00" + b"\xc0\x02" + b"\xc0\x01"
    with pytest.raises(dns.name.BadPointer):
        dns.name.from_wire(buf, 5)
    with pytest.raises(WireError):
        read_name(buf, 5)
    ok = b"\x00" + b"\x01X" + b"\xc0\x00" + b"\xc0\x01"
    assert read_name(ok, 5) == dns.name.from_wire(ok, 5)[0].to_wire().lower() == b"\x01x\x00"
    with pytest.raises(WireError):
        read_name(b"\x01a\xc0\x00", 0)  # a pointer to the start of its own name: a loop


@SETTINGS
@given(st.binary(min_size=1, max_size=80), st.data())
def test_read_name_accepts_and_rejects_what_dnspython_does(buf: bytes, data: st.DataObject) -> None:
    """Any bytes at any offset: the same name as dnspython, or a WireError where dnspython raises."""
    off = data.draw(st.integers(0, len(buf) - 1))
    # Bias towards compression pointers, the part with rules (backwards only, no loops).
    if data.draw(st.booleans()):
        at = data.draw(st.integers(off, len(buf) - 1))
        buf = buf[:at] + bytes([0xC0, data.draw(st.integers(0, len(buf)))]) + buf[at + 2 :]
    try:
        expect: bytes | None = dns.name.from_wire(buf, off)[0].to_wire().lower()
    except dns.exception.DNSException:
        expect = None
    try:
        got: bytes | None = read_name(buf, off)
    except WireError:
        got = None
    assert got == expect
