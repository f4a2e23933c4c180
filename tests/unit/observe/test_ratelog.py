"""observe/ratelog.py: a few lines per key and window, then a count; keys bounded."""

from __future__ import annotations

import logging

import pytest

from nodelocal.observe.ratelog import RateLimitedLog


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock() -> Clock:
    return Clock()


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records]


def test_burst_per_key_then_the_count_of_lines_left_out(caplog: pytest.LogCaptureFixture, clock: Clock) -> None:
    rl = RateLimitedLog(logging.getLogger("t.ratelog"), window=60, burst=3, now=clock)
    with caplog.at_level(logging.INFO, "t.ratelog"):
        written = [rl.warning(("down", "10.0.0.1:53"), "upstream %s is down", "10.0.0.1:53") for _ in range(10)]
        assert written == [True] * 3 + [False] * 7
        assert rl.info(("down", "10.0.0.2:53"), "other key") is True  # another key has its own budget
        clock.t += 59.9
        assert rl.warning(("down", "10.0.0.1:53"), "still") is False
        clock.t += 0.1  # a new window
        assert rl.warning(("down", "10.0.0.1:53"), "upstream %s is down", "10.0.0.1:53") is True
    got = lines(caplog)
    assert got[:3] == ["upstream 10.0.0.1:53 is down"] * 3
    assert got[3] == "other key"
    assert got[4] == "upstream 10.0.0.1:53 is down (8 more like this in the last 60s not logged)"
    assert len(got) == 5 and rl.suppressed == 8
    assert [r.levelno for r in caplog.records] == [logging.WARNING] * 3 + [logging.INFO, logging.WARNING]


def test_a_flood_writes_a_bounded_number_of_lines(caplog: pytest.LogCaptureFixture, clock: Clock) -> None:
    rl = RateLimitedLog(logging.getLogger("t.ratelog"), window=60, burst=5, max_keys=100, now=clock)
    with caplog.at_level(logging.ERROR, "t.ratelog"):
        for i in range(100_000):
            clock.t += 0.001  # 100 s of 1,000 messages a second, over a thousand keys
            rl.error(("client", i % 1000), "bad thing from %d", i)
    assert len(rl.keys) <= 101  # max_keys, and the one key the keys past it share
    # Two windows (100 s), each at most `burst` lines for each of the 100 keys and for the shared one.
    assert 100 * 5 <= len(caplog.records) <= 2 * 101 * 5
    assert rl.suppressed == 100_000 - len(caplog.records)


def test_exception_carries_the_traceback_and_levels_below_the_logger_cost_nothing(
        caplog: pytest.LogCaptureFixture, clock: Clock) -> None:
    rl = RateLimitedLog(logging.getLogger("t.ratelog"), burst=1, now=clock)
    with caplog.at_level(logging.WARNING, "t.ratelog"):
        assert rl.info("k", "not shown") is False  # below the level: not counted against the key either
        try:
            raise ValueError("boom")
        except ValueError:
            assert rl.exception("k", "query failed") is True
            assert rl.exception("k", "query failed") is False
    assert len(caplog.records) == 1 and caplog.records[0].exc_info is not None
    assert rl.suppressed == 1
