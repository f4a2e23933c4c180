"""What an upstream answer becomes: which kind, how long it may be cached, the entry that serves it."""

from __future__ import annotations

from dataclasses import dataclass

import dns.message

from nodelocal import WireError
from nodelocal.cache.store import DENIAL, SUCCESS, Entry
from nodelocal.dns import wire
from nodelocal.dns.names import labels_of_wire

UNCAPPED = 0x7FFFFFFF  # RFC 2181 §8: the largest TTL

TYPE_CNAME = 5  # RFC 1035 §3.2.2
TYPE_DNAME = 39  # RFC 6672
TYPE_ANY = 255  # RFC 1035 §3.2.3 (QTYPE *): any record at the name answers it
_MAX_WIRE_NAME = 255  # RFC 1035 §2.3.4


@dataclass(frozen=True, slots=True)
class TTLPolicy:
    """TTL clamps of one zone (defaults as node-local-dns's `cache 30`; see config.CacheConfig)."""

    min_ttl: int = 5
    success_max_ttl: int = 30
    denial_max_ttl: int = 30
    servfail_ttl: int = 5


def decide(buf: bytes, sc: wire.Scan, policy: TTLPolicy) -> tuple[int, int] | None:
    """(kind, ttl) for a cacheable answer, None for one that must not be cached.

    Not cached: truncated answers, REFUSED and every rcode but NOERROR/NXDOMAIN/SERVFAIL, negative
    answers without an SOA (RFC 2308 §5), and anything whose TTL comes out as 0. A NOERROR answer
    whose CNAME/DNAME chain ends without data of the asked type is NODATA (RFC 2308 §2.2.1), a
    negative answer like any other.
    """
    if sc.truncated:
        return None
    rcode = sc.rcode
    if sc.opt is not None and buf[sc.opt.ttl_offset]:
        return None  # an extended RCODE (RFC 6891 §6.1.3): not one of ours to cache
    if rcode == wire.SERVFAIL:
        return (DENIAL, policy.servfail_ttl) if policy.servfail_ttl > 0 else None
    answers = [r for r in sc.records if r.section == 0]
    if rcode == wire.NOERROR and answers:
        nodata = chain_ends_without_data(buf, sc, answers)
        if nodata is None:
            return None  # a name in the chain we cannot read: serve it, do not cache it
        if not nodata:
            ttl = min(r.ttl for r in sc.records)
            ttl = max(policy.min_ttl, min(ttl, policy.success_max_ttl))
            return (SUCCESS, ttl) if ttl > 0 else None
        # RFC 2308 §2.2.1: a CNAME chain and no data of the type at its end is NODATA, negative below.
    if rcode in (wire.NOERROR, wire.NXDOMAIN):
        # RFC 2308 §5: negative TTL = min(SOA TTL, SOA MINIMUM); no SOA in authority, no caching.
        for r in sc.records:
            if r.section == 1 and r.rtype == wire.TYPE_SOA:
                ttl = min(r.ttl, wire.soa_minimum(buf, r))
                # The chain before a denial (RFC 2308 §2.1, §2.2.1) is cached with it: the entry must
                # not outlive any of its records (RFC 2181 §5.2 / §8, a TTL is an upper bound).
                for a in answers:
                    ttl = min(ttl, a.ttl)
                ttl = max(policy.min_ttl, min(ttl, policy.denial_max_ttl))
                return (DENIAL, ttl) if ttl > 0 else None
        return None
    return None


def read_name(buf: bytes, off: int) -> bytes:
    """The name at `off`, lowercased, in uncompressed wire form (RFC 1035 §4.1.4 pointers followed).

    Each pointer must point before the name and before the previous pointer's target (RFC 1035
    §4.1.4: "a prior occurrence"; dnspython's rule too), which rules out loops; the whole name must
    fit 255 octets (RFC 1035 §2.3.4).
    """
    out = bytearray()
    n = len(buf)
    limit = off
    while True:
        if off >= n:
            raise WireError("name runs past the end of the message")
        ln = buf[off]
        if ln == 0:
            out.append(0)
            if len(out) > _MAX_WIRE_NAME:
                raise WireError("name longer than 255 octets")
            return bytes(out).lower()
        if ln & 0xC0 == 0xC0:
            if off + 2 > n:
                raise WireError("truncated compression pointer")
            ptr = (ln & 0x3F) << 8 | buf[off + 1]
            if ptr >= limit:
                raise WireError("compression pointer does not point backwards")
            off = limit = ptr
            continue
        if ln & 0xC0:
            raise WireError(f"unsupported label type 0x{ln:02x}")
        if off + 1 + ln > n:
            raise WireError("label runs past the end of the message")
        out += buf[off : off + 1 + ln]
        if len(out) > _MAX_WIRE_NAME:
            raise WireError("name longer than 255 octets")
        off += 1 + ln


def chain_ends_without_data(buf: bytes, sc: wire.Scan, answers: list[wire.Record]) -> bool | None:
    """Whether the answer section's CNAME/DNAME chain from the question name ends without a record
    of the asked type (RFC 2308 §2.2.1: NODATA after a chain); None if a name cannot be read.

    An answer with no CNAME or DNAME, or a question for CNAME or ANY, is never NODATA: the answer
    section then holds the data itself. Names compare case-insensitively (RFC 4343).
    """
    if sc.qdcount != 1:
        return False  # no one question to follow a chain from (entry_for refuses such answers anyway)
    qtype = buf[sc.qend - 4] << 8 | buf[sc.qend - 3]
    if qtype in (TYPE_CNAME, TYPE_ANY) or not any(r.rtype in (TYPE_CNAME, TYPE_DNAME) for r in answers):
        return False
    try:
        owners = [read_name(buf, r.offset) for r in answers]
        name = read_name(buf, wire.HEADER_LEN)
        # Each step uses up a record of the chain: more steps than records means a loop.
        for _ in range(len(answers) + 1):
            target: bytes | None = None
            for owner, r in zip(owners, answers, strict=True):
                if owner == name:
                    if r.rtype == qtype:
                        return False
                    if r.rtype == TYPE_CNAME:
                        target = read_name(buf, r.rdata_offset)
            if target is None:
                target = _dname_substitute(buf, name, owners, answers)
            if target is None:
                return True
            name = target
        return True  # a CNAME loop never reaches data
    except WireError:
        return None


def _dname_substitute(buf: bytes, name: bytes, owners: list[bytes], answers: list[wire.Record]) -> bytes | None:
    """`name` rewritten by a DNAME owned by one of its ancestors (RFC 6672 §2.2), None if none applies.

    Servers send the CNAME they synthesise with the DNAME (RFC 6672 §3.1), so this is the fallback
    for one that did not.
    """
    labels = labels_of_wire(name)
    for owner, r in zip(owners, answers, strict=True):
        if r.rtype != TYPE_DNAME:
            continue
        suffix = labels_of_wire(owner)
        cut = len(labels) - len(suffix)
        # Only names strictly below the owner are rewritten (RFC 6672 §2.3).
        if cut > 0 and labels[cut:] == suffix:
            prefix = b"".join(bytes([len(lb)]) + lb for lb in labels[:cut])
            out = prefix + read_name(buf, r.rdata_offset)
            if len(out) > _MAX_WIRE_NAME:
                return None  # YXDOMAIN territory (RFC 6672 §2.2): the chain ends here
            return out
    return None


def validate(buf: bytes, sc: wire.Scan) -> tuple[bytes, wire.Scan]:
    """The upstream reply `buf` as it may be cached and relayed: every record would parse in a client
    (dnspython, the oracle), whatever an upstream or a forger sent; WireError if not.

    wire.check_records checks the common types itself (and refuses pointers into the header or onto TTL
    octets, which the cache rewrites per client). A reply with any other type or class (DNSSEC records,
    SVCB/HTTPS, CAA, ...) is parsed whole by dnspython and written out again by it, slower but rarer: its
    compression then points only at names, whatever the upstream's pointed at.
    """
    if wire.check_records(buf, sc):
        return buf, sc
    try:
        rendered = dns.message.from_wire(buf).to_wire()
    except Exception as e:  # dnspython raises a dozen kinds (FormError, BadPointer, UnknownTSIGKey, ...)
        raise WireError(f"malformed record: {type(e).__name__}") from None
    return rendered, wire.scan(rendered)


def without_trailing_opt(buf: bytes, sc: wire.Scan) -> tuple[bytes, wire.Scan]:
    """A message whose OPT record, if any, is the last record (so cutting it moves no other offset).

    OPT is last in practice; when it is not, dnspython re-renders the message (slow, rare).
    """
    if sc.opt is None or sc.opt.end == len(buf):
        return buf, sc
    try:
        rendered = dns.message.from_wire(buf).to_wire()
    except Exception as e:  # an OPT with options dnspython refuses: not an answer to keep
        raise WireError(f"malformed message: {type(e).__name__}") from None
    return rendered, wire.scan(rendered)


def make_entry(
    key: bytes, buf: bytes, sc: wire.Scan, do: bool, now: float, kind: int, ttl: int
) -> Entry:
    """An entry serving the answer `buf`, its OPT stripped, its TTLs capped at `ttl`.

    A record keeps its own TTL when that is lower than the entry's (we never claim more than the
    authority said); every TTL then counts down with the entry.
    """
    buf, sc = without_trailing_opt(buf, sc)
    end = sc.opt.offset if sc.opt is not None else len(buf)
    qend = sc.qend
    arcount = (buf[10] << 8 | buf[11]) - (1 if sc.opt is not None else 0)
    hdr = buf[2:10] + bytes([arcount >> 8, arcount & 0xFF])
    template = buf[qend:end]
    offsets = tuple(r.ttl_offset - qend for r in sc.records)
    ttls = tuple(min(r.ttl, ttl) for r in sc.records)
    e = Entry(key, sc.rcode, kind, hdr, template, offsets, ttls, do, now, ttl)
    e.qlen = qend - wire.HEADER_LEN
    e.body = wire.pack_ttls(template, offsets, ttls, 0)
    return e


def entry_for(
    key: bytes, buf: bytes, do: bool, now: float, policy: TTLPolicy, sc: wire.Scan | None = None
) -> tuple[Entry, bool]:
    """Make the entry for an upstream answer (scanned here unless `sc` is its scan already); the flag
    says whether it may be cached."""
    if sc is None:
        sc = wire.scan(buf)
    if sc.qdcount != 1:
        raise WireError("answer does not carry exactly one question")
    verdict = decide(buf, sc, policy)
    if verdict is None:
        # Served once, never stored: TTLs pass through as the upstream sent them.
        return make_entry(key, buf, sc, do, now, SUCCESS, UNCAPPED), False
    kind, ttl = verdict
    return make_entry(key, buf, sc, do, now, kind, ttl), True
