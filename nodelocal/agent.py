"""The agent's lifecycle: bind -> setup -> serve -> drain -> teardown, in one function (Agent.run)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from nodelocal.cache.store import Store
from nodelocal.config import Address, Config, describe, format_hostport
from nodelocal.errors import BindError
from nodelocal.loopdetect import GuardedResolver, LoopGuard
from nodelocal.netsetup import NetSetup
from nodelocal.netsetup.plan import HEARTBEAT_INTERVAL
from nodelocal.observe import page
from nodelocal.observe.http import HTTPServer
from nodelocal.observe.live import TICK, Live
from nodelocal.observe.metrics import AgentCollector, Stats
from nodelocal.reload import Reloader
from nodelocal.resolve.probe import wait_ready
from nodelocal.resolve.resolver import Resolver
from nodelocal.server.tcp import TCPServer
from nodelocal.server.udp import UDPServer
from nodelocal.source import Loaded, Source

log = logging.getLogger("nodelocal.agent")

UDP_RCVBUF = 4 * 1024 * 1024  # absorb bursts while the loop is busy (the kernel caps it at rmem_max)


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def bind_udp(addr: Address) -> socket.socket:
    """A bound, non-blocking UDP socket; BindError names the address when the kernel refuses."""
    sock = socket.socket(_family(addr[0]), socket.SOCK_DGRAM)
    try:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RCVBUF)
        sock.bind(addr)
        sock.setblocking(False)
    except OSError as e:
        sock.close()
        raise BindError(f"cannot bind udp {format_hostport(addr)}: {e.strerror}") from None
    return sock


def bind_tcp(addr: Address) -> socket.socket:
    sock = socket.socket(_family(addr[0]), socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(1024)
        sock.setblocking(False)
    except OSError as e:
        sock.close()
        raise BindError(f"cannot bind tcp {format_hostport(addr)}: {e.strerror}") from None
    return sock


class Agent:
    """One running agent: its cache, resolver, listeners and endpoints."""

    def __init__(self, cfg: Config, now: Callable[[], float] = time.monotonic, source: Source | None = None,
                 loaded: Loaded | None = None) -> None:
        self.cfg = cfg
        self.now = now
        self.stats = Stats()
        self.store = Store(cfg.cache.max_bytes, now)
        self.live = Live(self.stats, self.store, now=now) if cfg.page else None  # the live page's data
        self.guard = LoopGuard(now)  # answers our own loop probes when they come back (loopdetect.py)
        self.resolver: Resolver = GuardedResolver(cfg, self.store, self.stats, now, self.guard)
        self.registry = CollectorRegistry()
        self.registry.register(AgentCollector(self.stats, self.store))
        ProcessCollector(registry=self.registry)
        self.stop_event = asyncio.Event()
        self.udp_transports: list[asyncio.DatagramTransport] = []
        self.udp_protocols: list[UDPServer] = []
        self.servers: list[asyncio.Server] = []
        self.tcp = TCPServer(self.resolver, self.stats, cfg.listen.tcp_idle_timeout,
                             cfg.listen.tcp_max_connections, cfg.listen.tcp_max_pipelined, self.live)
        self.bound: list[tuple[str, Address]] = []  # ("udp"/"tcp", address) actually bound
        # Network setup's calls block (netlink, nft/iptables): one thread of their own runs them in order.
        self.netsetup = NetSetup(cfg, self.stats) if cfg.setup else None
        self._setup_pool: ThreadPoolExecutor | None = None
        # Live reload swaps self.resolver (and the listeners') for one built from a new config (reload.py).
        self.reloader = Reloader(self, source, loaded)

    def stop(self) -> None:
        self.stop_event.set()

    async def run(self, drain_timeout: float = 5.0) -> None:
        loop = asyncio.get_running_loop()
        cfg = self.cfg
        for line in describe(cfg).splitlines():
            log.info("%s", line)
        # 1. Bind every listener first: a node whose address is taken must fail before it claims anything.
        #    Only the interface goes in before, as the local IPs must exist to be bound (an existing one is
        #    left as it is). A failed bind tears nothing down: the address may be another agent's, alive.
        if self.netsetup is not None:
            await self._in_setup(self.netsetup.ensure_link)
        await self._bind()
        self.stats.listening = True
        # 2. Network setup: the conntrack-bypass rules go in only now that listeners are bound; from here
        #    they are reconciled every netsetup.sync_interval, and the liveness heartbeat that host-network
        #    clients' bypass depends on is refreshed every second (netsetup/reconcile.py).
        setup_tasks: list[asyncio.Task[None]] = []
        if self.netsetup is not None:
            await self._in_setup(self.netsetup.ensure_rules)
            setup_tasks = [loop.create_task(self._setup_loop(self.netsetup.sync, cfg.netsetup.sync_interval)),
                           loop.create_task(self._setup_loop(self.netsetup.heartbeat, HEARTBEAT_INTERVAL))]
        # 3. Serve: HTTP endpoints, the cache sweeper, the live page's ticker, the readiness probe;
        #    signals ask for a stop.
        await self._serve_http()
        sweeper = loop.create_task(self._sweep())
        ticker = loop.create_task(self._tick())
        prober = loop.create_task(wait_ready(cfg, self.stats))
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, self.stop)
        # 3a. Upstreams that send queries back to us are taken out (loop detection), the PID file is
        #     written, and from here a changed config file or SIGHUP reloads the config (reload.py).
        await self.reloader.start()
        log.info("serving on %s", ", ".join(f"{p} {format_hostport(a)}" for p, a in self.bound))
        try:
            await self.stop_event.wait()
        finally:
            # 4. Drain: stop accepting, let queries in flight finish (bounded), close connections.
            log.info("stopping: draining for up to %.1fs", drain_timeout)
            for s in self.servers:
                s.close()
            pending = set(self.tcp.tasks)
            for p in self.udp_protocols:
                pending |= p.tasks
            if pending:
                await asyncio.wait(pending, timeout=drain_timeout)
            for t in self.udp_transports:
                t.close()
            self.tcp.close_all()
            sweeper.cancel()
            self.reloader.stop()
            ticker.cancel()
            prober.cancel()
            self.resolver.close()
            for sig in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                    loop.remove_signal_handler(sig)
            # 5. Teardown: rules first, then the interface (netsetup.teardown); with skip_teardown both stay,
            #    and the rules still fail open (no listener, heartbeat expired).
            for task in setup_tasks:
                task.cancel()
            if self.netsetup is not None:
                if cfg.netsetup.skip_teardown:
                    log.info("skip-teardown: interface %s and rules left in place", cfg.netsetup.interface_name)
                else:
                    await self._in_setup(self.netsetup.teardown)
            if self._setup_pool is not None:
                self._setup_pool.shutdown(wait=False, cancel_futures=True)
            log.info("stopped")

    async def _in_setup(self, step: Callable[[], object]) -> None:
        """Run one blocking network-setup step on the setup thread (steps run one at a time, in order)."""
        if self._setup_pool is None:
            self._setup_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="netsetup")
        await asyncio.get_running_loop().run_in_executor(self._setup_pool, step)

    async def _setup_loop(self, step: Callable[[], object], interval: float) -> None:
        """Run a network-setup step every `interval` seconds; it counts and logs its own failures."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self._in_setup(step)
            except Exception:  # a bug in a step must not end the loop: the next round tries again
                log.exception("network setup step failed")

    async def _bind(self) -> None:
        loop = asyncio.get_running_loop()
        port = self.cfg.listen.port
        socks: list[tuple[str, socket.socket]] = []
        try:
            for ip in self.cfg.listen.localip:
                socks.append(("udp", bind_udp((ip, port))))
                socks.append(("tcp", bind_tcp((ip, port))))
        except BindError:
            for _k, s in socks:
                s.close()
            raise
        for kind, sock in socks:
            name = sock.getsockname()
            self.bound.append((kind, (name[0], name[1])))
            if kind == "udp":
                proto = UDPServer(self.resolver, self.store, self.stats, self.cfg.listen.max_udp_payload, self.now,
                                  live=self.live, ipv6=sock.family == socket.AF_INET6)
                transport, _ = await loop.create_datagram_endpoint(lambda p=proto: p, sock=sock)  # type: ignore[misc]
                self.udp_transports.append(transport)
                self.udp_protocols.append(proto)
            else:
                self.servers.append(await loop.create_server(self.tcp.protocol, sock=sock))

    async def _serve_http(self) -> None:
        metrics = HTTPServer({"/metrics": self._metrics})
        if self.live is not None:
            metrics.routes.update(page.routes(self.live))
        health = HTTPServer({"/health": self._health, "/ready": self._ready})
        maddr, haddr = self.cfg.metrics_address(), self.cfg.health_address()
        if maddr == haddr:
            metrics.routes.update(health.routes)
            pairs = [(metrics, maddr)]
        else:
            pairs = [(metrics, maddr), (health, haddr)]
        for srv, addr in pairs:
            try:
                server = await asyncio.start_server(srv.handle, addr[0], addr[1], reuse_address=True)
            except OSError as e:
                raise BindError(f"cannot bind http {format_hostport(addr)}: {e.strerror}") from None
            self.servers.append(server)
            sa = server.sockets[0].getsockname()
            self.bound.append(("http", (sa[0], sa[1])))

    def _metrics(self) -> tuple[int, str, bytes]:
        return 200, CONTENT_TYPE_LATEST, generate_latest(self.registry)

    def _health(self) -> tuple[int, str, bytes]:
        ok = self.stats.listening and not self.stop_event.is_set()
        return (200, "text/plain", b"OK\n") if ok else (503, "text/plain", b"not listening\n")

    def _ready(self) -> tuple[int, str, bytes]:
        if self.stats.ready and not self.stop_event.is_set():
            return 200, "text/plain", b"ready\n"
        return 503, "text/plain", b"no upstream has answered yet\n"

    async def _tick(self) -> None:
        """The live page's once-a-second work: drain samples, snapshot counters (observe/live.py)."""
        if self.live is None:
            return
        while True:
            await asyncio.sleep(TICK)
            try:
                self.live.tick()
            except Exception:  # the page must never take the agent down
                log.exception("live page tick failed")

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.cache.sweep_interval)
            self.store.sweep(self.now())
