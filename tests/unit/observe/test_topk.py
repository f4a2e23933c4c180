"""observe/topk.py: the Misra-Gries summary stays bounded and keeps its error bound, checked against exact counts."""

from __future__ import annotations

import random
import sys
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nodelocal.observe.topk import TopK


def zipf_stream(n: int, distinct: int, s: float, seed: int) -> list[str]:
    rng = random.Random(seed)
    weights = [1 / (i + 1) ** s for i in range(distinct)]
    return rng.choices([f"name{i}.example.test" for i in range(distinct)], weights=weights, k=n)


def feed(sketch: TopK[str], stream: list[str], batch: int) -> None:
    for i in range(0, len(stream), batch):
        sketch.update(Counter(stream[i : i + batch]))


def check_bound(sketch: TopK[str], exact: Counter[str], tol: float = 1e-6) -> None:
    """count(x) <= true(x) <= count(x) + error for every item, error <= (total - held) / (capacity + 1)."""
    held = sum(sketch.counts.values())
    assert sketch.error <= (sketch.total - held) / (sketch.capacity + 1) + tol
    for item, true in exact.items():
        est = sketch.counts.get(item, 0.0)
        assert est <= true + tol, (item, est, true)
        assert true <= est + sketch.error + tol, (item, est, true, sketch.error)


def test_never_more_counters_than_capacity_whatever_the_stream() -> None:
    sketch: TopK[str] = TopK(64)
    for batch in range(200):  # 200 batches of 500 names never seen before: 100,000 distinct names
        sketch.update({f"n{batch}-{i}.svc.cluster.local": 1.0 for i in range(500)})
        assert len(sketch) <= 64
    assert len(sketch) <= 64
    # memory follows the counters, not the names seen: the dict of a 64-counter summary stays small
    assert sys.getsizeof(sketch.counts) < 8 * 1024


def test_heavy_hitters_found_in_order_on_a_zipf_stream() -> None:
    stream = zipf_stream(100_000, 20_000, 1.1, seed=1)
    exact = Counter(stream)
    sketch: TopK[str] = TopK(256)
    feed(sketch, stream, 1000)
    check_bound(sketch, exact)
    want = [k for k, _ in exact.most_common(10)]
    got = [k for k, _ in sketch.top(10)]
    assert got == want
    # the counts themselves are close: within the error bound, which is small next to the leaders'
    for k, c in sketch.top(10):
        assert exact[k] - sketch.error <= c <= exact[k]
    assert sketch.error < 0.05 * exact.most_common(1)[0][1]


def test_every_item_above_total_over_capacity_is_held() -> None:
    stream = zipf_stream(50_000, 5_000, 0.9, seed=2)
    exact = Counter(stream)
    sketch: TopK[str] = TopK(100)
    feed(sketch, stream, 777)
    for item, true in exact.items():
        if true > sketch.total / (sketch.capacity + 1):
            assert item in sketch.counts


def test_decay_scales_everything_and_keeps_the_bound() -> None:
    sketch: TopK[str] = TopK(8)
    exact: Counter[str] = Counter()
    rng = random.Random(3)
    decayed: dict[str, float] = {}
    for _round in range(50):
        batch = Counter(rng.choices("abcdefghijklmnopqrstuvwxyz", weights=range(26, 0, -1), k=200))
        sketch.decay(0.9)
        decayed = {k: v * 0.9 for k, v in decayed.items()}
        sketch.update(batch)
        for k, v in batch.items():
            decayed[k] = decayed.get(k, 0.0) + v
        exact.update(batch)
    check_bound(sketch, Counter(decayed), tol=1e-6)
    assert sketch.total == pytest.approx(sum(decayed.values()))
    assert sketch.top(1)[0][0] == "a"


def test_old_traffic_fades_out_of_the_top() -> None:
    sketch: TopK[str] = TopK(16)
    sketch.update({"old.example.test": 1000.0})
    for _ in range(200):  # 200 ticks at a 20-tick half-life: the old name is worth ~1/1000 of itself
        sketch.decay(0.5 ** (1 / 20))
        sketch.update({"new.example.test": 10.0})
    assert sketch.top(1)[0][0] == "new.example.test"


def test_weights_count_like_repeats() -> None:
    a: TopK[str] = TopK(4)
    b: TopK[str] = TopK(4)
    a.update({"x": 3.0, "y": 1.0})
    b.update({"x": 1.0})
    b.update({"x": 1.0, "y": 1.0})
    b.update({"x": 1.0})
    assert a.counts == b.counts and a.total == b.total == 4.0


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        TopK(0)
    with pytest.raises(ValueError):
        TopK(4).decay(0.0)
    with pytest.raises(ValueError):
        TopK(4).decay(1.5)


@settings(max_examples=150, derandomize=True, deadline=None)
@given(
    capacity=st.integers(1, 12),
    batches=st.lists(st.dictionaries(st.sampled_from("abcdefghijklmnopqrst"), st.integers(1, 20), max_size=15),
                     max_size=30),
    decay=st.sampled_from([1.0, 0.97, 0.5]),
)
def test_bound_holds_for_any_batches(capacity: int, batches: list[dict[str, int]], decay: float) -> None:
    sketch: TopK[str] = TopK(capacity)
    truth: dict[str, float] = {}
    for batch in batches:
        sketch.decay(decay)
        truth = {k: v * decay for k, v in truth.items()}
        sketch.update({k: float(v) for k, v in batch.items()})
        for k, v in batch.items():
            truth[k] = truth.get(k, 0.0) + v
        assert len(sketch) <= capacity
        check_bound(sketch, Counter(truth), tol=1e-6)
