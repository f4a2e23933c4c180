"""Hostile upstream bytes through the whole reply handling: validate, entry_for, render, render_stale.

dnspython is the oracle: whatever an upstream (or a forger) sends, either it is refused with WireError
(a failed try: never cached, never relayed), or every reply rendered from it parses in dnspython.
"""

from __future__ import annotations

import struct

import dns.message
import dns.name
import dns.rdatatype
import dns.rrset
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from nodelocal import WireError
from nodelocal.cache.policy import TTLPolicy, entry_for, validate
from nodelocal.dns import wire
from tests.unit.dns.test_wire import responses

SETTINGS = settings(max_examples=400, deadline=None)


def client_query(reply: bytes, edns: bool, payload: int = 1232) -> tuple[bytes, int]:
    """A client query asking the question of `reply` (first question, as sent), with its end offset."""
    qend = wire.question_end(reply)
    q = struct.pack(">HBBHHHH", 0xBEEF, wire.RD, 0, 1, 0, 0, 1 if edns else 0) + reply[12:qend]
    if edns:
        q += wire.opt_record(payload, False)
    return q, qend


def served(reply: bytes) -> list[bytes]:
    """Every reply the cache would send from upstream bytes `reply`; WireError when they are refused.

    The forwarder's path: scan, validate (forward.Server.exchange), entry_for (cache.policy), then the
    renders a client can get (EDNS or not, a UDP limit or none, fresh or stale).
    """
    reply, sc = validate(reply, wire.scan(reply))
    key = wire.question_key(reply, sc.qend, b"")
    entry, _cacheable = entry_for(key, reply, False, 0.0, TTLPolicy(), sc)
    out = []
    for edns in (False, True):
        q, qend = client_query(reply, edns)
        for limit in (0, 512):
            out.append(entry.render(q, qend, limit, edns, 1.0))
            out.append(entry.render_stale(q, qend, limit, edns, 30))
    return out


def parses(msg: bytes) -> dns.message.Message:
    return dns.message.from_wire(msg)


@SETTINGS
@given(responses(), st.data())
def test_mutated_replies_are_refused_or_served_well_formed(resp: tuple[bytes, list, dict], data: st.DataObject) -> None:
    buf = bytearray(resp[0])
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(wire.HEADER_LEN, len(buf) - 1))
        if data.draw(st.booleans()):
            buf[i] ^= 1 << data.draw(st.integers(0, 7))  # a bit flip
        else:
            buf[i] = data.draw(st.sampled_from([0x00, 0xC0, 0xC0, 0x3F, 0x40, 0xFF, data.draw(st.integers(0, 255))]))
    try:
        replies = served(bytes(buf))
    except WireError:
        return
    for r in replies:
        parses(r)


@SETTINGS
@given(responses(), st.data())
def test_truncated_and_padded_replies_are_refused_or_served_well_formed(resp: tuple[bytes, list, dict],
                                                                        data: st.DataObject) -> None:
    buf = resp[0]
    cut = data.draw(st.integers(0, len(buf)))
    tail = data.draw(st.binary(max_size=16))
    try:
        replies = served(buf[:cut] + tail)
    except WireError:
        return
    for r in replies:
        parses(r)


def reply_with(rdtype: str, rdata_wire: bytes, owner: bytes = b"\xc0\x0c", rclass: int = 1, ttl: int = 60) -> bytes:
    """A NOERROR reply to `www.example.test A` with one answer record written byte by byte."""
    q = dns.message.make_query("www.example.test", rdtype, use_edns=False)
    head = dns.message.make_response(q).to_wire()
    head = head[:6] + b"\x00\x01" + head[8:]  # ANCOUNT 1
    rr = owner + struct.pack(">HHIH", dns.rdatatype.from_text(rdtype), rclass, ttl, len(rdata_wire)) + rdata_wire
    return head + rr


# Each is accepted by wire.scan (counts and lengths add up) but is not a record a client can parse.
HOSTILE = {
    "pointer loop in the owner": reply_with("A", b"\x01\x02\x03\x04", owner=b"\x01a\xc0\x22"),
    "pointer past the end": reply_with("A", b"\x01\x02\x03\x04", owner=b"\xc3\xff"),
    "pointer into the header": reply_with("A", b"\x01\x02\x03\x04", owner=b"\xc0\x02"),
    "pointer to itself": reply_with("A", b"\x01\x02\x03\x04", owner=b"\xc0\x22"),
    "label type 01 in rdata": reply_with("CNAME", b"\x41\x00"),
    "A of 5 octets": reply_with("A", b"\x01\x02\x03\x04\x05"),
    "AAAA of 4 octets": reply_with("AAAA", b"\x01\x02\x03\x04"),
    "CNAME with a forward pointer": reply_with("CNAME", b"\xc0\x40"),
    "CNAME with trailing bytes": reply_with("CNAME", b"\x01a\x00\x00"),
    "CNAME name running out": reply_with("CNAME", b"\x05ab"),
    "MX without its name": reply_with("MX", b"\x00\x0a"),
    "SOA one number short": reply_with("SOA", b"\x00\x00" + b"\x00" * 16),
    "TXT without a string": reply_with("TXT", b""),
    "TXT string past the rdata": reply_with("TXT", b"\x05abc"),
    "DNAME with a pointer": reply_with("DNAME", b"\xc0\x0c"),
    # TTL 256 ends in a zero octet, a root name for a pointer to land on, until the TTL counts down to 255.
    "pointer into a TTL": reply_with("NS", b"\xc0\x2b", ttl=256),
    "SRV name past the rdata": reply_with("SRV", b"\x00\x01\x00\x02\x00\x35\x03ab"),
    "DS with a short digest": reply_with("DS", b"\x00\x01\x08\x02\x01"),
    "opcode UPDATE in the reply": (lambda r: r[:2] + bytes([r[2] | 0x28]) + r[3:])(
        reply_with("A", b"\x01\x02\x03\x04")),
}


@pytest.mark.parametrize("what", sorted(HOSTILE))
def test_hostile_records_are_refused(what: str) -> None:
    buf = HOSTILE[what]
    wire.scan(buf)  # the scan alone lets it through: each of these was once cached and served
    with pytest.raises(WireError):
        served(buf)


def test_a_record_of_another_class_pointing_into_the_header_is_written_out_again() -> None:
    """Found by hack/fuzz.py: an SOA of class 0xC001 (so parsed by dnspython, not by our checks) whose name
    pointed at the upstream's ID, which read as a name there (ID 0: the root) but not under a client's ID."""
    buf = reply_with("SOA", b"\x02ns\xc0\x00\x04host\xc0\x10" + bytes(20), rclass=0xC001)
    buf = b"\x00\x00" + buf[2:]
    parses(buf)  # as the upstream sent it, it reads
    for r in served(buf):
        assert parses(r).answer[0].rdclass == 0xC001


@pytest.mark.parametrize("rdtype,rdata", [
    ("A", b"\x01\x02\x03\x04"), ("AAAA", bytes(16)), ("CNAME", b"\xc0\x0c"), ("NS", b"\x02ns\xc0\x10"),
    ("MX", b"\x00\x0a\x04mail\xc0\x10"), ("TXT", b"\x00\x03abc"), ("SRV", b"\x00\x01\x00\x02\x00\x35\xc0\x0c"),
    ("SOA", b"\xc0\x0c\xc0\x0c" + bytes(20)), ("DNAME", b"\x03new\x00"), ("CAA", b"\x00\x05issue" + b"ca.test"),
])
def test_well_formed_records_are_served(rdtype: str, rdata: bytes) -> None:
    for r in served(reply_with(rdtype, rdata)):
        assert parses(r).answer[0].rdtype == dns.rdatatype.from_text(rdtype)


@given(st.binary(max_size=300))
@example(b"\x00" * 12)
@settings(max_examples=500, deadline=None)
def test_random_bytes_only_ever_raise_wireerror(buf: bytes) -> None:
    try:
        for r in served(buf):
            parses(r)
    except WireError:
        pass


@given(st.lists(st.sampled_from([0x00, 0x01, 0x02, 0x3F, 0x40, 0x80, 0xC0, 0xC0, 0xFF, 0x0C, 0x22, 0x30]),
                max_size=40), st.integers(0, 0x3FFF))
@settings(max_examples=500, deadline=None)
def test_pointer_chains_read_only_where_a_client_reads_them(blob: list[int], target: int) -> None:
    """Bytes that pointers may land in (a TXT string), then a record whose owner points at `target`:
    chains, loops, forward and past-the-end targets. Whatever we accept, dnspython reads, and so does every
    reply made from it."""
    first = reply_with("TXT", bytes([len(blob), *blob]))
    second = struct.pack(">HHHIH", 0xC000 | target, 1, 1, 60, 4) + b"\x01\x02\x03\x04"
    buf = first[:6] + b"\x00\x02" + first[8:] + second
    try:
        replies = served(buf)
    except WireError:
        return
    for r in replies:
        parses(r)


def test_owner_pointing_into_the_question_reads_under_any_client_spelling() -> None:
    buf = reply_with("A", b"\x01\x02\x03\x04")
    q = dns.message.make_query("WWW.Example.TEST", "A", use_edns=False)
    qw = q.to_wire()
    buf, sc = validate(buf, wire.scan(buf))
    entry, _ = entry_for(wire.question_key(buf, sc.qend, b""), buf, False, 0.0, TTLPolicy(), sc)
    r = parses(entry.render(qw, wire.question_end(qw), 0, False, 1.0))
    assert r.answer[0].name == dns.name.from_text("www.example.test")
    assert r.question[0].name.to_text() == "WWW.Example.TEST."
    assert dns.rrset.from_text("www.example.test.", 59, "IN", "A", "1.2.3.4") == r.answer[0]
