"""Bounded top-k: a Misra-Gries frequent-items summary, fed in weighted batches, with exponential decay.

The built-in page shows the most queried names and the busiest clients. A dict with a counter per name
grows with every name ever asked (ndots:5 search paths alone make many); this summary keeps at most
`capacity` counters whatever the stream, and still holds every item heavier than 1/(capacity+1) of it
(Misra & Gries 1982; merging a batch into the summary as in Agarwal et al., "Mergeable Summaries", 2012).

Guarantee, for every item x after any sequence of update() and decay() calls:

    count(x) <= true(x) <= count(x) + error

where true(x) is x's decayed weight, count(x) is 0 for an item not held, and
error <= (total - sum of counts) / (capacity + 1) <= total / (capacity + 1).
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable, Mapping
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class TopK(Generic[K]):
    """At most `capacity` counters; update() merges a batch, decay() ages everything by one factor."""

    __slots__ = ("capacity", "counts", "error", "total")

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = capacity
        self.counts: dict[K, float] = {}
        self.total = 0.0  # (decayed) weight of everything ever added
        self.error = 0.0  # the most any count can be below the true weight

    def update(self, batch: Mapping[K, float]) -> None:
        """Add a batch (item -> positive weight), then shrink back to `capacity` counters.

        The dict briefly holds capacity + len(batch) counters; callers bound the batch.
        """
        counts = self.counts
        added = 0.0
        for item, w in batch.items():
            counts[item] = counts.get(item, 0.0) + w
            added += w
        self.total += added
        if len(counts) > self.capacity:
            # Subtract the (capacity+1)-th largest count from every counter and drop those at or below
            # it: at least capacity+1 counters lose `cut` each, so the sum of all `cut`s (the error)
            # stays within the weight no longer counted, divided by capacity+1.
            cut = heapq.nlargest(self.capacity + 1, counts.values())[-1]
            self.counts = {k: c - cut for k, c in counts.items() if c > cut}
            self.error += cut

    def decay(self, factor: float) -> None:
        """Multiply every weight by `factor` (0 < factor <= 1): old traffic fades, the bound still holds."""
        if not 0.0 < factor <= 1.0:
            raise ValueError("factor must be in (0, 1]")
        if factor == 1.0:
            return
        self.counts = {k: c * factor for k, c in self.counts.items()}
        self.total *= factor
        self.error *= factor

    def top(self, n: int) -> list[tuple[K, float]]:
        """The `n` largest (item, count) pairs, largest first; ties in a stable but arbitrary order."""
        return heapq.nlargest(n, self.counts.items(), key=lambda kv: kv[1])

    def __len__(self) -> int:
        return len(self.counts)
