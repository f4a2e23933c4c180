"""Byte-level DNS scanning and building (RFC 1035 §4, RFC 6891): what the hot path and the cache use.

Nothing here allocates a parsed message: functions walk the bytes, check every bound and return offsets.
dnspython is the oracle these functions are tested against (tests/unit/dns/test_wire.py).
"""

from __future__ import annotations

import os
import struct
from typing import NamedTuple

from nodelocal import WireError

HEADER_LEN = 12

# RFC 1035 §4.1.1 / RFC 6895 header bits, as they sit in byte 2 and byte 3 of the header.
QR = 0x80
OPCODE_MASK = 0x78
AA = 0x04
TC = 0x02
RD = 0x01
RA = 0x80
AD = 0x20
CD = 0x10

NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5
BADVERS = 16  # extended RCODE, RFC 6891 §6.1.3
# Presentation names of rcodes 0..16 (RFC 6895 §2.3), as CoreDNS's `rcode` metric labels spell them.
RCODE_NAMES = (
    "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "YXDOMAIN", "YXRRSET",
    "NXRRSET", "NOTAUTH", "NOTZONE", "RCODE11", "RCODE12", "RCODE13", "RCODE14", "RCODE15", "BADVERS",
)

# The EDNS UDP payload size we advertise, upstream and in our own OPT records (DNS flag day 2020):
# larger answers come over TCP rather than as fragmented datagrams.
EDNS_PAYLOAD = 1232

TYPE_SOA = 6
TYPE_HINFO = 13
TYPE_ANY = 255
TYPE_OPT = 41
TYPE_AXFR = 252
TYPE_IXFR = 251

DO_BIT = 0x8000  # in the OPT TTL field's flags half, RFC 3225

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_RR_FIXED = struct.Struct(">HHIH")  # type, class, ttl, rdlength
_HEADER = struct.Struct(">HBBHHHH")

# The key suffix is empty for the common flags (RD=1, CD=0, DO=0) so the hot path builds no extra
# bytes for them. Any other combination appends one byte with the high bit set. A DNS question is
# self-delimiting, so a key with a suffix can never equal a key without one.
SUFFIXES = tuple(b"" if f == 1 else bytes([0x80 | f]) for f in range(8))


def key_suffix(rd: bool, cd: bool, do: bool) -> bytes:
    """The cache-key suffix for the query flags that change the answer (RD, CD, DO)."""
    return SUFFIXES[int(rd) | int(cd) << 1 | int(do) << 2]


def skip_name(buf: bytes, off: int) -> int:
    """Return the offset just past the (possibly compressed) name starting at `off`."""
    n = len(buf)
    while True:
        if off >= n:
            raise WireError("name runs past the end of the message")
        ln = buf[off]
        if ln == 0:
            return off + 1
        if ln & 0xC0 == 0xC0:
            if off + 2 > n:
                raise WireError("truncated compression pointer")
            return off + 2
        if ln & 0xC0:
            raise WireError(f"unsupported label type 0x{ln:02x}")
        off += 1 + ln


def question_end(buf: bytes) -> int:
    """Offset just past the single question of `buf` (uncompressed name, as queries carry it)."""
    if len(buf) < HEADER_LEN:
        raise WireError("message shorter than a header")
    off = HEADER_LEN
    total = 0
    n = len(buf)
    while True:
        if off >= n:
            raise WireError("question name runs past the end")
        ln = buf[off]
        if ln == 0:
            off += 1
            break
        if ln > 63:
            raise WireError("compressed or invalid label in question")
        total += ln + 1
        if total > 254:
            raise WireError("question name longer than 255 octets")
        off += 1 + ln
    if off + 4 > n:
        raise WireError("question truncated before type and class")
    return off + 4


def question_key(buf: bytes, qend: int, suffix: bytes) -> bytes:
    """The cache key of a question: lowercased name, type and class as sent, plus the flags suffix.

    bytes.lower() only maps A-Z; length octets are <= 63, below 'A' (65), so they are never changed.
    Type and class stay as they are: HTTPS is type 65, the byte 'A', which must not become type 97.
    """
    return buf[HEADER_LEN : qend - 4].lower() + buf[qend - 4 : qend] + suffix


# bytes.translate table: 0x20 for every lowercase ASCII letter, 0 for anything else (length octets are
# <= 63, below 'a', so they are never letters).
_LETTER_BITS = bytes(0x20 if 0x61 <= c <= 0x7A else 0 for c in range(256))


def randomize_case(question_lc: bytes) -> bytes:
    """`question_lc` (name lowercased, then type and class) with each letter of the name upper-cased at
    random, from the system CSPRNG (draft-vixie-dnsext-dns0x20: a reply must echo the case, so a forger
    must guess one more bit per letter). Type and class are left as they are."""
    name = question_lc[:-4]
    n = len(name)
    flip = int.from_bytes(name.translate(_LETTER_BITS), "big") & int.from_bytes(os.urandom(n), "big")
    return (int.from_bytes(name, "big") ^ flip).to_bytes(n, "big") + question_lc[-4:]


# Opt, Record and Scan are NamedTuples, immutable like the frozen dataclasses they were, but made at a
# fifth of the cost (a frozen dataclass sets each field through object.__setattr__): an upstream reply
# makes one Record per record and a Scan on every miss.


class Opt(NamedTuple):
    """The client's EDNS0 OPT record (RFC 6891 §6.1.2)."""

    payload: int
    version: int
    do: bool


class Record(NamedTuple):
    """Where one resource record sits in a message."""

    offset: int  # start of the owner name
    end: int  # just past the rdata
    rtype: int
    ttl_offset: int
    ttl: int
    rdata_offset: int
    rdlen: int
    section: int  # 0 answer, 1 authority, 2 additional


class Scan(NamedTuple):
    """A response walked end to end: header fields, question bounds, every record."""

    qid: int
    flags: int  # 16-bit header flags
    qdcount: int
    qend: int
    records: tuple[Record, ...]
    opt: Record | None

    @property
    def rcode(self) -> int:
        return self.flags & 0xF

    @property
    def truncated(self) -> bool:
        return bool(self.flags & (TC << 8))


def scan(buf: bytes) -> Scan:
    """Walk a whole message; raise WireError if any count, length or name runs out of bounds."""
    if len(buf) < HEADER_LEN:
        raise WireError("message shorter than a header")
    qid, f1, f2, qd, an, ns, ar = _HEADER.unpack_from(buf, 0)
    n = len(buf)
    off = HEADER_LEN
    for _ in range(qd):
        off = skip_name(buf, off) + 4
        if off > n:
            raise WireError("question truncated")
    qend = off
    records: list[Record] = []
    opt: Record | None = None
    for section, count in ((0, an), (1, ns), (2, ar)):
        for _ in range(count):
            start = off
            off = skip_name(buf, off)
            if off + 10 > n:
                raise WireError("record header truncated")
            rtype, _rclass, ttl, rdlen = _RR_FIXED.unpack_from(buf, off)
            if ttl & 0x80000000:
                ttl = 0  # RFC 2181 §8: a TTL with the top bit set is treated as zero
            rr = Record(start, off + 10 + rdlen, rtype, off + 4, ttl, off + 10, rdlen, section)
            if rr.end > n:
                raise WireError("rdata runs past the end")
            off = rr.end
            if rtype == TYPE_OPT:
                if section != 2 or opt is not None:
                    raise WireError("OPT outside the additional section or repeated")
                opt = rr
            else:
                records.append(rr)
    if off != n:
        raise WireError(f"{n - off} trailing bytes after the last record")
    return Scan(qid, f1 << 8 | f2, qd, qend, tuple(records), opt)


MAX_POINTER_CHAIN = 16  # compression pointers followed in one name (dnspython's limit; real names use one)


def check_name(buf: bytes, off: int, end: int, compressed: bool = True, rewritten: frozenset[int] = frozenset()) -> int:
    """Check the (possibly compressed) name at `off`, which must end by `end`; return the offset just past it.

    The rules are those a client's parser (dnspython, the oracle) applies: labels of type 00 or 11 only;
    each pointer points before the name and before the previous target (RFC 1035 §4.1.4, "a prior
    occurrence"; no loops) and at most MAX_POINTER_CHAIN of them; a target's labels end before the place
    that pointed to it; the whole name fits 255 octets (RFC 1035 §2.3.4). A pointer into the header is
    refused too: a cached answer is sent under another header (the client's ID), and its name would change.
    `compressed=False`: no pointer at all (a DNAME's target, RFC 6672 §2.5). `rewritten`: offsets of bytes
    the cache rewrites (TTLs): a pointer that makes one of them a length octet would make the name change
    as the TTL counts down.
    """
    limit = end  # where the labels being read must end
    chunk = off  # where they start
    after = -1  # just past the first pointer: where the name ends in place
    hops = 0
    total = 0
    while True:
        if off >= limit:
            raise WireError("name runs past its end")
        if after >= 0 and off in rewritten:
            raise WireError("compression pointer into a TTL")
        ln = buf[off]
        if ln == 0:
            return off + 1 if after < 0 else after
        if ln < 0x40:
            total += ln + 1
            if total > 254:
                raise WireError("name longer than 255 octets")
            off += 1 + ln
            continue
        if ln < 0xC0:
            raise WireError(f"unsupported label type 0x{ln:02x}")
        if off + 2 > limit:
            raise WireError("truncated compression pointer")
        if not compressed:
            raise WireError("compression pointer where names must not be compressed")
        ptr = (ln & 0x3F) << 8 | buf[off + 1]
        if ptr >= chunk or ptr < HEADER_LEN:
            raise WireError("compression pointer does not point back into the message's names")
        hops += 1
        if hops > MAX_POINTER_CHAIN:
            raise WireError("compression pointer chain too long")
        if after < 0:
            after = off + 2
        limit = chunk
        off = chunk = ptr


TYPE_A, TYPE_NS, TYPE_CNAME, TYPE_PTR, TYPE_MX, TYPE_TXT = 1, 2, 5, 12, 15, 16
TYPE_AAAA, TYPE_SRV, TYPE_DNAME = 28, 33, 39
_NAME_RDATA = {TYPE_NS: 0, TYPE_CNAME: 0, TYPE_PTR: 0, TYPE_DNAME: 0, TYPE_MX: 2, TYPE_SRV: 6}  # fixed bytes before it
_FIXED_RDATA = {TYPE_A: 4, TYPE_AAAA: 16}


def check_records(buf: bytes, sc: Scan) -> bool:
    """Check every record's owner name and, for the common types of class IN, its rdata (RFC 1035 §3.3,
    RFC 3596, RFC 2782, RFC 6672), as a client's parser would; raise WireError for the first that fails.

    False when a record is of a type or class not checked here (the caller has a full parser check those);
    True when the whole message was checked. The OPT record is not: it never reaches a client (the cache
    puts its own).
    """
    if sc.flags & (OPCODE_MASK << 8):
        raise WireError("a reply to a standard query with another opcode")
    if sc.qdcount != 1 or question_end(buf) != sc.qend:
        raise WireError("a reply carries its query's one question, uncompressed")
    whole = True
    n = len(buf)
    ttls = frozenset(r.ttl_offset + i for r in sc.records for i in range(4))
    for r in sc.records:
        off = r.offset
        # The usual owner, a pointer to the question's name, needs no walk: the question was checked.
        if buf[off] != 0xC0 or buf[off + 1] != HEADER_LEN:
            check_name(buf, off, n, True, ttls)
        rd, end = r.rdata_offset, r.end
        if buf[rd - 8] != 0 or buf[rd - 7] != 1:  # class IN (RFC 1035 §3.2.4), in the RR's fixed part
            whole = False
            continue
        t = r.rtype
        fixed = _NAME_RDATA.get(t)
        if fixed is not None:
            if r.rdlen <= fixed or check_name(buf, rd + fixed, end, t != TYPE_DNAME, ttls) != end:
                raise WireError(f"type {t} rdata is not its fields and one name")
        elif t in _FIXED_RDATA:
            if r.rdlen != _FIXED_RDATA[t]:
                raise WireError(f"type {t} rdata of {r.rdlen} octets")
        elif t == TYPE_SOA:
            if check_name(buf, check_name(buf, rd, end, True, ttls), end, True, ttls) + 20 != end:
                raise WireError("SOA rdata is not two names and five numbers")
        elif t == TYPE_TXT:
            if not r.rdlen:
                raise WireError("TXT rdata without a string")
            while rd < end:
                rd += 1 + buf[rd]
            if rd != end:
                raise WireError("TXT strings do not fill the rdata")
        else:
            whole = False
    return whole


def soa_minimum(buf: bytes, rr: Record) -> int:
    """The MINIMUM field of an SOA record: the last 32 bits of its rdata (RFC 1035 §3.3.13)."""
    if rr.rdlen < 22:
        raise WireError("SOA rdata too short")
    return int(_U32.unpack_from(buf, rr.rdata_offset + rr.rdlen - 4)[0])


def parse_opt(buf: bytes, qend: int) -> Opt | None:
    """The OPT record of a query whose only additional record starts at `qend`; None if there is none."""
    if len(buf) == qend:
        return None
    if len(buf) < qend + 11 or buf[qend] != 0 or _U16.unpack_from(buf, qend + 1)[0] != TYPE_OPT:
        raise WireError("additional record is not a root OPT")
    rdlen = _U16.unpack_from(buf, qend + 9)[0]
    if qend + 11 + rdlen != len(buf):
        raise WireError("OPT rdata length does not match the message")
    payload = _U16.unpack_from(buf, qend + 3)[0]
    return Opt(payload, buf[qend + 6], bool(buf[qend + 7] & 0x80))


def opt_record(payload: int, do: bool, ext_rcode: int = 0) -> bytes:
    """An OPT pseudo-record with no options (RFC 6891 §6.1.2)."""
    return b"\x00" + _U16.pack(TYPE_OPT) + _U16.pack(payload) + bytes(
        [ext_rcode, 0, 0x80 if do else 0, 0]
    ) + b"\x00\x00"


def build_query(qid: int, question: bytes, rd: bool, cd: bool, do: bool, payload: int) -> bytes:
    """A query for one question (raw name+type+class bytes) carrying an OPT record."""
    f1 = RD if rd else 0
    f2 = CD if cd else 0
    return _HEADER.pack(qid, f1, f2, 1, 0, 0, 1) + question + opt_record(payload, do)


def error_reply(query: bytes, rcode: int, qend: int | None = None, opt: bytes = b"") -> bytes | None:
    """A reply with `rcode` to a query; None when even the header cannot be read (drop it).

    The question is echoed when `qend` says where it ends; otherwise the reply has no question
    (RFC 1035 allows QDCOUNT 0 in a FORMERR). `opt` is appended as the only additional record.
    """
    if len(query) < HEADER_LEN:
        return None
    f1 = QR | (query[2] & (OPCODE_MASK | RD))
    f2 = (query[3] & CD) | RA | (rcode & 0xF)
    qd = 1 if qend is not None else 0
    head = query[:2] + bytes([f1, f2]) + _U16.pack(qd) + b"\x00\x00\x00\x00" + _U16.pack(1 if opt else 0)
    return head + (query[HEADER_LEN:qend] if qend is not None else b"") + opt


# RFC 8482 §4.2: the HINFO answered to ANY: CPU "RFC8482", OS "" (character-strings, RFC 1035 §3.3.2).
HINFO_RDATA = b"\x07RFC8482\x00"
# Its TTL: short, so that no cache downstream keeps a synthesized record long (RFC 8482 leaves it open).
ANY_TTL = 30


def minimal_any_reply(query: bytes, qend: int, opt: Opt | None) -> bytes:
    """The RFC 8482 answer to an ANY query: one synthesized HINFO record for the name (a compression
    pointer to the question), in the query's class; our OPT when the client sent one."""
    f1 = QR | (query[2] & RD)
    f2 = RA | (query[3] & CD)
    answer = (b"\xc0\x0c" + _U16.pack(TYPE_HINFO) + query[qend - 2 : qend] + _U32.pack(ANY_TTL)
              + _U16.pack(len(HINFO_RDATA)) + HINFO_RDATA)
    extra = opt_record(EDNS_PAYLOAD, opt.do) if opt is not None else b""
    head = query[:2] + bytes([f1, f2]) + b"\x00\x01\x00\x01\x00\x00" + (b"\x00\x01" if extra else b"\x00\x00")
    return head + query[HEADER_LEN:qend] + answer + extra


def truncated_reply(query: bytes, qend: int, hdr: bytes, opt: bytes) -> bytes:
    """The reply to send when the answer does not fit the client's UDP size: TC set, question only.

    `hdr` is bytes 2..12 of the full answer's header; its flags are kept, its counts replaced.
    """
    return (
        query[:2]
        + bytes([hdr[0] | TC, hdr[1]])
        + b"\x00\x01\x00\x00\x00\x00"
        + (b"\x00\x01" if opt else b"\x00\x00")
        + query[HEADER_LEN:qend]
        + opt
    )


def frame(msg: bytes) -> bytes:
    """`msg` with its two-byte length prefix, as DNS over TCP carries it (RFC 1035 §4.2.2)."""
    return _U16.pack(len(msg)) + msg


def pop_frames(buf: bytearray) -> list[bytes]:
    """The complete length-prefixed messages (RFC 1035 §4.2.2, TCP) taken off the front of `buf`."""
    out = []
    while len(buf) >= 2:
        n = buf[0] << 8 | buf[1]
        if len(buf) < 2 + n:
            break
        out.append(bytes(buf[2 : 2 + n]))
        del buf[: 2 + n]
    return out


def pack_ttls(template: bytes, offsets: tuple[int, ...], ttls: tuple[int, ...], elapsed: int) -> bytes:
    """`template` with each TTL at `offsets` set to max(0, ttl - elapsed)."""
    buf = bytearray(template)
    pack = _U32.pack_into
    for off, ttl in zip(offsets, ttls, strict=True):
        pack(buf, off, ttl - elapsed if ttl > elapsed else 0)
    return bytes(buf)
