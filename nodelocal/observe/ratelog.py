"""Operator log lines that a flood cannot turn into a flood of lines: at most `burst` per key and window.

A message key names what happened to what (`("upstream-down", "10.96.0.11:53")`); each key gets `burst`
lines per `window` seconds. Past that the lines are counted, not written, and the next line written for
the key says how many were left out, so nothing is silently lost: "... (12 more like this in the last
60s not logged)". Keys are bounded too (`max_keys`): when the table is full of keys still in their window, a
new key shares one budget with every other such key, so a flood with a new key per line (a client address
per query) cannot grow the table nor the log without end. The clock is injected (tests step it by hand).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable
from typing import Any

WINDOW = 60.0  # seconds
BURST = 5  # lines per key and window
MAX_KEYS = 1024
OVERFLOW = ("(keys over the limit)",)  # the one key all new keys share while the table is full


class RateLimitedLog:
    """A logger's warning/info/error/exception, each call limited by its key."""

    def __init__(self, logger: logging.Logger, window: float = WINDOW, burst: int = BURST,
                 max_keys: int = MAX_KEYS, now: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self.window = window
        self.burst = burst
        self.max_keys = max_keys
        self.now = now
        # key -> [window start, lines written in it, lines left out since the last one written]
        self.keys: dict[Hashable, list[float]] = {}
        self.suppressed = 0  # lines left out over the whole run (all keys)

    def log(self, level: int, key: Hashable, msg: str, *args: Any, exc_info: bool = False) -> bool:
        """Write the line unless its key used up its burst in this window; True when written."""
        if not self.logger.isEnabledFor(level):
            return False
        now = self.now()
        state = self.keys.get(key)
        if state is None:
            if len(self.keys) >= self.max_keys:
                self._prune(now)
                if len(self.keys) >= self.max_keys:
                    key = OVERFLOW
            state = self.keys.get(key)
            if state is None:
                state = self.keys[key] = [now, 0, 0]
            elif now - state[0] >= self.window:
                state[0], state[1] = now, 0
        elif now - state[0] >= self.window:
            state[0], state[1] = now, 0
        if state[1] >= self.burst:
            state[2] += 1
            self.suppressed += 1
            return False
        state[1] += 1
        if state[2]:
            msg = f"{msg} ({int(state[2])} more like this in the last {self.window:.0f}s not logged)"
            state[2] = 0
        self.logger.log(level, msg, *args, exc_info=exc_info)
        return True

    def _prune(self, now: float) -> None:
        """Forget the keys whose window is over (a count of lines left out in it is lost: the price of the bound)."""
        self.keys = {k: s for k, s in self.keys.items() if now - s[0] < self.window}

    def info(self, key: Hashable, msg: str, *args: Any) -> bool:
        return self.log(logging.INFO, key, msg, *args)

    def warning(self, key: Hashable, msg: str, *args: Any) -> bool:
        return self.log(logging.WARNING, key, msg, *args)

    def error(self, key: Hashable, msg: str, *args: Any) -> bool:
        return self.log(logging.ERROR, key, msg, *args)

    def exception(self, key: Hashable, msg: str, *args: Any) -> bool:
        """An error with the traceback of the exception being handled."""
        return self.log(logging.ERROR, key, msg, *args, exc_info=True)
