"""A lock-free duration histogram with CoreDNS's buckets, filled with plain arithmetic, read at scrape time.

prometheus_client's own metrics take a lock per observation; on the agent's microsecond paths that
shows, so each capability counts into plain objects and its collector turns them into series.
"""

from __future__ import annotations

import bisect

# CoreDNS's duration buckets (plugin/pkg/response: 0.00025 .. 8.192 s, doubling).
DURATION_BUCKETS: tuple[float, ...] = tuple(0.00025 * 2.0**i for i in range(16))


class Histogram:
    """Counts per bucket, cumulative only when exported."""

    __slots__ = ("counts", "n", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(DURATION_BUCKETS) + 1)
        self.total = 0.0
        self.n = 0

    def observe(self, seconds: float, weight: int = 1) -> None:
        """Count one observation, or `weight` alike ones (a sampled hit stands for `weight` hits)."""
        self.counts[bisect.bisect_left(DURATION_BUCKETS, seconds)] += weight
        self.total += seconds * weight
        self.n += weight

    def buckets(self) -> list[tuple[str, float]]:
        out, acc = [], 0
        for bound, c in zip(DURATION_BUCKETS, self.counts, strict=False):
            acc += c
            out.append((repr(bound), float(acc)))
        out.append(("+Inf", float(self.n)))
        return out
