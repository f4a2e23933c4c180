"""nodelocal.resolve.resolver's prefetch: which entries are refreshed before they expire, how many a second,
and that a refresh asks exactly what the entry holds. A fake clock; a real upstream on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import dns.flags
import dns.message
import pytest

from nodelocal.cache.metrics import CacheStats
from nodelocal.cache.store import Store
from nodelocal.config import load
from nodelocal.resolve.metrics import ResolveStats
from nodelocal.resolve.resolver import Resolver
from tests.fakedns import FakeDNS, wait_for


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def up() -> Iterator[FakeDNS]:
    with FakeDNS(zone="example.test.") as f:
        for i in range(20):
            f.add(f"n{i}.example.test", "A", 10, f"192.0.2.{i}")
            f.add(f"n{i}.example.test", "AAAA", 10, f"2001:db8::{i}")
        yield f


def resolver(up: FakeDNS, clock: Clock, *, rate: int = 100, hits: int = 2) -> Resolver:
    cfg = load(None, {
        "upstreams": {"cluster": {"servers": [f"127.0.0.1:{up.port}"], "transport": "udp"}},
        "resolve": {"prefetch_rate": rate},
        "zones": {".": {"forward": ["cluster"],
                        "cache": {"min_ttl": 10, "success_max_ttl": 10, "prefetch_hits": hits,
                                  "prefetch_percent": 10}}},
    }, env={}, resolv_conf="/nonexistent")
    return Resolver(cfg, Store(1 << 24, now=clock), CacheStats(), ResolveStats(), now=clock)


async def query(r: Resolver, name: str, rdtype: str = "A", **make: Any) -> dns.message.Message:
    out = await r.answer(dns.message.make_query(name, rdtype, **make).to_wire(), tcp=False)
    assert out is not None
    return dns.message.from_wire(out)


def test_only_used_entries_in_their_window_are_refreshed(up: FakeDNS) -> None:
    clock = Clock()

    async def body() -> None:
        r = resolver(up, clock)
        await query(r, "n1.example.test")  # used: 2 hits below
        await query(r, "n2.example.test")  # stored, never used
        for _ in range(2):
            await query(r, "n1.example.test")
        assert up.count() == 2
        clock.t += 8.9  # the window opens at 90% of the 10 s TTL
        assert r.prefetch_due() == 0
        clock.t += 0.2
        assert r.prefetch_due() == 1  # n1 only
        assert await asyncio.to_thread(wait_for, lambda: up.count("n1.example.test") == 2, 3)
        assert r.prefetched["."] == 1 and up.count("n2.example.test") == 1
        assert r.prefetch_due() == 0  # one refresh per entry
        r.close()

    asyncio.run(body())


def test_a_refresh_asks_what_the_entry_holds(up: FakeDNS) -> None:
    clock = Clock()

    async def body() -> None:
        r = resolver(up, clock)
        await query(r, "N3.Example.Test", "AAAA", want_dnssec=True)
        for _ in range(2):
            await query(r, "n3.example.test", "AAAA", want_dnssec=True)
        clock.t += 9.5
        assert r.prefetch_due() == 1
        assert await asyncio.to_thread(wait_for, lambda: len(up.seen) == 2, 3)
        first, again = up.seen
        assert (again.name, again.rdtype, again.do) == ("n3.example.test.", "AAAA", True)
        assert bool(again.flags & dns.flags.RD) == bool(first.flags & dns.flags.RD)
        r.close()

    asyncio.run(body())


def test_prefetch_rate_caps_refreshes_per_second(up: FakeDNS) -> None:
    clock = Clock()

    async def body() -> None:
        r = resolver(up, clock, rate=3)
        for i in range(10):
            for _ in range(3):
                await query(r, f"n{i}.example.test")
        clock.t += 9.5
        assert r.prefetch_due() == 3  # the bucket holds one second's worth
        clock.t += 0.2
        assert r.prefetch_due() == 0  # the rest were due now, and dropped: their next miss refreshes them
        r.close()

    asyncio.run(body())


def test_prefetch_off(up: FakeDNS) -> None:
    clock = Clock()

    async def body() -> None:
        r = resolver(up, clock, hits=0)
        for _ in range(3):
            await query(r, "n1.example.test")
        clock.t += 9.5
        assert r.prefetch_due() == 0 and not r.store.due
        r.close()

    asyncio.run(body())
