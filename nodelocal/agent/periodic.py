"""The one way the agent runs work on a timer: cache sweep, rule reconcile, heartbeat, config watch,
live-page tick. Every loop has the same failure policy: an exception in a round is logged and counted
(nodelocal_task_failures_total{task}) and the loop goes on; only cancellation ends it."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger("nodelocal.agent")

Interval = float | Callable[[], float]  # seconds, or a function read before each wait (it may change on reload)


async def every(interval: Interval, step: Callable[[], Awaitable[object] | object], task: str,
                failures: dict[str, int]) -> None:
    """Wait `interval`, run `step` (a function or a coroutine function), for ever.

    A failing round is counted in `failures[task]`; its traceback is logged once per run of failures
    (a step that fails every second must not fill the disk), and the recovery is logged too.
    """
    failures.setdefault(task, 0)
    streak = 0
    while True:
        await asyncio.sleep(interval() if callable(interval) else interval)
        try:
            result = step()
            if inspect.isawaitable(result):
                await result
        except asyncio.CancelledError:
            raise
        except Exception:
            failures[task] += 1
            streak += 1
            if streak == 1:
                log.exception("periodic task %s failed; it runs again at the next interval", task)
            else:
                log.debug("periodic task %s failed again (%d in a row)", task, streak, exc_info=True)
            continue
        if streak:
            log.info("periodic task %s works again after %d failed round(s)", task, streak)
            streak = 0
