"""Memory under attack: shed before the kernel's OOM killer does it for us.

The cache is bounded by its byte budget (entries, prefetch items and the reply memos, each counted at what
it really costs: cache/store.py); in-flight state by listen.max_pending and resolve.max_concurrent; the
live page's sketches by their fixed sizes (observe/live.py). What none of those bounds can see is the
process as a whole: a budget set too high for the container, the allocator's fragmentation, a burst of
TCP clients. So once a second the agent reads its resident set (/proc/self/statm) against a limit (the
cgroup's memory.max or memory.limit_in_bytes, or cache.memory_limit) and sheds:

- past memory_shed_percent (85%) of it, the cache is halved (least recently used first, largest partition
  first) and the reply memos cleared, and again each round the resident set has grown by 1 MiB more:
  nodelocal_memory_shed_total{action="evict"};
- past 95% and growing, new misses are refused (REFUSED; hits and stale answers are still served) for as
  long as it stays past 95% and at least 10 s more without growth; then misses are let through again (and
  refused again if they make it grow): nodelocal_memory_shed_total{action="refuse"} counts the refused
  queries.

Memory freed inside the interpreter is reused by it but seldom returned to the kernel, so the resident set
may stay high after an eviction; it then stops growing, which is what keeps the agent alive.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from nodelocal.cache.store import Store

log = logging.getLogger("nodelocal.memory")

REFUSE_PERCENT = 95
REFUSE_HOLD = 10  # rounds (seconds) misses stay refused past the hard mark without growth
GROWTH = 1 << 20  # resident bytes it must grow by past the mark before another eviction round
_UNLIMITED = 1 << 60  # cgroup v1 writes "no limit" as a huge number (PAGE_COUNTER_MAX pages)


class Memo(Protocol):
    def clear_memo(self) -> None: ...


class Shedder(Protocol):
    shedding: bool


def cgroup_limit(root: Path = Path("/sys/fs/cgroup"), proc_cgroup: Path = Path("/proc/self/cgroup")) -> int | None:
    """The memory limit of the cgroup this process is in (v2 memory.max, v1 memory.limit_in_bytes); None
    when there is none or it cannot be read."""
    paths: list[Path] = []
    try:
        for line in proc_cgroup.read_text().splitlines():
            _id, controllers, path = line.split(":", 2)
            rel = path.lstrip("/")
            if controllers == "":
                paths.append(root / rel / "memory.max")  # v2, unified
            elif "memory" in controllers.split(","):
                paths.append(root / "memory" / rel / "memory.limit_in_bytes")  # v1
    except (OSError, ValueError):
        pass
    # In a container with its own cgroup namespace, the path is "/" and the files sit at the root.
    paths += [root / "memory.max", root / "memory" / "memory.limit_in_bytes"]
    for p in paths:
        try:
            text = p.read_text().strip()
        except OSError:
            continue
        if text == "max":
            return None
        try:
            value = int(text)
        except ValueError:
            continue
        return value if 0 < value < _UNLIMITED else None
    return None


def rss_bytes() -> int:
    """This process's resident set, from /proc/self/statm (pages)."""
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class MemoryGuard:
    """Reads the resident set against the limit each round and sheds (see the module docstring)."""

    def __init__(self, store: Store, limit: int | None, shed_percent: int, memos: Callable[[], Sequence[Memo]],
                 resolver: Callable[[], Shedder], rss: Callable[[], int] = rss_bytes) -> None:
        self.store = store
        self._limit: int | None = None
        self.limit = limit
        self.shed_percent = shed_percent
        self.memos = memos
        self.resolver = resolver
        self.rss = rss
        self.refusing = False
        self.evicted_at = 0  # resident bytes at the last eviction round
        self.last_rss = 0  # resident bytes at the last round
        self.hold = 0  # rounds left to refuse without growth

    @property
    def limit(self) -> int | None:
        return self._limit

    @limit.setter
    def limit(self, value: int | None) -> None:
        self._limit = value
        self.store.memory_limit = value or 0

    def check(self) -> None:
        limit = self.limit
        if not limit:
            return
        rss = self.rss()
        # Evict when first past the mark, then again only if the resident set still grows: refilling the
        # cache reuses the memory the eviction freed, and should not cost it the whole cache every second.
        if rss * 100 >= limit * self.shed_percent and rss >= self.evicted_at + GROWTH:
            self.evicted_at = rss
            before = self.store.bytes
            gone = self.store.shrink(before // 2)
            for m in self.memos():
                m.clear_memo()
            self.store.shed["evict"] += 1
            log.warning("memory: resident %d MiB of a %d MiB limit: %d cache entries evicted (%d -> %d KiB), "
                        "reply memos cleared", rss >> 20, limit >> 20, gone, before >> 10, self.store.bytes >> 10)
        # Refuse new misses once past the hard mark and growing, and on while it stays past the mark, for up to
        # REFUSE_HOLD rounds without growth: a resident set that stays high after an eviction (memory the
        # interpreter keeps for reuse) must not refuse misses for good; if they make it grow, refused again.
        if rss * 100 < limit * REFUSE_PERCENT:
            refusing = False
        elif rss > self.last_rss:
            refusing, self.hold = True, REFUSE_HOLD
        else:
            self.hold -= 1
            refusing = self.refusing and self.hold > 0
        self.last_rss = rss
        if refusing != self.refusing:
            log.warning("memory: resident %d MiB of a %d MiB limit: new misses %s", rss >> 20, limit >> 20,
                        "refused" if refusing else "served again")
        self.refusing = refusing
        self.resolver().shedding = refusing
        if rss * 100 < limit * self.shed_percent:
            self.evicted_at = 0
