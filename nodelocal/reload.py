"""Live reload: a new config applied without dropping a query, keeping the cache of unchanged zones.

Triggers: the config files changed (checked every `reload_interval`; a Kubernetes ConfigMap changes
by an atomic swap of its `..data` symlink, so a read sees the old or the new files, never a mix),
or SIGHUP. Then, on the event loop:
  1. load      Source.load() reads every file again; a broken config raises, is logged and counted
               (nodelocal_config_reloads_total{result="failure"} and, as node-cache does,
               coredns_nodecache_setup_errors_total{errortype="configmap"}); the old one keeps serving
  2. loops     upstreams at our own addresses are dropped; with resolve.loop_detect every upstream is
               probed (loopdetect.py) while the old config still serves
  3. build     a new resolver (groups, chains, TTL policies) beside the old one; partitions are shared
  4. swap      one synchronous step: listeners get the new resolver, so a query is answered by the old
               or the new config, never lost
  5. cache     zones whose upstream chain changed are emptied, as are removed zones and the zone an
               added zone takes names from; every other zone keeps its entries
  6. retire    the old resolver finishes its queries in flight, then closes its upstream connections
Listen addresses, network setup, the HTTP addresses, the live page and the PID file are fixed at start:
a change there is logged as needing a restart, and the rest is applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from nodelocal import loopdetect
from nodelocal.cache.store import DENIAL, SUCCESS
from nodelocal.config import Config, UpstreamGroup
from nodelocal.errors import NodelocalError
from nodelocal.resolve.resolver import Resolver
from nodelocal.resolve.router import Router, labels_of_text
from nodelocal.source import Loaded, Source

if TYPE_CHECKING:
    from nodelocal.agent import Agent

log = logging.getLogger("nodelocal.reload")

# Fields a running agent cannot change: they are bound sockets, kernel state or files made at start.
RESTART_FIELDS = ("listen", "setup", "netsetup", "metrics_addr", "health_addr", "page", "pidfile")


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
    """Owns live reload, loop checks and the PID file for one agent."""

    def __init__(self, agent: Agent, source: Source | None = None, loaded: Loaded | None = None) -> None:
        self.agent = agent
        self.source = source
        self.fingerprint = loaded.fingerprint if loaded is not None else ""
        self.lock = asyncio.Lock()
        self.tasks: set[asyncio.Task[object]] = set()
        self._probing = False
        self._pidfile: Path | None = None
        self.started = False  # start() has run: loops checked, PID file written, watching
        agent.guard.on_loop = self._late_loop

    # -- lifecycle -------------------------------------------------------------------------------------

    async def start(self) -> None:
        """After bind and setup: drop looping upstreams, write the PID file, start watching."""
        async with self.lock:
            cfg = self.agent.cfg
            safe = await self._without_loops(cfg)
            if safe != cfg:
                self._apply(safe)
        if cfg.pidfile:
            self._pidfile = Path(cfg.pidfile)
            try:
                self._pidfile.write_text(f"{os.getpid()}\n")
            except OSError as e:
                log.error("cannot write pidfile %s: %s", cfg.pidfile, e.strerror)
                self._pidfile = None
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signal.SIGHUP, self.trigger, "SIGHUP")
        if self.source is not None and self.source.watched():
            self._spawn(self._watch())
            log.info("watching %s for changes (every %.1fs; SIGHUP reloads at once)",
                     ", ".join(str(p) for p in self.source.watched()), cfg.reload_interval)
        self.started = True

    def stop(self) -> None:
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        for t in list(self.tasks):
            t.cancel()
        if self._pidfile is not None:
            with contextlib.suppress(OSError):
                self._pidfile.unlink()

    def _spawn(self, coro: Coroutine[object, object, object]) -> None:
        task: asyncio.Task[object] = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def trigger(self, why: str) -> None:
        """Reload soon (from a signal handler or a test)."""
        self._spawn(self.reload(why))

    async def _watch(self) -> None:
        assert self.source is not None
        while True:
            interval = self.agent.cfg.reload_interval
            await asyncio.sleep(interval if interval > 0 else 1.0)
            if interval <= 0:
                continue
            try:
                fp = await asyncio.get_running_loop().run_in_executor(None, self.source.fingerprint)
            except Exception:  # a watcher bug must not stop the agent; the next round looks again
                log.exception("checking the config files failed")
                continue
            if fp != self.fingerprint:
                await self.reload("config files changed")

    # -- reloading -------------------------------------------------------------------------------------

    async def reload(self, why: str) -> bool:
        """Load and apply; False (old config kept, error counted) when the new one cannot be used."""
        stats = self.agent.stats
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
                cfg = await self._without_loops(loaded.config)
                change = self._apply(cfg)
            except Exception as e:
                log.exception("reload (%s): applying the new config failed", why)
                return self._failed(why, repr(e))
        stats.reloads["success"] = stats.reloads.get("success", 0) + 1
        for note in loaded.notes:
            log.info("%s", note)
        log.info("reload (%s): %s", why, change)
        return True

    def _failed(self, why: str, message: str) -> bool:
        stats = self.agent.stats
        stats.reloads["failure"] = stats.reloads.get("failure", 0) + 1
        stats.setup_errors["configmap"] = stats.setup_errors.get("configmap", 0) + 1
        log.error("reload (%s) failed, the config in use stays: %s", why, message)
        return False

    async def _without_loops(self, cfg: Config) -> Config:
        """cfg minus the upstreams that lead back to us (static check always, probes if loop_detect)."""
        agent = self.agent
        loops = loopdetect.static_loops(cfg, loopdetect.own_addresses(agent.cfg) | loopdetect.own_addresses(cfg))
        if cfg.resolve.loop_detect:
            agent.guard.found.clear()
            self._probing = True
            try:
                loops |= await loopdetect.probe(loopdetect.without(cfg, loops), agent.guard, skip=loops)
            finally:
                self._probing = False
        agent.stats.loops = dict(loops)
        for to, group in loops.items():
            log.error("%s", loopdetect.explain(to, group))
        return loopdetect.without(cfg, loops) if loops else cfg

    def _late_loop(self, to: str, group: str) -> None:
        """A probe came back after its pass ended: stop forwarding to that server now."""
        if self._probing:
            return

        async def drop() -> None:
            async with self.lock:
                self.agent.stats.loops[to] = group
                log.error("%s", loopdetect.explain(to, group))
                self._apply(loopdetect.without(self.agent.cfg, [to]))

        self._spawn(drop())

    def _apply(self, new: Config) -> Change:
        """Steps 3-6 of the module docstring. Synchronous from the swap on: no query sees a half state."""
        agent = self.agent
        old = agent.cfg
        fixed = {f: getattr(old, f) for f in RESTART_FIELDS}
        restart = [f for f, v in fixed.items() if getattr(new, f) != v]
        new = dataclasses.replace(new, **fixed)
        if new == old:
            return Change(unchanged=True, restart=restart)
        change = plan(old, new)
        change.restart = restart
        store, stats = agent.store, agent.stats
        resolver = loopdetect.GuardedResolver(new, store, stats, agent.now, agent.guard)
        # The swap: every listener asks the new resolver from the next query on.
        retired = agent.resolver
        agent.resolver = resolver
        for p in agent.udp_protocols:
            p.resolver = resolver
        agent.tcp.resolver = resolver
        agent.cfg = new
        store.max_bytes = new.cache.max_bytes
        for z in change.cleared:
            store.clear(z)
        for z in change.removed:
            store.clear(z)
            for kind in (SUCCESS, DENIAL):
                store.partitions.pop((z, kind), None)
            stats.misses.pop(z, None)
        stats.upstream_servers = {s.label: g.name for g in resolver.groups.values() for s in g.servers}
        logging.getLogger().setLevel(new.log_level.upper())
        self._spawn(self._retire(retired, old.resolve.query_timeout + 1.0))
        return change

    async def _retire(self, old: Resolver, grace: float) -> None:
        """Let the old resolver's queries in flight finish (they answer their clients), then close it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while old.inflight and loop.time() < deadline:
            await asyncio.sleep(0.05)
        old.close()
