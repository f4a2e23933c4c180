"""What an upstream answer becomes: which kind, how long it may be cached, the entry that serves it."""

from __future__ import annotations

from dataclasses import dataclass

import dns.message

from nodelocal import WireError
from nodelocal.cache.store import DENIAL, SUCCESS, Entry
from nodelocal.dns import wire

UNCAPPED = 0x7FFFFFFF  # RFC 2181 §8: the largest TTL


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
    answers without an SOA (RFC 2308 §5), and anything whose TTL comes out as 0.
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
        ttl = min(r.ttl for r in sc.records)
        ttl = max(policy.min_ttl, min(ttl, policy.success_max_ttl))
        return (SUCCESS, ttl) if ttl > 0 else None
    if rcode in (wire.NOERROR, wire.NXDOMAIN):
        # RFC 2308 §5: negative TTL = min(SOA TTL, SOA MINIMUM); no SOA in authority, no caching.
        for r in sc.records:
            if r.section == 1 and r.rtype == wire.TYPE_SOA:
                ttl = min(r.ttl, wire.soa_minimum(buf, r))
                ttl = max(policy.min_ttl, min(ttl, policy.denial_max_ttl))
                return (DENIAL, ttl) if ttl > 0 else None
        return None
    return None


def without_trailing_opt(buf: bytes, sc: wire.Scan) -> tuple[bytes, wire.Scan]:
    """A message whose OPT record, if any, is the last record (so cutting it moves no other offset).

    OPT is last in practice; when it is not, dnspython re-renders the message (slow, rare).
    """
    if sc.opt is None or sc.opt.end == len(buf):
        return buf, sc
    rendered = dns.message.from_wire(buf).to_wire()
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
