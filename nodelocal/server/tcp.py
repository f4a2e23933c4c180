"""TCP listener (RFC 7766): length-framed queries, several per connection answered concurrently and
out of order, an idle timeout, a cap on open connections and on queries in flight per connection."""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from typing import TYPE_CHECKING

from nodelocal.dns.wire import REFUSED, frame, pop_frames
from nodelocal.observe.ratelog import RateLimitedLog
from nodelocal.resolve.resolver import Resolver
from nodelocal.server.clients import Clients, reply_for
from nodelocal.server.metrics import NO_ZONE_ID, SERVER_LABEL, ListenerStats, ServerStats, server_label

if TYPE_CHECKING:
    from nodelocal.observe.live import Live
    from nodelocal.observe.querylog import QueryLog

log = logging.getLogger("nodelocal.tcp")
errors = RateLimitedLog(log)  # a bug hit by every query must not write a traceback per query


class TCPConnection(asyncio.Protocol):
    """One client connection."""

    def __init__(self, server: TCPServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiting: collections.deque[bytes] = collections.deque()  # read, not started: over max_pipelined
        self.inflight = 0
        self.paused = False
        self.idle: asyncio.TimerHandle | None = None
        self.counters: ListenerStats  # the listener's, once connection_made knows the socket's name
        self.peer = "?"
        self.peer_addr: tuple[object, ...] = ("?", 0)
        self.opened = time.monotonic()
        self.asked = 0  # queries read on this connection
        self.denied = False  # outside the allowed ranges (acl.action refuse): every query gets REFUSED

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        srv = self.server
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer = str(peer[0])
            self.peer_addr = tuple(peer)
        # CoreDNS's server label: the address the listener is bound to (one lookup per connection).
        sockname = transport.get_extra_info("sockname")
        family = "2" if sockname and len(sockname) == 4 else "1"  # IPv6: (host, port, flowinfo, scope_id)
        self.counters = srv.stats.listener(server_label(sockname) if sockname else SERVER_LABEL, "tcp", family)
        verdicts = srv.clients.verdicts if srv.clients is not None else None
        if verdicts is not None and not verdicts.everyone and not verdicts[self.peer]:
            if srv.clients is not None and srv.clients.drop:
                srv.stats.limited[("acl", "dropped")] += 1
                transport.close()
                return
            self.denied = True
        if len(srv.connections) >= srv.max_connections:
            srv.stats.tcp_rejected += 1
            transport.close()
            return
        srv.connections.add(self)
        srv.stats.tcp_connections = len(srv.connections)
        self._arm_idle()

    def connection_lost(self, exc: Exception | None) -> None:
        srv = self.server
        srv.connections.discard(self)
        srv.stats.tcp_connections = len(srv.connections)
        if self.idle is not None:
            self.idle.cancel()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.denied:
            self._refuse_all()
            return
        for msg in pop_frames(self.buf):
            self.asked += 1
            if self.server.live is not None:
                self.server.live.record(msg, self.peer, 1, None)
            self.waiting.append(msg)
        self._start_waiting()

    def _refuse_all(self) -> None:
        """A client outside the allowed ranges: REFUSED to each query, no lookup, nothing forwarded."""
        stats = self.server.stats
        for msg in pop_frames(self.buf):
            self.asked += 1
            stats.limited[("acl", "refused")] += 1
            self._refuse(msg)

    def _refuse(self, msg: bytes) -> None:
        """REFUSED before any zone took the query (zone="dropped"): the access list or the client's cap."""
        self.counters.requests[NO_ZONE_ID] += 1
        reply = reply_for(msg, REFUSED)
        if reply is not None and self.transport is not None and not self.transport.is_closing():
            self.counters.rcodes[NO_ZONE_ID][REFUSED] += 1
            self.transport.write(frame(reply))

    def _start_waiting(self) -> None:
        """Start queries read so far, up to max_pipelined in flight; at the cap, stop reading (RFC 7766 §6.2.1.1:
        a server may limit the queries it processes at once per connection). Several queries can arrive
        in one segment, so the rest wait here until answers make room."""
        srv = self.server
        clients = srv.clients
        while self.waiting and self.inflight < srv.max_pipelined:
            msg = self.waiting.popleft()
            if clients is not None and not clients.take(self.peer):
                # The client's cap on queries in flight (over UDP and TCP together). A cache hit is answered
                # all the same (it takes no upstream query and no task); anything else gets REFUSED at once.
                t0 = time.monotonic()
                hit = srv.resolver.cached_reply(msg)
                if hit is not None:
                    srv.stats.count_reply(self.counters, srv.resolver.zone_of(msg), hit, time.monotonic() - t0)
                    if self.transport is not None and not self.transport.is_closing():
                        self.transport.write(frame(hit))
                        if srv.qlog is not None:
                            srv.qlog.record(msg, hit, self.peer_addr, "tcp", time.monotonic() - t0)
                    continue
                srv.stats.limited[("pending", "refused")] += 1
                self._refuse(msg)
                continue
            self.inflight += 1
            if self.idle is not None:
                self.idle.cancel()
                self.idle = None
            task = asyncio.get_running_loop().create_task(self._answer(msg))
            srv.tasks.add(task)
            task.add_done_callback(srv.tasks.discard)
        t = self.transport
        if t is None or t.is_closing():
            return
        busy = self.inflight >= srv.max_pipelined
        if busy and not self.paused:
            self.paused = True
            t.pause_reading()
        elif not busy and self.paused:
            self.paused = False
            t.resume_reading()

    async def _answer(self, msg: bytes) -> None:
        stats = self.server.stats
        t0 = time.monotonic()
        resolver = self.server.resolver
        try:
            reply = await resolver.answer(msg, tcp=True)
        except Exception:
            errors.exception("query-failed", "tcp query failed")
            reply = None
            self.counters.requests[NO_ZONE_ID] += 1
        else:
            zid = resolver.zone_of(msg) if reply is not None else NO_ZONE_ID
            # coredns_dns_requests_total, _responses_total and _request_duration_seconds
            stats.count_reply(self.counters, zid, reply, time.monotonic() - t0)
        finally:
            if self.server.clients is not None:
                self.server.clients.release(self.peer)
        self.inflight -= 1
        t = self.transport
        if t is None or t.is_closing():
            return
        if reply is not None:
            t.write(frame(reply))
            qlog = self.server.qlog
            if qlog is not None:
                qlog.record(msg, reply, self.peer_addr, "tcp", time.monotonic() - t0)
        self._start_waiting()
        if self.inflight == 0:
            self._arm_idle()

    def busy(self, now: float, grace: float) -> bool:
        """Has queries in flight or waiting, a query half read, or was opened less than `grace` seconds ago
        and has not asked yet (its query is on the way): closing it now would cut a client off."""
        return bool(self.inflight or self.waiting or self.buf or (not self.asked and now - self.opened < grace))

    def _arm_idle(self) -> None:
        if self.idle is not None:
            self.idle.cancel()
        self.idle = asyncio.get_running_loop().call_later(self.server.idle_timeout, self._idle_close)

    def _idle_close(self) -> None:
        if self.inflight == 0 and self.transport is not None:
            self.transport.close()


class TCPServer:
    """Shared state of the TCP listeners: the cap, the idle timeout, the connections to drain."""

    def __init__(self, resolver: Resolver, stats: ServerStats, idle_timeout: float, max_connections: int,
                 max_pipelined: int, live: Live | None = None, clients: Clients | None = None) -> None:
        self.resolver = resolver
        self.live = live  # every TCP query is recorded for the live page's top lists (no sampling needed)
        self.stats = stats
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self.max_pipelined = max_pipelined
        self.clients = clients  # access list and per-client limits (server/clients.py)
        self.qlog: QueryLog | None = None  # the query log, when on (observe/querylog.py)
        self.connections: set[TCPConnection] = set()
        self.tasks: set[asyncio.Task[None]] = set()

    def protocol(self) -> TCPConnection:
        return TCPConnection(self)

    def busy(self, grace: float = 1.0) -> bool:
        """A connection would be cut off by closing now (TCPConnection.busy)."""
        now = time.monotonic()
        return any(c.busy(now, grace) for c in self.connections)

    def close_all(self) -> None:
        for c in list(self.connections):
            if c.transport is not None:
                c.transport.close()
