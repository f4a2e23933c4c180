"""nodelocal.dns.wire against dnspython as the oracle: queries, replies, scans and malformed bytes."""

from __future__ import annotations

import struct

import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.CNAME
import dns.rdtypes.ANY.MX
import dns.rdtypes.ANY.NS
import dns.rdtypes.ANY.SOA
import dns.rdtypes.ANY.TXT
import dns.rdtypes.IN.A
import dns.rdtypes.IN.AAAA
import dns.rrset
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from nodelocal import WireError
from nodelocal.dns import wire

# Fixed examples (derandomize) so CI runs the same cases every time; no deadline: CI machines vary.
SETTINGS = settings(max_examples=200, derandomize=True, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
# Responses take ~10 ms each to build with dnspython: fewer of them keep the suite fast.
SLOW_SETTINGS = settings(SETTINGS, max_examples=100)

IN = dns.rdataclass.IN

# --------------------------------------------------------------------------------------------------
# Strategies

_HOSTCHARS = list(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")

# Mostly hostname-like labels of random case; sometimes arbitrary bytes (DNS labels are binary,
# and the wire code must not care about '.', NUL or bytes >= 0x80 inside a label).
labels = st.one_of(
    st.lists(st.sampled_from(_HOSTCHARS), min_size=1, max_size=63).map(bytes),
    st.binary(min_size=1, max_size=63),
)


@st.composite
def names(draw: st.DrawFn, min_labels: int = 0, max_labels: int = 8) -> dns.name.Name:
    """A dnspython name of at most 255 octets on the wire."""
    out: list[bytes] = []
    total = 1  # the root label
    for label in draw(st.lists(labels, min_size=min_labels, max_size=max_labels)):
        if total + 1 + len(label) > 255:
            break
        out.append(label)
        total += 1 + len(label)
    assume(len(out) >= min_labels)
    return dns.name.Name([*out, b""])


def name_of_wire_len(n: int) -> dns.name.Name:
    """A name whose wire form is exactly n octets (n >= 1)."""
    left = n - 1
    out = []
    while left:
        ln = min(63, left - 1) if left > 1 else None
        assert ln is not None and ln >= 1
        out.append(b"a" * ln)
        left -= ln + 1
    return dns.name.Name([*out, b""])


qtypes = st.one_of(
    st.sampled_from([1, 2, 5, 6, 12, 15, 16, 28, 33, 43, 46, 48, 65, 255, 257]),
    st.integers(0, 0xFFFF),
)
qclasses = st.one_of(st.sampled_from([1, 3, 4, 254, 255]), st.integers(0, 0xFFFF))


@st.composite
def queries(draw: st.DrawFn) -> tuple[dns.message.Message, dict[str, object]]:
    """A dnspython query with random name, type, class, flags and (maybe) EDNS; plus what it holds."""
    qname = draw(names())
    qtype = draw(qtypes)
    qclass = draw(qclasses)
    rd, cd, ad = draw(st.booleans()), draw(st.booleans()), draw(st.booleans())
    flags = (dns.flags.RD if rd else 0) | (dns.flags.CD if cd else 0) | (dns.flags.AD if ad else 0)
    edns = draw(st.booleans())
    do = draw(st.booleans()) if edns else False
    payload = draw(st.one_of(st.sampled_from([512, 1232, 4096, 65535]), st.integers(0, 0xFFFF)))
    version = draw(st.one_of(st.just(0), st.integers(0, 255)))
    options = draw(st.one_of(
        st.just([]),
        st.lists(st.builds(dns.edns.GenericOption, st.integers(65001, 65534), st.binary(max_size=20)),
                 max_size=2),
    ))
    qid = draw(st.integers(0, 0xFFFF))
    if edns:
        q = dns.message.make_query(qname, qtype, qclass, use_edns=version, want_dnssec=do, payload=payload,
                                   options=options, id=qid, flags=flags)
    else:
        q = dns.message.make_query(qname, qtype, qclass, use_edns=False, id=qid, flags=flags)
    info = {"name": qname, "qtype": qtype, "qclass": qclass, "rd": rd, "cd": cd, "edns": edns, "do": do,
            "payload": payload, "version": version, "qid": qid}
    return q, info


def _rdata(draw: st.DrawFn, rtype: int, near: dns.name.Name) -> dns.rdata.Rdata:
    if rtype == dns.rdatatype.A:
        return dns.rdtypes.IN.A.A(IN, rtype, draw(st.ip_addresses(v=4)).compressed)
    if rtype == dns.rdatatype.AAAA:
        return dns.rdtypes.IN.AAAA.AAAA(IN, rtype, draw(st.ip_addresses(v=6)).compressed)
    if rtype == dns.rdatatype.TXT:
        return dns.rdtypes.ANY.TXT.TXT(IN, rtype, draw(st.lists(st.binary(max_size=40), min_size=1, max_size=3)))
    target = draw(st.one_of(st.just(near), names(max_labels=3)))
    if rtype == dns.rdatatype.MX:
        return dns.rdtypes.ANY.MX.MX(IN, rtype, draw(st.integers(0, 0xFFFF)), target)
    if rtype == dns.rdatatype.NS:
        return dns.rdtypes.ANY.NS.NS(IN, rtype, target)
    return dns.rdtypes.ANY.CNAME.CNAME(IN, rtype, target)


def soa_rdata(draw: st.DrawFn, near: dns.name.Name) -> dns.rdtypes.ANY.SOA.SOA:
    u32 = st.integers(0, 0xFFFFFFFF)
    return dns.rdtypes.ANY.SOA.SOA(
        IN, dns.rdatatype.SOA, draw(st.one_of(st.just(near), names(max_labels=3))),
        draw(st.one_of(st.just(near), names(max_labels=3))), draw(u32), draw(u32), draw(u32), draw(u32), draw(u32))


# dnspython reads a TTL with the top bit set as 0 (RFC 2181 §8), the scan reports the raw value; the
# oracle comparisons stay below 2**31 and test_scan_reports_raw_ttls_with_the_top_bit_set covers the rest.
ttls = st.one_of(st.sampled_from([0, 1, 5, 30, 300, 86400, 0x7FFFFFFF]), st.integers(0, 0x7FFFFFFF))
RTYPES = [dns.rdatatype.A, dns.rdatatype.AAAA, dns.rdatatype.TXT, dns.rdatatype.MX, dns.rdatatype.NS,
          dns.rdatatype.CNAME]


@st.composite
def responses(draw: st.DrawFn) -> tuple[bytes, list[tuple[int, int, int]], dict[str, object]]:
    """A dnspython-made response: (wire, [(section, rtype, ttl)] in wire order, facts about its OPT)."""
    qname = draw(names(min_labels=1, max_labels=4))
    q = dns.message.make_query(qname, draw(st.sampled_from(RTYPES)), use_edns=False)
    r = dns.message.make_response(q)
    r.set_rcode(draw(st.sampled_from([0, 0, 2, 3, 5])))
    expect: list[tuple[int, int, int]] = []
    sub = dns.name.Name([b"x", *qname.labels]) if len(qname.to_wire()) <= 253 else qname
    owners = st.one_of(st.just(qname), st.just(sub), names(max_labels=3))  # exercise compression
    for index, section in enumerate((r.answer, r.authority, r.additional)):
        if index == 1 and draw(st.booleans()):
            ttl = draw(ttls)
            section.append(dns.rrset.from_rdata(draw(owners), ttl, soa_rdata(draw, qname)))
            expect.append((1, dns.rdatatype.SOA, ttl))
        for _ in range(draw(st.integers(0, 3))):
            rtype = draw(st.sampled_from(RTYPES))
            ttl = draw(ttls)
            section.append(dns.rrset.from_rdata(draw(owners), ttl, _rdata(draw, rtype, qname)))
            expect.append((index, rtype, ttl))
    edns = draw(st.booleans())
    payload = draw(st.integers(512, 0xFFFF))
    do = draw(st.booleans())
    if edns:
        r.use_edns(0, dns.flags.DO if do else 0, payload)
    else:
        r.use_edns(False)
    if draw(st.booleans()):
        r.flags |= dns.flags.TC
    return r.to_wire(), expect, {"edns": edns, "payload": payload, "do": do, "qname": qname}


def _qwire(name: dns.name.Name, qtype: int, qclass: int) -> bytes:
    return name.to_wire() + struct.pack(">HH", qtype, qclass)


# --------------------------------------------------------------------------------------------------
# Queries: question_end, question_key, parse_opt


@SETTINGS
@given(queries())
def test_question_end_and_opt_agree_with_dnspython(q_info: tuple[dns.message.Message, dict]) -> None:
    q, info = q_info
    buf = q.to_wire()
    name: dns.name.Name = info["name"]  # type: ignore[assignment]
    qend = wire.question_end(buf)
    assert qend == wire.HEADER_LEN + len(name.to_wire()) + 4
    opt = wire.parse_opt(buf, qend)
    if info["edns"]:
        assert opt == wire.Opt(q.payload, q.edns, bool(info["do"]))
        assert opt.payload == info["payload"] and opt.version == info["version"]
    else:
        assert opt is None


@SETTINGS
@given(queries())
def test_question_key_is_canonical_name_type_class_and_suffix(q_info: tuple[dns.message.Message, dict]) -> None:
    q, info = q_info
    buf = q.to_wire()
    name: dns.name.Name = info["name"]  # type: ignore[assignment]
    qend = wire.question_end(buf)
    suffix = wire.key_suffix(bool(info["rd"]), bool(info["cd"]), bool(info["do"]))
    expected = name.canonicalize().to_wire() + struct.pack(">HH", info["qtype"], info["qclass"]) + suffix
    assert wire.question_key(buf, qend, suffix) == expected


def test_question_key_lowercases_only_the_name_not_type_or_class() -> None:
    # HTTPS is type 65 = 0x0041, an 'A' byte: lowercasing the whole question turns it into type 97
    # (0x0061), so an answer cached for one would be served for the other (also SPF 99 vs 67, and any
    # class or type byte in 0x41..0x5A).
    def key(qtype: int, qclass: int = 1) -> bytes:
        buf = dns.message.make_query("Example.COM", qtype, qclass).to_wire()
        return wire.question_key(buf, wire.question_end(buf), b"")

    assert key(65) != key(97)
    assert key(67) != key(99)
    for qtype, qclass in ((65, 1), (90, 1), (1, 0x41), (1, 0x4100), (0x5A5A, 0x4242)):
        assert key(qtype, qclass) == b"\x07example\x03com\x00" + struct.pack(">HH", qtype, qclass)


@SETTINGS
@given(queries(), st.sampled_from(["upper", "lower", "swapcase"]))
def test_question_key_ignores_case_of_the_name(q_info: tuple[dns.message.Message, dict], how: str) -> None:
    q, info = q_info
    buf = q.to_wire()
    qend = wire.question_end(buf)
    name: dns.name.Name = info["name"]  # type: ignore[assignment]
    respelled = dns.name.Name([getattr(label, how)() for label in name.labels])
    other = buf[:12] + respelled.to_wire() + buf[qend - 4:]
    suffix = wire.key_suffix(bool(info["rd"]), bool(info["cd"]), bool(info["do"]))
    assert wire.question_key(other, qend, suffix) == wire.question_key(buf, qend, suffix)


def test_key_suffix_distinguishes_every_flag_combination() -> None:
    combos = [(rd, cd, do) for rd in (False, True) for cd in (False, True) for do in (False, True)]
    suffixes = [wire.key_suffix(*c) for c in combos]
    assert len(set(suffixes)) == 8
    assert suffixes.count(b"") <= 1  # at most the common flags (RD only) go without a byte
    for s in suffixes:
        assert s == b"" or (len(s) == 1 and s[0] & 0x80)


@pytest.mark.parametrize("n", [1, 3, 64, 200, 254, 255])
def test_question_end_accepts_names_up_to_255_octets(n: int) -> None:
    name = name_of_wire_len(n)
    assert len(name.to_wire()) == n
    q = dns.message.make_query(name, "A").to_wire()
    assert wire.question_end(q) == 12 + n + 4


def test_question_end_rejects_names_over_255_octets() -> None:
    raw = b"".join(b"\x3f" + b"a" * 63 for _ in range(3)) + b"\x3e" + b"a" * 62 + b"\x00"
    assert len(raw) == 256
    q = struct.pack(">HHHHHH", 1, 0x0100, 1, 0, 0, 0) + raw + b"\x00\x01\x00\x01"
    with pytest.raises(WireError):
        wire.question_end(q)


def test_question_end_rejects_compression_in_the_question() -> None:
    q = struct.pack(">HHHHHH", 1, 0x0100, 1, 0, 0, 0) + b"\xc0\x0c\x00\x01\x00\x01"
    with pytest.raises(WireError):
        wire.question_end(q)


@pytest.mark.parametrize(
    "tail",
    [
        b"\x01",  # not a root owner
        b"\x00\x00\x01\x10\x00\x00\x00\x00\x00\x00\x00",  # type A, not OPT
        b"\x00\x00\x29\x10\x00\x00\x00\x00\x00\x00\x04",  # rdlength runs past the end
        b"\x00\x00\x29\x10\x00\x00\x00\x00\x00\x00\x00\xff",  # trailing byte after the OPT
        b"\x00\x00\x29\x10\x00\x00\x00\x00",  # truncated fixed part
    ],
)
def test_parse_opt_rejects_anything_but_one_trailing_root_opt(tail: bytes) -> None:
    q = dns.message.make_query("example.com", "A").to_wire()
    qend = wire.question_end(q)
    with pytest.raises(WireError):
        wire.parse_opt(q + tail, qend)


# --------------------------------------------------------------------------------------------------
# Building replies and queries


# UPDATE (5) is left out: dnspython parses its question as a zone, which must be of type SOA.
@SETTINGS
@given(queries(), st.integers(0, 15), st.sampled_from([0, 1, 2, 4]), st.booleans(),
       st.one_of(st.none(), st.tuples(st.booleans(), st.integers(0, 255))))
def test_error_reply_parses_in_dnspython(q_info: tuple[dns.message.Message, dict], rcode: int, opcode: int,
                                         echo: bool, opt: tuple[bool, int] | None) -> None:
    q, info = q_info
    q.set_opcode(opcode)
    buf = q.to_wire()
    qend = wire.question_end(buf) if echo else None
    opt_bytes = wire.opt_record(1232, opt[0], opt[1]) if opt is not None else b""
    reply = wire.error_reply(buf, rcode, qend, opt_bytes)
    assert reply is not None
    m = dns.message.from_wire(reply)
    assert m.id == info["qid"]
    assert m.flags & dns.flags.QR
    assert dns.opcode.from_flags(m.flags) == opcode
    assert bool(m.flags & dns.flags.RD) == info["rd"]
    assert bool(m.flags & dns.flags.CD) == info["cd"]
    assert m.flags & dns.flags.RA
    assert not m.flags & (dns.flags.AA | dns.flags.TC | dns.flags.AD)
    assert not m.answer and not m.authority and not m.additional
    if opt is None:
        assert m.edns == -1
        assert m.rcode() == rcode
    else:
        assert m.edns == 0 and m.payload == 1232 and bool(m.ednsflags & dns.flags.DO) == opt[0]
        assert m.rcode() == (opt[1] << 4) | rcode
    if echo:
        assert len(m.question) == 1
        rr = m.question[0]
        assert rr.name.labels == info["name"].labels  # the client's own spelling
        assert (rr.rdtype, rr.rdclass) == (info["qtype"], info["qclass"])
    else:
        assert not m.question


def test_error_reply_badvers_as_the_resolver_builds_it() -> None:
    q = dns.message.make_query("example.com", "A", use_edns=1, want_dnssec=True).to_wire()
    qend = wire.question_end(q)
    reply = wire.error_reply(q, wire.BADVERS & 0xF, qend, wire.opt_record(1232, True, wire.BADVERS >> 4))
    assert reply is not None
    m = dns.message.from_wire(reply)
    assert m.rcode() == dns.rcode.BADVERS
    assert m.ednsflags & dns.flags.DO


def test_error_reply_for_update_echoes_the_zone() -> None:
    q = dns.message.make_query("example.com", "SOA")
    q.set_opcode(dns.opcode.UPDATE)
    buf = q.to_wire()
    reply = wire.error_reply(buf, wire.NOTIMP, wire.question_end(buf))
    assert reply is not None
    m = dns.message.from_wire(reply)
    assert m.opcode() == dns.opcode.UPDATE and m.rcode() == dns.rcode.NOTIMP
    assert m.question[0].name == dns.name.from_text("example.com")


@pytest.mark.parametrize("n", range(12))
def test_error_reply_drops_what_has_no_header(n: int) -> None:
    assert wire.error_reply(b"\x12" * n, wire.FORMERR) is None


@SETTINGS
@given(queries(), st.sampled_from([0, 0, 2, 3]), st.booleans(), st.booleans(), st.booleans())
def test_truncated_reply_parses_in_dnspython(q_info: tuple[dns.message.Message, dict], rcode: int, aa: bool,
                                             ad: bool, with_opt: bool) -> None:
    q, info = q_info
    buf = q.to_wire()
    qend = wire.question_end(buf)
    r = dns.message.make_response(q)
    r.set_rcode(rcode)
    r.flags |= (dns.flags.AA if aa else 0) | (dns.flags.AD if ad else 0) | dns.flags.RA
    r.use_edns(False)
    r.answer.append(dns.rrset.from_text("a.example.", 300, "IN", "A", "192.0.2.1"))
    full = r.to_wire()
    opt = wire.opt_record(1232, bool(info["do"])) if with_opt else b""
    tc = wire.truncated_reply(buf, qend, full[2:12], opt)
    m = dns.message.from_wire(tc)
    assert m.id == info["qid"]
    assert m.flags & dns.flags.TC and m.flags & dns.flags.QR and m.flags & dns.flags.RA
    assert bool(m.flags & dns.flags.AA) == aa and bool(m.flags & dns.flags.AD) == ad
    assert m.rcode() == rcode
    assert not m.answer and not m.authority and not m.additional
    assert m.question[0].name.labels == info["name"].labels
    assert (m.edns == 0) == with_opt


@SETTINGS
@given(st.integers(0, 0xFFFF), names(), qtypes, qclasses, st.booleans(), st.booleans(), st.booleans(),
       st.integers(0, 0xFFFF))
def test_build_query_parses_in_dnspython(qid: int, name: dns.name.Name, qtype: int, qclass: int, rd: bool,
                                         cd: bool, do: bool, payload: int) -> None:
    buf = wire.build_query(qid, _qwire(name, qtype, qclass), rd, cd, do, payload)
    m = dns.message.from_wire(buf)
    assert m.id == qid
    assert not m.flags & dns.flags.QR and m.opcode() == dns.opcode.QUERY
    assert bool(m.flags & dns.flags.RD) == rd and bool(m.flags & dns.flags.CD) == cd
    assert not m.flags & (dns.flags.AA | dns.flags.TC | dns.flags.AD | dns.flags.RA)
    assert len(m.question) == 1
    assert m.question[0].name.labels == name.labels
    assert (m.question[0].rdtype, m.question[0].rdclass) == (qtype, qclass)
    assert m.edns == 0 and m.payload == payload and bool(m.ednsflags & dns.flags.DO) == do
    assert m.options == ()
    # and it round-trips through our own reader
    qend = wire.question_end(buf)
    assert wire.parse_opt(buf, qend) == wire.Opt(payload, 0, do)


# --------------------------------------------------------------------------------------------------
# Responses: scan, soa_minimum, pack_ttls


def _dnspython_rrs(buf: bytes) -> list[tuple[int, int, int]]:
    m = dns.message.from_wire(buf, one_rr_per_rrset=True)
    return [(i, rrset.rdtype, rrset.ttl) for i, sec in enumerate((m.answer, m.authority, m.additional))
            for rrset in sec]


@SLOW_SETTINGS
@given(responses())
def test_scan_finds_every_record_where_dnspython_does(resp: tuple[bytes, list, dict]) -> None:
    buf, expect, facts = resp
    sc = wire.scan(buf)
    m = dns.message.from_wire(buf)
    assert sc.qid == m.id and sc.flags == m.flags and sc.qdcount == 1
    assert sc.rcode == m.rcode() and sc.truncated == bool(m.flags & dns.flags.TC)
    assert sc.qend == 12 + len(facts["qname"].to_wire()) + 4  # type: ignore[attr-defined]
    assert [(r.section, r.rtype, r.ttl) for r in sc.records] == expect == _dnspython_rrs(buf)
    # each TTL, type and rdata really sits where the scan says
    off = sc.qend
    for r in sc.records:
        assert r.offset == off
        assert struct.unpack_from(">I", buf, r.ttl_offset)[0] == r.ttl
        assert struct.unpack_from(">H", buf, r.ttl_offset - 4)[0] == r.rtype
        assert struct.unpack_from(">H", buf, r.rdata_offset - 2)[0] == r.rdlen
        assert r.end == r.rdata_offset + r.rdlen
        off = r.end
    # the SOA MINIMUM (RFC 2308's negative TTL input) read from the bytes
    parsed = dns.message.from_wire(buf, one_rr_per_rrset=True)
    for r, rrset in zip(sc.records, [*parsed.answer, *parsed.authority, *parsed.additional], strict=True):
        if r.rtype == dns.rdatatype.SOA:
            assert wire.soa_minimum(buf, r) == rrset[0].minimum
    if facts["edns"]:
        assert sc.opt is not None
        assert sc.opt.offset == off and sc.opt.end == len(buf)
        assert buf[sc.opt.offset] == 0 and sc.opt.section == 2
        assert struct.unpack_from(">H", buf, sc.opt.offset + 3)[0] == facts["payload"]
        assert bool(buf[sc.opt.ttl_offset + 2] & 0x80) == facts["do"]
    else:
        assert sc.opt is None
        assert off == len(buf)


def test_soa_minimum_rejects_short_rdata() -> None:
    rec = wire.Record(0, 12, wire.TYPE_SOA, 0, 0, 10, 2, 1)
    with pytest.raises(WireError):
        wire.soa_minimum(b"\x00" * 12, rec)


@SLOW_SETTINGS
@given(responses(), st.one_of(st.sampled_from([0, 1, 29, 30, 31, 299, 300, 301]), st.integers(0, 0x7FFFFFFF)))
def test_pack_ttls_decrements_and_floors_at_zero(resp: tuple[bytes, list, dict], elapsed: int) -> None:
    buf, expect, _facts = resp
    sc = wire.scan(buf)
    offsets = tuple(r.ttl_offset for r in sc.records)
    out = wire.pack_ttls(buf, offsets, tuple(r.ttl for r in sc.records), elapsed)
    assert len(out) == len(buf)
    assert _dnspython_rrs(out) == [(s, t, max(0, ttl - elapsed)) for s, t, ttl in expect]
    # nothing but the TTL fields changed
    mask = set()
    for off in offsets:
        mask.update(range(off, off + 4))
    assert all(out[i] == buf[i] for i in range(len(buf)) if i not in mask)


def test_scan_treats_ttls_with_the_top_bit_set_as_zero() -> None:
    # RFC 2181 §8 (and dnspython): such a TTL means 0, not "cache for 136 years".
    r = dns.message.make_response(dns.message.make_query("example.com", "A"))
    r.answer.append(dns.rrset.from_text("example.com.", 300, "IN", "A", "192.0.2.1"))
    buf = bytearray(r.to_wire())
    rec = wire.scan(bytes(buf)).records[0]
    struct.pack_into(">I", buf, rec.ttl_offset, 0xFFFFFFF0)
    assert wire.scan(bytes(buf)).records[0].ttl == 0
    struct.pack_into(">I", buf, rec.ttl_offset, 0x7FFFFFFF)
    assert wire.scan(bytes(buf)).records[0].ttl == 0x7FFFFFFF
    out = wire.pack_ttls(bytes(buf), (rec.ttl_offset,), (0xFFFFFFF0,), 0x10)
    assert struct.unpack_from(">I", out, rec.ttl_offset)[0] == 0xFFFFFFE0


def test_pack_ttls_with_different_ttls_than_the_template() -> None:
    r = dns.message.make_response(dns.message.make_query("example.com", "A"))
    r.answer.append(dns.rrset.from_text("example.com.", 3600, "IN", "A", "192.0.2.1"))
    buf = r.to_wire()
    rec = wire.scan(buf).records[0]
    out = wire.pack_ttls(buf, (rec.ttl_offset,), (30,), 7)
    assert dns.message.from_wire(out).answer[0].ttl == 23


# --------------------------------------------------------------------------------------------------
# Malformed input: only WireError, never another exception type


def _scan_or_wireerror(buf: bytes) -> wire.Scan | None:
    try:
        sc = wire.scan(buf)
    except WireError:
        return None
    # a successful scan is self-consistent
    off = sc.qend
    for r in sc.records:
        assert wire.HEADER_LEN <= r.offset < r.ttl_offset < r.rdata_offset <= r.end <= len(buf)
        assert r.offset >= off
        off = r.end
    if sc.opt is not None:
        assert sc.opt.end <= len(buf)
    return sc


def _question_or_wireerror(buf: bytes) -> None:
    try:
        qend = wire.question_end(buf)
    except WireError:
        return
    assert wire.HEADER_LEN + 5 <= qend <= len(buf)
    try:
        opt = wire.parse_opt(buf, qend)
    except WireError:
        return
    assert opt is None or 0 <= opt.payload <= 0xFFFF


@SETTINGS
@given(st.binary(max_size=300))
@example(b"")
@example(b"\x00" * 12)
@example(b"\x00\x00\x00\x00\x00\x01\x00\x01\x00\x00\x00\x00\x00")
@example(b"\x00\x00\x00\x00\xff\xff\xff\xff\xff\xff\xff\xff" + b"\xc0")
def test_random_bytes_raise_only_wireerror(buf: bytes) -> None:
    _scan_or_wireerror(buf)
    _question_or_wireerror(buf)


@SETTINGS
@given(st.binary(min_size=0, max_size=200))
def test_random_bodies_after_a_plausible_header_raise_only_wireerror(body: bytes) -> None:
    for counts in ((1, 0, 0, 0), (1, 1, 0, 0), (1, 0, 1, 1), (1, 2, 2, 2), (2, 1, 0, 1)):
        buf = struct.pack(">HHHHHH", 7, 0x8180, *counts) + body
        _scan_or_wireerror(buf)
        _question_or_wireerror(buf)


@SLOW_SETTINGS
@given(responses(), st.data())
def test_truncated_responses_raise_wireerror(resp: tuple[bytes, list, dict], data: st.DataObject) -> None:
    buf, _expect, _facts = resp
    cut = data.draw(st.integers(0, len(buf) - 1))
    with pytest.raises(WireError):
        wire.scan(buf[:cut])


@SETTINGS
@given(queries(), st.data())
def test_truncated_queries(q_info: tuple[dns.message.Message, dict], data: st.DataObject) -> None:
    q, _info = q_info
    buf = q.to_wire()
    qend = wire.question_end(buf)
    cut = data.draw(st.integers(0, len(buf) - 1))
    short = buf[:cut]
    if cut < qend:
        with pytest.raises(WireError):
            wire.question_end(short)
    else:
        assert wire.question_end(short) == qend
        if cut > qend:
            with pytest.raises(WireError):
                wire.parse_opt(short, qend)


@SLOW_SETTINGS
@given(responses(), st.data())
def test_mutated_responses_scan_consistently_with_dnspython(resp: tuple[bytes, list, dict],
                                                            data: st.DataObject) -> None:
    buf, _expect, _facts = resp
    mutated = bytearray(buf)
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(buf) - 1))
        mutated[i] = data.draw(st.integers(0, 255))
    mutated_b = bytes(mutated)
    sc = _scan_or_wireerror(mutated_b)
    try:
        m = dns.message.from_wire(mutated_b, one_rr_per_rrset=True)
    except Exception:  # dnspython is stricter about rdata; only our side must stay in WireError
        return
    # whatever dnspython reads, the scan reads too, the same way
    assert sc is not None
    as_dnspython_reads = [(r.section, r.rtype, 0 if r.ttl > 0x7FFFFFFF else r.ttl) for r in sc.records]
    assert as_dnspython_reads == _dnspython_rrs(mutated_b)
    assert (sc.opt is not None) == (m.edns >= 0)


# --------------------------------------------------------------------------------------------------
# randomize_case (0x20)


@given(st.lists(st.binary(min_size=1, max_size=20), min_size=0, max_size=5), st.integers(0, 65535))
def test_randomize_case_changes_only_the_case_of_letters(labels: list[bytes], qtype: int) -> None:
    q = (b"".join(bytes([len(x)]) + x for x in labels) + b"\x00").lower() + struct.pack(">HH", qtype, 1)
    m = wire.randomize_case(q)
    assert len(m) == len(q) and m[-4:] == q[-4:]  # type and class untouched (HTTPS is byte 'A')
    assert m[:-4].lower() == q[:-4]
    assert all(a == b or (a ^ b == 0x20 and chr(b).isalpha()) for a, b in zip(m, q, strict=True))


def test_randomize_case_is_random() -> None:
    q = b"\x20" + b"a" * 32 + b"\x00\x00\x01\x00\x01"
    seen = {wire.randomize_case(q) for _ in range(20)}
    assert len(seen) == 20  # 32 letters: a repeat has odds 2**-32 per pair
    assert all(any(c in b"A" for c in m) and any(c in b"a" for c in m) for m in seen)
