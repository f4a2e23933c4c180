"""Live reload: notices that the config changed, reads it again and hands it to a callback.

Triggers: the config files changed (checked every `interval()` seconds; a Kubernetes ConfigMap changes
by an atomic swap of its `..data` symlink, so a read sees the old or the new files, never a mix), or
trigger() (the agent calls it on SIGHUP). The Reloader knows a config Source and two callbacks, nothing
of the agent: `target(loaded)` applies a loaded config and says what it changed (lifecycle.py swaps the
resolver there), `failed(message)` is told when the files cannot be read or the target raised, and the
config in use stays. plan() says which zones of a running config keep their cache under a new one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field

from nodelocal import NodelocalError
from nodelocal.config import Config, UpstreamGroup
from nodelocal.config.source import Loaded, Source
from nodelocal.dns.names import labels_of_text
from nodelocal.resolve.router import Router

log = logging.getLogger("nodelocal.reload")

# Fields a running agent cannot change: they are bound sockets, kernel state or files made at start.
RESTART_FIELDS = ("listen", "setup", "netsetup", "handover", "metrics_addr", "health_addr", "page", "pidfile",
                  "control", "log")


@dataclass
class Change:
    """What applying a config did to the zones and their cache."""

    kept: list[str] = field(default_factory=list)
    cleared: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    restart: list[str] = field(default_factory=list)
    unchanged: bool = False

    def __str__(self) -> str:
        if self.unchanged:
            return "config unchanged"
        parts = [f"{what} {', '.join(zs)}" for what, zs in (
            ("cache kept for", self.kept), ("cache emptied for", self.cleared), ("zones added", self.added),
            ("zones removed", self.removed)) if zs]
        if self.restart:
            parts.append(f"needs a restart to change {', '.join(self.restart)} (still the old values)")
        return "; ".join(parts) or "applied"


def _chain(cfg: Config, zone: str) -> tuple[UpstreamGroup, ...]:
    return tuple(cfg.upstreams[g] for g in cfg.zones[zone].forward)


def plan(old: Config, new: Config) -> Change:
    """Which zones keep their cache: those whose upstream groups (servers, transport, ...) are the same."""
    ch = Change()
    covering: Router[str] = Router({z: z for z in old.zones})
    for z in new.zones:
        if z not in old.zones:
            ch.added.append(z)
            parent = covering.match(labels_of_text(z))  # its names were cached under this zone so far
            if parent not in ch.cleared:
                ch.cleared.append(parent)
    for z in new.zones:
        if z in old.zones and z not in ch.cleared:
            (ch.kept if _chain(old, z) == _chain(new, z) else ch.cleared).append(z)
    ch.removed = [z for z in old.zones if z not in new.zones]
    ch.cleared = [z for z in ch.cleared if z in new.zones]
    ch.kept = [z for z in ch.kept if z not in ch.cleared]
    return ch


class Reloader:
    """Reads the config again when its files change or on trigger(), and hands it to `target`."""

    def __init__(self, source: Source | None, loaded: Loaded | None,
                 target: Callable[[Loaded], Awaitable[object]], failed: Callable[[str], None]) -> None:
        self.source = source
        self.fingerprint = loaded.fingerprint if loaded is not None else ""
        self.target = target
        self.failed = failed
        self.lock = asyncio.Lock()  # one reload at a time
        self.tasks: set[asyncio.Task[object]] = set()
        self.started = False  # the agent has started watching: loops checked, PID file written

    def watching(self) -> bool:
        return self.source is not None and bool(self.source.watched())

    def trigger(self, why: str) -> None:
        """Reload soon (from a signal handler or a test)."""
        self._spawn(self.reload(why))

    def _spawn(self, coro: Coroutine[object, object, object]) -> None:
        task: asyncio.Task[object] = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def stop(self) -> None:
        for t in list(self.tasks):
            t.cancel()

    async def check(self) -> None:
        """One round of the watch (run by agent/periodic.py): reload when the files' digest moved."""
        if self.source is None:
            return
        fp = await asyncio.get_running_loop().run_in_executor(None, self.source.fingerprint)
        if fp != self.fingerprint:
            await self.reload("config files changed")

    async def reload(self, why: str) -> bool:
        """Load and apply; False (old config kept, `failed` told) when the new one cannot be used."""
        async with self.lock:
            if self.source is None:
                log.info("reload (%s): the config came from flags only; nothing to read again", why)
                return True
            try:
                loaded = await asyncio.get_running_loop().run_in_executor(None, self.source.load)
            except NodelocalError as e:
                self.fingerprint = self.source.fingerprint()
                return self._failed(why, str(e))
            except Exception as e:  # never crash on a config, whatever is wrong with it
                log.exception("reload (%s): unexpected error", why)
                self.fingerprint = self.source.fingerprint()
                return self._failed(why, repr(e))
            self.fingerprint = loaded.fingerprint
            try:
                change = await self.target(loaded)
            except NodelocalError as e:  # the target refused the config, and says why
                return self._failed(why, str(e))
            except Exception as e:
                log.exception("reload (%s): applying the new config failed", why)
                return self._failed(why, repr(e))
        for note in loaded.notes:
            log.info("%s", note)
        log.info("reload (%s): %s", why, change)
        return True

    def _failed(self, why: str, message: str) -> bool:
        log.error("reload (%s) failed, the config in use stays: %s", why, message)
        self.failed(message)
        return False
