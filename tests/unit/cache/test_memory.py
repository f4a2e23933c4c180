"""Memory accounting and shedding: what the cache counts is what it costs, and the agent sheds near its limit.

The accounting tests measure with tracemalloc (bytes really allocated) and check the count against it; no
timing is involved.
"""

from __future__ import annotations

import asyncio
import gc
import time
import tracemalloc
from pathlib import Path
from typing import Any

import dns.message
import dns.rcode
import dns.rrset
import pytest

from nodelocal.cache.memory import MemoryGuard, cgroup_limit
from nodelocal.cache.policy import TTLPolicy, entry_for
from nodelocal.cache.store import DENIAL, SUCCESS, Store
from nodelocal.config import load
from nodelocal.dns import wire
from nodelocal.resolve.resolver import Resolver


def reply(name: str, kind: str) -> tuple[bytes, bytes]:
    q = dns.message.make_query(name, "A")
    r = dns.message.make_response(q)
    if kind == "a":
        r.answer.append(dns.rrset.from_text(name, 300, "IN", "A", "192.0.2.1"))
    elif kind == "nx":
        r.set_rcode(dns.rcode.NXDOMAIN)
        r.authority.append(dns.rrset.from_text("example.test.", 300, "IN", "SOA",
                                               "ns.example.test. host.example.test. 1 3600 600 86400 300"))
    else:
        r.answer.append(dns.rrset.from_text(name, 300, "IN", "CNAME", "x.example.test."))
        r.answer.append(dns.rrset.from_text("x.example.test.", 300, "IN", "A", *(f"192.0.2.{i}" for i in range(1, 9))))
    return q.to_wire(), r.to_wire()


@pytest.mark.parametrize("kind", ["a", "nx", "cname"])
@pytest.mark.parametrize("n", [2500, 10000])
def test_counted_bytes_cover_what_entries_really_cost(kind: str, n: int) -> None:
    """Entries made and stored as the resolver does: tracemalloc's total for them is within the count."""
    items = [reply(f"n{i:06d}.abcdefgh.example.test.", kind) for i in range(n)]
    store = Store(1 << 40)
    parts = {k: store.partition(".", k, 10**9) for k in (SUCCESS, DENIAL)}
    policy = TTLPolicy(5, 3000, 3000, 5)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for qw, rw in items:
            qend = wire.question_end(qw)
            entry, cacheable = entry_for(wire.question_key(qw, qend, b""), rw, False, 0.0, policy)
            assert cacheable
            store.put(entry, parts[entry.kind])
        gc.collect()
        real = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(store.index) == n
    # Never under what it costs (the budget must hold), and not far over it either (it must not waste it).
    assert real <= store.bytes <= 1.5 * real, (real / n, store.bytes / n)


def test_the_budget_holds_entries_and_memos_together() -> None:
    store = Store(64 * 1024)
    part = store.partition(".", SUCCESS, 10**9)
    policy = TTLPolicy(5, 3000, 3000, 5)
    store.memo_bytes = 40 * 1024  # the UDP listeners' memos, as server/udp.py counts them in
    for i in range(200):
        qw, rw = reply(f"n{i}.example.test.", "a")
        qend = wire.question_end(qw)
        entry, _ = entry_for(wire.question_key(qw, qend, b""), rw, False, 0.0, policy)
        store.put(entry, part)
    assert 0 < store.bytes <= 24 * 1024
    assert store.memo_max == 64 * 1024  # the floor; an eighth of a larger budget, at most 4 MiB
    assert Store(1 << 30).memo_max == 4 * 1024 * 1024


def test_shrink_evicts_least_recently_used_first() -> None:
    store = Store(1 << 30)
    part = store.partition(".", SUCCESS, 10**9)
    policy = TTLPolicy(5, 3000, 3000, 5)
    keys = []
    for i in range(100):
        qw, rw = reply(f"n{i}.example.test.", "a")
        qend = wire.question_end(qw)
        entry, _ = entry_for(wire.question_key(qw, qend, b""), rw, False, 0.0, policy)
        store.put(entry, part)
        keys.append(entry.key)
    store.get(keys[0], 1.0)  # used: now the most recent
    full = store.bytes
    gone = store.shrink(full // 2)
    assert store.bytes <= full // 2 and gone >= 50
    assert keys[0] in store.index and keys[1] not in store.index


def make_resolver(store: Store, **cache: Any) -> Resolver:
    from nodelocal.cache.metrics import CacheStats
    from nodelocal.resolve.metrics import ResolveStats
    cfg = load(None, {"upstreams": {"cluster": {"servers": ["127.0.0.1:9"]}, "host": {"servers": ["127.0.0.1:9"]}}},
               env={}, resolv_conf="/nonexistent")
    return Resolver(cfg, store, CacheStats(), ResolveStats())


def test_prefetch_heap_is_pruned_under_a_flood_of_new_names() -> None:
    """Every insert pushes a prefetch item; evicted entries' items must not pile up (each holds its entry)."""
    store = Store(32 * 1024)
    resolver = make_resolver(store)
    route = resolver.router.match(())
    for i in range(5000):
        qw, rw = reply(f"n{i}.example.test.", "a")
        qend = wire.question_end(qw)
        entry, _ = entry_for(wire.question_key(qw, qend, b""), rw, False, 0.0, route.policy)
        resolver._put(entry, 0.0, route)
    assert len(store.index) < 100  # the budget holds a few dozen
    assert len(store.due) <= 2 * len(store.index) + 1024


class FakeMemo:
    def __init__(self) -> None:
        self.cleared = 0

    def clear_memo(self) -> None:
        self.cleared += 1


class FakeResolver:
    shedding = False


def filled(n: int = 200) -> Store:
    store = Store(1 << 30)
    part = store.partition(".", SUCCESS, 10**9)
    for i in range(n):
        qw, rw = reply(f"n{i}.example.test.", "a")
        qend = wire.question_end(qw)
        entry, _ = entry_for(wire.question_key(qw, qend, b""), rw, False, time.monotonic(), TTLPolicy(5, 3000, 3000, 5))
        store.put(entry, part)
    return store


def test_memory_guard_evicts_past_the_mark_and_refuses_misses_near_the_limit() -> None:
    store = filled()
    memo, res = FakeMemo(), FakeResolver()
    rss = [50 << 20]
    guard = MemoryGuard(store, 100 << 20, 85, lambda: [memo], lambda: res, rss=lambda: rss[0])
    assert store.memory_limit == 100 << 20
    full = store.bytes
    guard.check()
    assert store.bytes == full and store.shed == {"evict": 0, "refuse": 0} and not res.shedding
    rss[0] = 86 << 20
    guard.check()
    assert store.bytes <= full // 2 and store.shed["evict"] == 1 and memo.cleared == 1 and not res.shedding
    half = store.bytes
    guard.check()  # still past the mark but not growing: the cache is left to refill
    assert store.bytes == half and store.shed["evict"] == 1
    rss[0] = 96 << 20
    guard.check()  # grew by more than 1 MiB: evict again, and refuse new misses
    assert store.bytes <= half // 2 and store.shed["evict"] == 2 and res.shedding
    for _ in range(9):
        guard.check()  # past 95%, not growing: still refused for 10 rounds in all
        assert res.shedding
    guard.check()  # ... then let through again (memory the interpreter keeps for reuse must not refuse for good)
    assert not res.shedding and store.shed["evict"] == 2
    rss[0] = 97 << 20
    guard.check()  # they made it grow: refused again
    assert res.shedding
    rss[0] = 60 << 20
    guard.check()
    assert not res.shedding


def test_memory_guard_without_a_limit_does_nothing() -> None:
    store = filled(10)
    res = FakeResolver()
    guard = MemoryGuard(store, None, 85, lambda: [], lambda: res, rss=lambda: 1 << 40)
    guard.check()
    assert len(store.index) == 10 and not res.shedding and store.memory_limit == 0


def test_a_shedding_resolver_refuses_new_misses_and_still_answers_hits() -> None:
    store = filled(5)
    resolver = make_resolver(store)
    resolver.shedding = True
    hit_q = dns.message.make_query("n1.example.test.", "A", use_edns=False)
    miss_q = dns.message.make_query("new.example.test.", "A", use_edns=False)

    async def go() -> tuple[bytes | None, bytes | None]:
        return await resolver.answer(hit_q.to_wire(), tcp=True), await resolver.answer(miss_q.to_wire(), tcp=True)

    hit, miss = asyncio.run(go())
    assert hit is not None and dns.message.from_wire(hit).answer
    assert miss is not None and dns.message.from_wire(miss).rcode() == dns.rcode.REFUSED
    assert store.shed["refuse"] == 1
    resolver.close()


def test_cgroup_limits_v1_and_v2(tmp_path: Path) -> None:
    proc = tmp_path / "cgroup"
    root = tmp_path / "fs"
    (root / "kubepods" / "pod1").mkdir(parents=True)
    proc.write_text("0::/kubepods/pod1\n")
    (root / "kubepods" / "pod1" / "memory.max").write_text("167772160\n")
    assert cgroup_limit(root, proc) == 160 << 20
    (root / "kubepods" / "pod1" / "memory.max").write_text("max\n")
    assert cgroup_limit(root, proc) is None
    v1 = tmp_path / "v1"
    (v1 / "memory" / "kubepods" / "pod2").mkdir(parents=True)
    proc.write_text("12:memory:/kubepods/pod2\n11:cpu,cpuacct:/kubepods/pod2\n")
    (v1 / "memory" / "kubepods" / "pod2" / "memory.limit_in_bytes").write_text("67108864\n")
    assert cgroup_limit(v1, proc) == 64 << 20
    (v1 / "memory" / "kubepods" / "pod2" / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    assert cgroup_limit(v1, proc) is None  # v1's "no limit"
    assert cgroup_limit(tmp_path / "none", tmp_path / "missing") is None
