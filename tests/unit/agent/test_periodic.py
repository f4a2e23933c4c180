"""nodelocal.agent.periodic.every(): failures counted and survived, logged once per run, cancellation ends it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import pytest

from nodelocal.agent.periodic import every

TICK = 0.01
WAIT = 5.0
LOGGER = "nodelocal.agent"


async def until(cond: Callable[[], bool], timeout: float = WAIT) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.002)


class Step:
    """A step that fails in the rounds listed in `fail` (1-based) and counts every call."""

    def __init__(self, fail: set[int] | None = None) -> None:
        self.fail = fail or set()
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1
        if self.calls in self.fail:
            raise RuntimeError(f"round {self.calls} failed")


async def run_rounds(step: Callable[[], object], rounds: Callable[[], bool], failures: dict[str, int],
                     task: str = "sweep") -> asyncio.Task[None]:
    """Run every() until `rounds()` is true, then cancel it; the finished (cancelled) task."""
    t = asyncio.get_running_loop().create_task(every(TICK, step, task, failures))
    await until(rounds)
    t.cancel()
    with pytest.raises(asyncio.CancelledError):
        await t
    return t


def errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER and r.levelno >= logging.ERROR]


def infos(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.INFO]


def test_steps_run_repeatedly_and_the_task_is_registered_with_no_failures() -> None:
    step = Step()
    failures: dict[str, int] = {}

    async def go() -> None:
        await run_rounds(step, lambda: step.calls >= 5, failures)

    asyncio.run(go())
    assert step.calls >= 5
    assert failures == {"sweep": 0}  # present from the start, so the series exists before a failure


def test_a_failing_step_is_counted_and_the_loop_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    step = Step(fail={2, 3, 4})
    failures: dict[str, int] = {"other": 7}

    async def go() -> None:
        await run_rounds(step, lambda: step.calls >= 6, failures)

    asyncio.run(go())
    assert failures == {"other": 7, "sweep": 3}
    assert step.calls >= 6  # it ran again after failing, and after failing again
    # One traceback for the run of three failures, not three.
    (err,) = errors(caplog)
    assert err.exc_info is not None and "round 2 failed" in str(err.exc_info[1])
    assert "sweep" in err.getMessage()
    # The later failures of the run are only at debug level.
    debug = [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.DEBUG]
    assert len(debug) == 2
    # And the recovery is logged, with the number of failed rounds.
    (rec,) = infos(caplog)
    assert "sweep" in rec.getMessage() and "3" in rec.getMessage()


def test_each_run_of_failures_logs_its_traceback_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    step = Step(fail={1, 2, 4, 6, 7, 8})
    failures: dict[str, int] = {}

    async def go() -> None:
        await run_rounds(step, lambda: step.calls >= 10, failures)

    asyncio.run(go())
    assert failures["sweep"] == 6
    assert [str(r.exc_info[1]) for r in errors(caplog) if r.exc_info] == [
        "round 1 failed", "round 4 failed", "round 6 failed"]
    recoveries = [r.getMessage() for r in infos(caplog)]
    assert len(recoveries) == 3  # after rounds 1-2, 4, and 6-8
    assert [m.split("after ")[1].split(" ")[0] for m in recoveries] == ["2", "1", "3"]


def test_no_logs_while_everything_works(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    step = Step()

    async def go() -> None:
        await run_rounds(step, lambda: step.calls >= 3, {})

    asyncio.run(go())
    assert [r for r in caplog.records if r.name == LOGGER] == []


def test_async_steps_are_awaited() -> None:
    done: list[int] = []
    failures: dict[str, int] = {}

    async def step() -> None:
        await asyncio.sleep(0)  # a step that really suspends
        done.append(len(done) + 1)

    async def go() -> None:
        await run_rounds(step, lambda: len(done) >= 3, failures)

    asyncio.run(go())
    assert done[:3] == [1, 2, 3]
    assert failures == {"sweep": 0}


def test_a_failing_async_step_is_counted(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    calls: list[int] = []

    async def step() -> None:
        calls.append(1)
        await asyncio.sleep(0)
        if len(calls) <= 2:
            raise OSError("reconcile failed")

    failures: dict[str, int] = {}

    async def go() -> None:
        await run_rounds(step, lambda: len(calls) >= 4, failures, task="reconcile")

    asyncio.run(go())
    assert failures == {"reconcile": 2}
    assert len(errors(caplog)) == 1
    assert len(infos(caplog)) == 1


def test_an_interval_function_is_read_before_every_wait() -> None:
    reads: list[float] = []
    step = Step()

    def interval() -> float:
        # Short for three rounds, then long: a reload that changed the interval takes effect at once.
        value = TICK if len(reads) < 3 else 60.0
        reads.append(value)
        return value

    async def go() -> None:
        t = asyncio.get_running_loop().create_task(every(interval, step, "watch", {}))
        await until(lambda: step.calls == 3 and len(reads) == 4)
        await asyncio.sleep(0.1)
        assert step.calls == 3  # waiting out the new, long interval
        assert len(reads) == 4  # read once per round, not cached
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t

    asyncio.run(go())


def test_the_first_run_waits_an_interval_first() -> None:
    step = Step()

    async def go() -> None:
        t = asyncio.get_running_loop().create_task(every(60.0, step, "slow", {}))
        await asyncio.sleep(0.05)
        assert step.calls == 0
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t

    asyncio.run(go())


def test_cancellation_while_a_step_runs_ends_the_loop_and_is_no_failure() -> None:
    started = asyncio.Event()
    calls: list[int] = []
    failures: dict[str, int] = {}

    async def step() -> None:
        calls.append(1)
        started.set()
        await asyncio.sleep(60)

    async def go() -> None:
        t = asyncio.get_running_loop().create_task(every(TICK, step, "tick", failures))
        await asyncio.wait_for(started.wait(), WAIT)
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t
        assert t.cancelled()
        await asyncio.sleep(0.05)

    asyncio.run(go())
    assert failures == {"tick": 0}
    assert calls == [1]


def test_a_step_that_raises_cancelled_error_ends_the_loop() -> None:
    failures: dict[str, int] = {}
    step_calls: list[int] = []

    def step() -> None:
        step_calls.append(1)
        raise asyncio.CancelledError

    async def go() -> None:
        t = asyncio.get_running_loop().create_task(every(TICK, step, "x", failures))
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(t, WAIT)

    asyncio.run(go())
    assert step_calls == [1]
    assert failures == {"x": 0}
