"""The agent's lifecycle: bind -> setup -> serve -> drain -> teardown, in one function (Agent.run).

The Agent owns what lives as long as the process: the cache, the counters (observe/meters.py), the
listeners, network setup, the PID file, and the resolver in use. Live reload (reload.py) hands it a
new config; Agent.apply() builds a new resolver beside the old one and swaps it in one synchronous step:
  1. loops     upstreams at our own addresses are dropped; with resolve.loop_detect every upstream is
               probed (resolve/loop.py) while the old config still serves
  2. build     a new resolver (groups, chains, TTL policies) beside the old one; partitions are shared
  3. swap      listeners get the new resolver, so a query is answered by the old or the new config,
               never lost
  4. cache     zones whose upstream chain changed are emptied, as are removed zones and the zone an
               added zone takes names from; every other zone keeps its entries (reload.plan)
  5. retire    the old resolver finishes its queries in flight, then closes its upstream connections
Listen addresses, network setup, the HTTP addresses, the live page, the PID file and the control socket
(control.py: `nodelocal cache`, `nodelocal doctor`) are fixed at start:
a change there is logged as needing a restart, and the rest is applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import functools
import ipaddress
import logging
import os
import signal
import socket
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from nodelocal import BindError, __version__
from nodelocal.agent import handover, snapshot
from nodelocal.agent.control import ControlServer, entry_info, matching, picker
from nodelocal.agent.handover import Giving, Inherited, Listener, SendOnly
from nodelocal.agent.health import SelfCheck, upstream_problem
from nodelocal.agent.periodic import every
from nodelocal.agent.reload import RESTART_FIELDS, Change, Reloader, plan
from nodelocal.cache.memory import MemoryGuard, cgroup_limit
from nodelocal.cache.store import DENIAL, SUCCESS, Entry, Store
from nodelocal.config import Config, describe, format_hostport, upstream_gaps
from nodelocal.config.source import Loaded, Source
from nodelocal.dns.names import labels_of_text, to_wire, zone_name
from nodelocal.netsetup import NetSetup
from nodelocal.netsetup.plan import HEARTBEAT_INTERVAL
from nodelocal.netsetup.ranges import read_node_networks
from nodelocal.netsetup.runner import ERR_CONFIGMAP
from nodelocal.observe import page
from nodelocal.observe.http import HTTPServer
from nodelocal.observe.live import TICK, Live
from nodelocal.observe.meters import Meters
from nodelocal.observe.querylog import QueryLog, QueryLoggingUDP
from nodelocal.observe.ratelog import RateLimitedLog
from nodelocal.resolve import loop as loopdetect
from nodelocal.resolve.probe import wait_ready
from nodelocal.resolve.resolver import Resolver
from nodelocal.server.clients import Clients
from nodelocal.server.sockets import bind_tcp, bind_udp
from nodelocal.server.tcp import TCPServer
from nodelocal.server.udp import UDPServer

log = logging.getLogger("nodelocal.agent")
gaps_log = RateLimitedLog(log)  # a ConfigMap rewritten in a loop must not repeat the same warning for ever

# Seconds between looks for entries to prefetch: well inside the shortest refresh window (10% of a 5 s TTL).
PREFETCH_TICK = 0.2


MEMORY_TICK = 1.0  # seconds between two reads of the resident set against the memory limit


def memory_limit(cfg: Config) -> int | None:
    """cache.memory_limit: bytes, or 0 for the cgroup's limit (None without one), or -1 for none."""
    v = cfg.cache.memory_limit
    return None if v < 0 else v if v > 0 else cgroup_limit()


class Agent:
    """One running agent: its cache, resolver, listeners and endpoints."""

    def __init__(self, cfg: Config, now: Callable[[], float] = time.monotonic, source: Source | None = None,
                 loaded: Loaded | None = None) -> None:
        self.cfg = cfg
        self.now = now
        self.meters = Meters()
        self.store = Store(cfg.cache.max_bytes, now)
        # The listeners count per zone by the store's zone numbers; a zone a reload adds gets its counters
        # before the new resolver is swapped in (server/metrics.py).
        self.meters.server.use_zones(self.store.zone_names)
        self.store.on_zone = self.meters.server.grow
        self.live = Live(self.meters, self.store, now=now) if cfg.page else None  # the live page's data
        self.guard = loopdetect.LoopGuard(now)  # answers our own loop probes when they come back
        self.guard.on_loop = self._late_loop
        self.resolver = self._resolver(cfg)
        self.memory = MemoryGuard(self.store, memory_limit(cfg), cfg.cache.memory_shed_percent,
                                  lambda: self.udp_protocols, lambda: self.resolver)
        self.registry = self.meters.registry(self.store)
        self.stop_event = asyncio.Event()
        self.udp_transports: list[asyncio.DatagramTransport] = []
        self.udp_protocols: list[UDPServer] = []
        self.servers: list[asyncio.Server] = []
        # Access list and per-client limits, shared by every listener; the node's ranges are read at start.
        self.clients = Clients(cfg, None, now)
        self.meters.server.client_sizes = self.clients.sizes
        self.tcp = TCPServer(self.resolver, self.meters.server, cfg.listen.tcp_idle_timeout,
                             cfg.listen.tcp_max_connections, cfg.listen.tcp_max_pipelined, self.live, self.clients)
        # The query log, when on: its own listener class is bound below (the plain one carries no check for it).
        self.qlog = QueryLog(cfg.log, self.meters.querylog) if cfg.log.queries else None
        self.tcp.qlog = self.qlog
        self.bound: list[tuple[str, tuple[str, int]]] = []  # ("udp"/"tcp"/"http", address) actually bound
        # Network setup's calls block (netlink, nft/iptables): one thread of their own runs them in order.
        self.netsetup = NetSetup(cfg, self.meters.setup) if cfg.setup else None
        self._setup_pool: ThreadPoolExecutor | None = None
        self.reloader = Reloader(source, loaded, self._reload, self._reload_failed)
        self.config_lock = asyncio.Lock()  # one config change at a time: reloads and late loops
        self.tasks: set[asyncio.Task[object]] = set()
        self._probing = False
        self._pidfile: Path | None = None
        self.selfcheck = SelfCheck(lambda: self.bound, now=now)  # /health and /ready (health.py)
        self.leaving = ""  # why /ready says no for good: a shutdown or a handover has begun
        self.loaded = loaded
        self.started = time.time()
        self.started_mono = time.monotonic()
        self.control: ControlServer | None = None
        # Handover (handover.py): our listeners by address, the server a successor connects to, whether one
        # took over (then the interface and rules are its own: no teardown), and SIGTERM seen (for linger).
        self.udp_by_addr: dict[tuple[str, int], tuple[asyncio.DatagramTransport, UDPServer]] = {}
        self.tcp_by_addr: dict[tuple[str, int], asyncio.Server] = {}
        self.http_by_addr: dict[tuple[str, int], asyncio.Server] = {}
        self.handover: handover.Server | None = None
        self.handed_over = False
        self.signalled = asyncio.Event()
        self._send_only: list[SendOnly] = []

    def stop(self) -> None:
        self.leaving = self.leaving or "shutting down"
        self.stop_event.set()

    def _signal(self) -> None:
        self.signalled.set()
        self.stop()

    async def run(self, drain_timeout: float = 5.0) -> None:
        loop = asyncio.get_running_loop()
        cfg = self.cfg
        failures = self.meters.agent.task_failures
        for line in describe(cfg).splitlines():
            log.info("%s", line)
        self._warn_gaps(cfg)
        # 1. Bind every listener first: a node whose address is taken must fail before it claims anything.
        #    Only the interface goes in before, as the local IPs must exist to be bound (an existing one is
        #    left as it is). A failed bind tears nothing down: the address may be another agent's, alive.
        #    A running agent at handover.socket hands us its sockets and cache instead (handover.py): the
        #    cache goes in before the first query, the sockets serve at once (both agents read them until
        #    the old one hears READY), and the HTTP endpoints are up before it stops serving its own.
        if self.netsetup is not None:
            await self._in_setup(self.netsetup.ensure_link)
        await self._read_ranges(first=True)
        inherited = await self._inherit()
        try:
            if inherited.records:
                self._adopt(inherited.records, inherited.zones, "handover")
            elif cfg.handover.snapshot:
                # No cache handed over (no predecessor, or it died): the snapshot a crashed one left, if fresh.
                records, zones = snapshot.read(cfg.handover.snapshot, self.now, cfg.handover.snapshot_max_age)
                self._adopt(records, zones, f"snapshot {cfg.handover.snapshot}")
            inherited.records = []
            if self.qlog is not None:
                self.qlog.start()  # its writer thread, before the first answer
            await self._bind(inherited)
            self.meters.agent.listening = True
            await self._serve_http(inherited)
        except BaseException:
            inherited.close_unused()
            if inherited.channel is not None:
                inherited.channel.close()
            raise
        inherited.close_unused()
        if inherited.channel is not None:
            await inherited.confirm()
        # 2. Network setup: the conntrack-bypass rules go in only now that listeners are bound; from here
        #    they are reconciled every netsetup.sync_interval, and the liveness heartbeat that host-network
        #    clients' bypass depends on is refreshed every second (netsetup/reconcile.py).
        tasks: list[asyncio.Task[None]] = []
        if self.netsetup is not None:
            ns = self.netsetup
            await self._in_setup(ns.ensure_rules)
            tasks += [loop.create_task(every(cfg.netsetup.sync_interval, lambda: self._in_setup(ns.sync),
                                             "reconcile", failures)),
                      loop.create_task(every(HEARTBEAT_INTERVAL, lambda: self._in_setup(ns.heartbeat),
                                             "heartbeat", failures))]
        # 3. Serve: the control endpoint, the cache sweeper, prefetch, the live page's ticker, the readiness
        #    probe; signals ask for a stop.
        await self._serve_control()
        # The node's ranges (access control) are read again as often as the rules are reconciled: a new node
        # or IPAM block adds a route.
        tasks.append(loop.create_task(every(lambda: self.cfg.netsetup.sync_interval, self._read_ranges, "acl-ranges",
                                            failures)))
        tasks.append(loop.create_task(every(lambda: self.cfg.cache.sweep_interval,
                                            lambda: self.store.sweep(self.now()), "sweep", failures)))
        tasks.append(loop.create_task(every(PREFETCH_TICK, lambda: self.resolver.prefetch_due(), "prefetch",
                                            failures)))
        if self.memory.limit:
            log.info("memory: shedding past %d%% of %d MiB resident", cfg.cache.memory_shed_percent,
                     self.memory.limit >> 20)
        tasks.append(loop.create_task(every(MEMORY_TICK, self.memory.check, "memory", failures)))
        if cfg.handover.snapshot:
            tasks.append(loop.create_task(every(cfg.handover.snapshot_interval, self._write_snapshot, "snapshot",
                                                failures)))
        if self.live is not None:
            tasks.append(loop.create_task(every(TICK, self.live.tick, "live", failures)))
        tasks.append(loop.create_task(wait_ready(cfg, self.meters.resolve)))
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, self._signal)
        # 3a. Upstreams that send queries back to us are taken out (loop detection), the PID file is
        #     written, and from here a changed config file or SIGHUP reloads the config (reload.py).
        async with self.config_lock:
            safe = await self._without_loops(cfg)
            if safe != cfg:
                self.apply(safe)
        self._write_pidfile()
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signal.SIGHUP, self.reloader.trigger, "SIGHUP")
        if self.reloader.watching():
            assert self.reloader.source is not None
            tasks.append(loop.create_task(every(self._watch_interval, self._watch_round, "config-watch", failures)))
            log.info("watching %s for changes (every %.1fs; SIGHUP reloads at once)",
                     ", ".join(str(p) for p in self.reloader.source.watched()), cfg.reload_interval)
        self.reloader.started = True
        # 3b. From here a successor can take our place (handover.py).
        if cfg.handover.socket and not self.stop_event.is_set():
            self.handover = handover.Server(cfg.handover, self._giving(), self.now)
            await self.handover.start()
        log.info("serving on %s", ", ".join(f"{p} {format_hostport(a)}" for p, a in self.bound))
        try:
            await self.stop_event.wait()
        finally:
            # 4. Drain: stop accepting, let queries in flight finish (bounded), close connections. A
            #    handover under way is let finish first (bounded): cut off, it would leave the successor
            #    binding addresses we still hold.
            if self.handover is not None:
                deadline = loop.time() + 3 * cfg.handover.timeout
                while self.handover.busy and loop.time() < deadline:
                    await asyncio.sleep(0.05)
                self.handover.close()
            log.info("stopping: draining for up to %.1fs", drain_timeout)
            for s in self.servers:
                s.close()
            if self.control is not None:
                self.control.close()
            pending = set(self.tcp.tasks)
            for p in self.udp_protocols:
                pending |= p.tasks
            drained = loop.time() + drain_timeout
            if pending:
                await asyncio.wait(pending, timeout=drain_timeout)
            # TCP clients just accepted (their query on its way) or in mid-query are answered before their
            # connection closes: after a handover every new connection goes to the successor.
            while self.tcp.busy() and loop.time() < drained:
                await asyncio.sleep(0.02)
            for t in self.udp_transports:
                t.close()
            for so in self._send_only:
                so.close()
            self.tcp.close_all()
            if cfg.handover.snapshot and not self.handed_over:
                try:
                    await self._write_snapshot()
                except OSError as e:
                    log.warning("cache snapshot %s: cannot write it (%s)", cfg.handover.snapshot, e.strerror or e)
            if self.handed_over and cfg.handover.linger and not self.signalled.is_set():
                # A container that exits is restarted by the kubelet (and would take the sockets back):
                # hold nothing, serve nothing, and wait for the SIGTERM that deletes this pod.
                log.info("handed over; lingering until SIGTERM (handover.linger)")
                await self.signalled.wait()
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(signal.SIGHUP)
            self.reloader.stop()
            for task in [*tasks, *self.tasks]:
                task.cancel()
            self.resolver.close()
            if self.qlog is not None:
                self.qlog.close()
            if self._pidfile is not None:
                with contextlib.suppress(OSError):
                    if self._pidfile.read_text().strip() == str(os.getpid()):  # not a successor's
                        self._pidfile.unlink()
            for sig in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                    loop.remove_signal_handler(sig)
            # 5. Teardown: rules first, then the interface (netsetup.teardown); with skip_teardown both stay,
            #    and the rules still fail open (no listener, heartbeat expired). After a handover they are
            #    the successor's: an upgrade or restart leaves them, only an exit with no successor (an
            #    uninstall, a node going down) removes them.
            if self.netsetup is not None:
                if self.handed_over:
                    log.info("handed over: interface %s and rules left to the successor",
                             cfg.netsetup.interface_name)
                elif cfg.netsetup.skip_teardown:
                    log.info("skip-teardown: interface %s and rules left in place", cfg.netsetup.interface_name)
                else:
                    await self._in_setup(self.netsetup.teardown)
            if self._setup_pool is not None:
                self._setup_pool.shutdown(wait=False, cancel_futures=True)
            q = self.meters.server
            udp, tcp = q.queries["udp"] + q.queries6["udp"], q.queries["tcp"] + q.queries6["tcp"]
            log.info("stopped; this process received %d queries (udp %d, tcp %d)", udp + tcp, udp, tcp)

    # -- start-up steps ----------------------------------------------------------------------------------

    async def _in_setup(self, step: Callable[[], object]) -> None:
        """Run one blocking network-setup step on the setup thread (steps run one at a time, in order)."""
        if self._setup_pool is None:
            self._setup_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="netsetup")
        await asyncio.get_running_loop().run_in_executor(self._setup_pool, step)

    async def _bind(self, inherited: Inherited) -> None:
        loop = asyncio.get_running_loop()
        port = self.cfg.listen.port
        socks: list[tuple[str, socket.socket]] = []
        retry = self.cfg.handover.bind_retry if inherited.predecessor else 0.0
        deadline = loop.time() + retry
        try:
            for ip in self.cfg.listen.localip:
                addr = (ipaddress.ip_address(ip).compressed, port)
                rcvbuf = self.cfg.listen.udp_rcvbuf
                socks.append(("udp", inherited.take(("udp", addr))
                              or await _retry(functools.partial(bind_udp, addr, rcvbuf), deadline)))
                socks.append(("tcp", inherited.take(("tcp", addr))
                              or await _retry(functools.partial(bind_tcp, addr), deadline)))
        except BindError:
            for _k, s in socks:
                s.close()
            raise
        for kind, sock in socks:
            name = sock.getsockname()
            self.bound.append((kind, (name[0], name[1])))
            if kind == "udp":
                listen = self.cfg.listen
                kw: dict[str, Any] = {} if self.qlog is None else {"qlog": self.qlog}
                proto = (UDPServer if self.qlog is None else QueryLoggingUDP)(
                    self.resolver, self.store, self.meters.server, listen.max_udp_payload, self.now,
                    live=self.live, ipv6=sock.family == socket.AF_INET6, client_timeout=listen.client_timeout,
                    max_pending=listen.max_pending, exempt=self.selfcheck.exempt, clients=self.clients, **kw)
                transport, _ = await loop.create_datagram_endpoint(lambda p=proto: p, sock=sock)  # type: ignore[misc]
                self.udp_transports.append(transport)
                self.udp_protocols.append(proto)
                self.udp_by_addr[(name[0], name[1])] = (transport, proto)
            else:
                server = await loop.create_server(self.tcp.protocol, sock=sock)
                self.servers.append(server)
                self.tcp_by_addr[(name[0], name[1])] = server

    async def _read_ranges(self, first: bool = False) -> None:
        """Read the node's addresses and routes (acl.node_ranges) and apply them to the access list."""
        node = None
        if self.cfg.acl.node_ranges:
            try:
                node = await asyncio.get_running_loop().run_in_executor(None, read_node_networks)
            except Exception as e:
                if not first:
                    raise  # counted by the periodic task; the ranges read last stay
                log.error("cannot read the node's addresses and routes (%s): answering loopback, the listen "
                          "addresses and acl.allow only", e)
        changed = self.clients.configure(self.cfg, node)
        if changed or first:
            self._acl_changed()

    def _acl_changed(self) -> None:
        """Hand the listeners the new verdicts; say who is answered (and warn when it is everyone)."""
        c = self.clients
        v = c.verdicts
        assert v is not None
        for p in self.udp_protocols:
            p.allowed = None if v.everyone else v
        self.meters.server.acl_networks = 0 if v.everyone else len(v.networks[0]) + len(v.networks[1])
        if v.open:
            log.warning("access control: every client is answered (acl.allow holds 0.0.0.0/0 or ::/0): anyone who "
                        "reaches a listen address gets answers, cluster names included: an open resolver")
        if not v.everyone:
            log.info("answering clients from %s (others: %s)", v.describe(), self.cfg.acl.action)

    async def _serve_http(self, inherited: Inherited) -> None:
        metrics = HTTPServer({"/metrics": self._metrics})
        if self.live is not None:
            metrics.routes.update(page.routes(self.live))
        health = HTTPServer({"/health": self._health, "/ready": self._ready})
        # metrics_addr without a host: the node's own address and loopback, not every interface (config/model.py).
        maddrs, haddr = self.cfg.metrics_addresses(), self.cfg.health_address()
        pairs = [(metrics, a) for a in maddrs]
        if haddr in maddrs:
            metrics.routes.update(health.routes)
        else:
            pairs.append((health, haddr))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.cfg.handover.bind_retry if inherited.predecessor else 0.0)
        for srv, addr in pairs:
            addr = (ipaddress.ip_address(addr[0]).compressed, addr[1])
            sock = inherited.take(("http", addr)) or await _retry(functools.partial(bind_tcp, addr, "http"), deadline)
            server = await asyncio.start_server(srv.handle, sock=sock)
            self.servers.append(server)
            sa = server.sockets[0].getsockname()
            self.bound.append(("http", (sa[0], sa[1])))
            self.http_by_addr[(sa[0], sa[1])] = server

    async def _serve_control(self) -> None:
        """The control socket (control.py). Failing to bind it is logged, not fatal: DNS comes first."""
        ctl = self.cfg.control
        if not ctl.socket:
            return
        server = ControlServer(ctl.socket, self.store, self.status, self.route, self.now, ctl.max_dump, ctl.timeout,
                               on_flush=self._flushed)
        try:
            await server.start()
        except OSError as e:
            log.warning("control socket %s: %s: `nodelocal cache` and `nodelocal doctor` cannot reach this agent",
                        ctl.socket, e.strerror or e)
            return
        self.control = server

    def _flushed(self, keys: list[bytes]) -> None:
        """A flushed name is asked upstream at its next query, not answered stale (failure recheck)."""
        for k in keys:
            self.resolver.recheck.pop(k, None)

    def _write_pidfile(self) -> None:
        if not self.cfg.pidfile:
            return
        path = Path(self.cfg.pidfile)
        try:
            path.write_text(f"{os.getpid()}\n")
        except OSError as e:
            log.error("cannot write pidfile %s: %s", self.cfg.pidfile, e.strerror)
            return
        self._pidfile = path

    # -- handover (handover.py) --------------------------------------------------------------------------

    async def _inherit(self) -> Inherited:
        """A running agent's sockets and cache, if one is there and hands them over; else nothing."""
        cfg = self.cfg
        want: list[Listener] = []
        for ip in cfg.listen.localip:
            addr = (ipaddress.ip_address(ip).compressed, cfg.listen.port)
            want += [("udp", addr), ("tcp", addr)]
        for addr in {*cfg.metrics_addresses(), cfg.health_address()}:
            want.append(("http", (ipaddress.ip_address(addr[0]).compressed, addr[1])))
        return await handover.inherit(cfg.handover, want, cfg.handover.cache, self.now)

    def _adopt(self, records: list[handover.Record], zones: dict[str, str], source: str) -> None:
        """Cache entries of a predecessor (or a snapshot), where our config routes them through the same
        upstream chain as theirs (`zones`: handover.chains() of the config they were cached under)."""
        if not records:
            return
        mine = handover.chains(self.cfg)
        now = self.now()
        kept = 0
        for r in records:
            theirs = zones.get(r.zone)
            if self.resolver.adopt(r.entry, now, lambda zone: theirs == mine.get(zone)):  # noqa: B023 (called at once)
                kept += 1
        log.info("%s: %d of %d cache entries kept (the others expired, or their zone's upstreams changed)",
                 source, kept, len(records))

    async def _write_snapshot(self) -> None:
        """The cache to handover.snapshot (snapshot.py); the file is written in a thread."""
        path = self.cfg.handover.snapshot
        if not path or self.handed_over:
            return  # after a handover the successor's snapshots are the current ones
        items, zones = self._entries(), handover.chains(self.cfg)
        await asyncio.get_running_loop().run_in_executor(None, snapshot.write, path, items, zones, self.now())

    def _giving(self) -> Giving:
        return Giving(offer=self._offer, entries=self._entries, zones=lambda: handover.chains(self.cfg),
                      begin=self._handover_begins, cancel=self._handover_cancelled, finish=self._hand_over,
                      leave=self.stop)

    def _offer(self) -> list[tuple[Listener, int]]:
        out: list[tuple[Listener, int]] = []
        for addr, (transport, _p) in self.udp_by_addr.items():
            out.append((("udp", addr), transport.get_extra_info("socket").fileno()))
        for kind, servers in (("tcp", self.tcp_by_addr), ("http", self.http_by_addr)):
            for addr, server in servers.items():
                out.append(((kind, addr), server.sockets[0].fileno()))
        return out

    def _entries(self) -> list[tuple[str, Entry]]:
        return [(part.zone, e) for part in self.store.partitions.values() for e in part.lru.values()]

    def _handover_begins(self, pid: int) -> None:
        self.leaving = f"handing over to a successor (pid {pid})"

    def _handover_cancelled(self, _reason: str) -> None:
        if self.leaving.startswith("handing over"):
            self.leaving = ""

    def _hand_over(self, taken: list[Listener]) -> None:
        """The successor serves: stop reading what it took. A UDP socket's replies still in flight go out
        through a duplicate descriptor that nothing reads from (the same socket: same address and port)."""
        self.handed_over = True
        self.leaving = "handed over to a successor"
        for kind, addr in taken:
            if kind == "udp" and addr in self.udp_by_addr:
                transport, proto = self.udp_by_addr.pop(addr)
                fd = transport.get_extra_info("socket").fileno()
                dup = SendOnly(socket.socket(fileno=os.dup(fd)))
                self._send_only.append(dup)
                proto.transport = dup  # type: ignore[assignment]
                transport.close()
            elif kind == "tcp" and addr in self.tcp_by_addr:
                self.tcp_by_addr.pop(addr).close()
            elif kind == "http" and addr in self.http_by_addr:
                self.http_by_addr.pop(addr).close()

    # -- endpoints ---------------------------------------------------------------------------------------

    def _metrics(self) -> tuple[int, str, bytes]:
        return 200, CONTENT_TYPE_LATEST, generate_latest(self.registry)

    async def _health(self) -> tuple[int, str, bytes]:
        """Liveness (health.py): every DNS listener bound and answering a self-query."""
        problem = await self.health_problem()
        if problem is None:
            return 200, "text/plain", b"OK\n"
        return 503, "text/plain", f"{problem}\n".encode()

    async def health_problem(self) -> str | None:
        if not self.meters.agent.listening:
            return "not listening"
        if self.stop_event.is_set():
            return self.leaving or "shutting down"
        return await self.selfcheck.problem()

    async def _ready(self) -> tuple[int, str, bytes]:
        """Readiness (health.py): serving now, not leaving, the cluster DNS reachable or stale answers held."""
        problem = await self.ready_problem()
        if problem is None:
            return 200, "text/plain", b"ready\n"
        return 503, "text/plain", f"{problem}\n".encode()

    async def ready_problem(self) -> str | None:
        if self.leaving:
            return self.leaving
        problem = await self.health_problem()
        if problem is not None:
            return problem
        return upstream_problem(self.resolver.groups, self.meters.resolve, len(self.store.index))

    # -- the control endpoint's views ----------------------------------------------------------------------

    async def status(self) -> dict[str, Any]:
        """What `nodelocal doctor` and `nodelocal cache` learn about this agent (control.py, op "status")."""
        cfg = self.cfg
        loaded = self.loaded
        code, _ctype, body = await self._ready()
        hcode, _ctype, hbody = await self._health()
        upstreams = []
        for g in self.resolver.groups.values():
            for srv in g.servers:
                upstreams.append({"group": g.name, "server": srv.label, "transport": srv.transport,
                                  "down": srv.down, "fails": srv.fails,
                                  "down_for": round(time.monotonic() - srv.down_since, 1) if srv.down else 0.0})
        ns = self.netsetup
        return {
            "version": __version__, "pid": os.getpid(), "uptime": round(time.monotonic() - self.started_mono, 1),
            "started": self.started,
            "config": {"kind": loaded.kind if loaded else "flags", "path": loaded.path if loaded else None},
            "listeners": [{"proto": p, "address": format_hostport(a)} for p, a in self.bound]
            + ([{"proto": "control", "address": str(self.control.path)}] if self.control is not None else []),
            "listen": {"localip": list(cfg.listen.localip), "port": cfg.listen.port},
            "ready": {"code": code, "text": body.decode(errors="replace").strip()},
            "health": {"code": hcode, "text": hbody.decode(errors="replace").strip()},
            "stopping": self.stop_event.is_set(), "leaving": self.leaving,
            "cluster_domain": cfg.cluster_domain,
            "groups": {name: {"servers": list(g.servers), "transport": g.transport, "policy": g.policy}
                       for name, g in cfg.upstreams.items()},
            "zones": {name: list(z.forward) for name, z in cfg.zones.items()},
            "upstreams": upstreams,
            "loops": dict(self.meters.resolve.loops),
            "setup": cfg.setup,
            "netsetup": {
                "interface": cfg.netsetup.interface_name, "rules_backend": cfg.netsetup.rules_backend,
                "backend_in_use": ns.backend.name if ns is not None and ns.backend is not None else None,
                "rules_in": ns.rules_in if ns is not None else False,
                "kube_dns_ips": list(ns.kube_dns) if ns is not None else [],
                "failopen": dict(self.meters.setup.setup_failopen),
                "health_port": ns.health_port if ns is not None else 0,
            },
            "metrics_addr": format_hostport(cfg.metrics_address()),
            "health_addr": format_hostport(cfg.health_address()),
            "cache": {"entries": len(self.store.index), "bytes": self.store.bytes, "max_bytes": self.store.max_bytes},
        }

    async def route(self, name: str) -> dict[str, Any]:
        """Where a name goes (control.py, op "route"): its zone, the groups and servers in the order a miss
        tries them now (health included), and what the cache holds for it."""
        route = self.resolver.router.match(labels_of_text(zone_name(name)))
        groups = []
        for g in route.chain.groups:
            order = g.order() if g.cfg.policy == "sequential" else g.servers
            groups.append({"group": g.name, "transport": g.cfg.transport, "policy": g.cfg.policy,
                           "servers": [{"server": s.label, "down": s.down} for s in order]})
        keys = await matching(self.store, picker(to_wire(zone_name(name))))
        now = self.now()
        entries = [entry_info(e, now) for k in keys if (e := self.store.index.get(k)) is not None]
        return {"name": zone_name(name), "zone": route.name, "groups": groups, "entries": entries}

    # -- config changes ----------------------------------------------------------------------------------

    def _watch_interval(self) -> float:
        interval = self.cfg.reload_interval
        return interval if interval > 0 else 1.0

    async def _watch_round(self) -> None:
        if self.cfg.reload_interval > 0:  # 0 turns the file watch off (SIGHUP still reloads)
            await self.reloader.check()

    def _warn_gaps(self, cfg: Config) -> None:
        """A zone without any upstream server answers SERVFAIL: say so at start and on every config change."""
        for warning in upstream_gaps(cfg)[0]:
            gaps_log.warning(("empty-zone", warning), "%s", warning)

    async def _reload(self, loaded: Loaded) -> Change:
        """The Reloader's target: drop looping upstreams from the new config, then apply it. A config that
        serve would refuse (the cluster zone without upstream servers) is refused here too: the old stays."""
        refused = upstream_gaps(loaded.config)[1]
        if refused is not None:
            raise refused
        async with self.config_lock:
            change = self.apply(await self._without_loops(loaded.config))
        self.meters.agent.reloads["success"] += 1
        return change

    def _reload_failed(self, _message: str) -> None:
        self.meters.agent.reloads["failure"] += 1
        self.meters.setup.error(ERR_CONFIGMAP)  # node-cache counts a broken ConfigMap there too

    def _resolver(self, cfg: Config) -> Resolver:
        return Resolver(cfg, self.store, self.meters.cache, self.meters.resolve, self.now, self.guard)

    async def _without_loops(self, cfg: Config) -> Config:
        """cfg minus the upstreams that lead back to us (static check always, probes if loop_detect)."""
        own = loopdetect.own_addresses(self.cfg) | loopdetect.own_addresses(cfg)
        loops = loopdetect.static_loops(cfg, own)
        if cfg.resolve.loop_detect:
            self.guard.found.clear()
            self._probing = True
            try:
                loops |= await loopdetect.probe(loopdetect.without(cfg, loops), self.guard, self.meters.resolve,
                                                skip=loops)
            finally:
                self._probing = False
        self.meters.resolve.loops = dict(loops)
        for to, group in loops.items():
            log.error("%s", loopdetect.explain(to, group))
        return loopdetect.without(cfg, loops) if loops else cfg

    def _late_loop(self, to: str, group: str) -> None:
        """A probe came back after its pass ended: stop forwarding to that server now."""
        if self._probing:
            return

        async def drop() -> None:
            async with self.config_lock:
                self.meters.resolve.loops[to] = group
                log.error("%s", loopdetect.explain(to, group))
                self.apply(loopdetect.without(self.cfg, [to]))

        self._spawn(drop())

    def _spawn(self, coro: Coroutine[object, object, object]) -> None:
        task: asyncio.Task[object] = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def apply(self, new: Config) -> Change:
        """Steps 2-5 of the module docstring. Synchronous from the swap on: no query sees a half state."""
        old = self.cfg
        fixed = {f: getattr(old, f) for f in RESTART_FIELDS}
        restart = [f for f, v in fixed.items() if getattr(new, f) != v]
        new = dataclasses.replace(new, **fixed)
        if new == old:
            return Change(unchanged=True, restart=restart)
        change = plan(old, new)
        change.restart = restart
        store = self.store
        resolver = self._resolver(new)
        # The swap: every listener asks the new resolver from the next query on.
        retired = self.resolver
        self.resolver = resolver
        for p in self.udp_protocols:
            p.resolver = resolver
        self.tcp.resolver = resolver
        self.cfg = new
        if self.clients.configure(new):
            self._acl_changed()
        for p in self.udp_protocols:
            p.rate = self.clients.rate
        if new.acl != old.acl:
            self._spawn(self._read_ranges())
        store.max_bytes = new.cache.max_bytes
        self.memory.limit = memory_limit(new)
        self.memory.shed_percent = new.cache.memory_shed_percent
        resolver.shedding = self.memory.refusing
        for z in change.cleared:
            store.clear(z)
        for z in change.removed:
            store.clear(z)
            for kind in (SUCCESS, DENIAL):
                store.partitions.pop((z, kind), None)
            self.meters.cache.misses.pop(z, None)
        self.meters.resolve.upstream_servers = {s.label: g.name for g in resolver.groups.values() for s in g.servers}
        self._warn_gaps(new)
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


async def _retry(bind: Callable[[], socket.socket], deadline: float) -> socket.socket:
    """bind(), again every 0.1 s while the address is in use and `deadline` (loop time) is ahead: a
    predecessor that did not hand over may be closing its sockets."""
    loop = asyncio.get_running_loop()
    logged = False
    while True:
        try:
            return bind()
        except BindError as e:
            if e.errno != errno.EADDRINUSE or loop.time() >= deadline:
                raise
            if not logged:
                log.warning("%s; retrying for up to %.1fs", e, deadline - loop.time())
                logged = True
        await asyncio.sleep(0.1)
