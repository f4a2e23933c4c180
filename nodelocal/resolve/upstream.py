"""Upstream transports: one-shot UDP from a fresh random port, and pooled, pipelined TCP.

Every reply is checked before it is believed (RFC 5452 §9.1): the source address (a connected socket,
checked again), the random ID, QR, and the question. A reply that fails is dropped and counted as
spoofed; the query keeps waiting for the real one until its timeout.

Losses are noticed early rather than at the end of a try: a UDP query is sent again after a short
silence (a lost datagram), a TCP connection closed or reset under its queries fails them at once with
ConnectionLost (so the caller can resend them on a new connection), and a connection that has received
nothing for a whole try while queries wait on it is closed as stalled rather than given more queries.
"""

from __future__ import annotations

import asyncio
import secrets
import struct
from typing import Any

from nodelocal import UpstreamError, UpstreamTimeout
from nodelocal.config import format_hostport
from nodelocal.dns import wire
from nodelocal.resolve.metrics import ResolveStats

Address = tuple[str, int]
_U16 = struct.Struct(">H")
MAX_RETRANSMITS = 2  # UDP sends of one query within a try, after the first


class ConnectionLost(UpstreamError):
    """Raised for a query whose TCP connection was closed, reset or found stalled before its reply came.

    `at` is the loop time of the loss: connections opened from then on are new (ConnectionLost is for the
    caller to resend on one of those: behind a Service's ClusterIP a new connection lands on a live pod).
    """

    def __init__(self, message: str, at: float) -> None:
        super().__init__(message)
        self.at = at


def reply_matches(reply: bytes, qid: int, question_lc: bytes) -> bool:
    """Is `reply` a response to our query `qid` for `question_lc` (lowercased name, then type and class)?

    The name compares case-insensitively; type and class compare as they are (HTTPS is 65, which is
    byte 'A': lowercasing the whole question would take a reply for type 97 for it).
    """
    end = wire.HEADER_LEN + len(question_lc)
    return (
        len(reply) >= end
        and _U16.unpack_from(reply, 0)[0] == qid
        and reply[2] & wire.QR != 0
        and reply[4:6] == b"\x00\x01"
        and reply[end - 4 : end] == question_lc[-4:]
        and reply[wire.HEADER_LEN : end - 4].lower() == question_lc[:-4]
    )


class _OneShot(asyncio.DatagramProtocol):
    def __init__(self, peer: Address, qid: int, question_lc: bytes, stats: ResolveStats) -> None:
        self.peer = peer
        self.qid = qid
        self.question_lc = question_lc
        self.stats = stats
        self.reply: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if self.reply.done():
            return
        if (addr[0], addr[1]) != self.peer or not reply_matches(data, self.qid, self.question_lc):
            self.stats.spoofed += 1
            return
        self.reply.set_result(data)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable and friends: fail this try now rather than at the timeout.
        if not self.reply.done():
            self.reply.set_exception(UpstreamError(f"{self.peer[0]}:{self.peer[1]}: {exc}"))


async def udp_exchange(peer: Address, query: bytes, qid: int, question_lc: bytes, timeout: float,
                       stats: ResolveStats, retransmit: float = 0.0) -> bytes:
    """Send `query` from a new socket on a kernel-chosen random port; return the matching reply.

    With `retransmit`, the same datagram (same ID, same socket: a reply to either copy matches) goes out
    again after that many seconds without a reply, at most MAX_RETRANSMITS times, and only while the try
    has `retransmit` seconds left after it: one lost datagram then costs `retransmit`, not the whole try.
    """
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(
        lambda: _OneShot(peer, qid, question_lc, stats), remote_addr=peer
    )
    deadline = loop.time() + timeout
    try:
        transport.sendto(query)
        resent = 0
        while True:
            left = deadline - loop.time()
            again = retransmit > 0 and resent < MAX_RETRANSMITS and left >= 2 * retransmit
            await asyncio.wait((proto.reply,), timeout=retransmit if again else max(0.0, left))
            if proto.reply.done():
                return proto.reply.result()
            if not again:
                raise UpstreamTimeout(f"{peer[0]}:{peer[1]} did not answer in {timeout:.2f}s")
            transport.sendto(query)
            resent += 1
            stats.retransmit(format_hostport(peer), "udp")
    finally:
        transport.close()


class _TCPConn(asyncio.Protocol):
    """One upstream TCP connection carrying many queries at once, matched to replies by ID."""

    def __init__(self, pool: TCPPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.pending: dict[int, tuple[asyncio.Future[bytes], bytes]] = {}
        self.closed = False
        self.idle: asyncio.TimerHandle | None = None
        loop = asyncio.get_running_loop()
        self.born = loop.time()  # a connection made after a loss is a new one (ConnectionLost.at)
        self.last_rx = self.born  # when bytes last came in
        self.busy_since = self.born  # when the queries now pending started to wait (pending went non-empty)
        self.why = ""  # why we closed it ourselves, for the pending queries' error

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._arm_idle()

    def data_received(self, data: bytes) -> None:
        self.last_rx = asyncio.get_running_loop().time()
        self.buf += data
        for msg in wire.pop_frames(self.buf):
            qid = msg[0] << 8 | msg[1] if len(msg) >= 2 else -1
            waiter = self.pending.get(qid)
            if waiter is None or not reply_matches(msg, qid, waiter[1]):
                self.pool.stats.spoofed += 1
                continue
            del self.pending[qid]
            if not waiter[0].done():
                waiter[0].set_result(msg)
        if not self.pending:
            self._arm_idle()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.idle is not None:
            self.idle.cancel()
        # A reset or a close by the peer (a CoreDNS pod deleted, a conntrack entry gone) fails the queries
        # still waiting at once: their caller resends them rather than waiting out the try timeout.
        err = ConnectionLost(f"{self.pool.label}: connection closed ({self.why or exc or 'by peer'})",
                             asyncio.get_running_loop().time())
        for fut, _q in self.pending.values():
            if not fut.done():
                fut.set_exception(err)
        self.pending.clear()
        self.pool.forget(self)

    def usable(self) -> bool:
        return not self.closed and self.transport is not None and not self.transport.is_closing()

    def stalled(self, now: float) -> bool:
        """Queries wait on it and nothing has come in for the pool's stall timeout or longer."""
        stall = self.pool.stall_timeout
        return (stall is not None and bool(self.pending)
                and now - max(self.last_rx, self.busy_since) >= stall)

    def stall(self, now: float) -> None:
        """Close a stalled connection now: new queries go elsewhere, and those pending on it fail (to be resent)."""
        self.why = f"stalled: nothing received for {now - max(self.last_rx, self.busy_since):.2f}s"
        self.closed = True
        self.pool.forget(self)
        if self.transport is not None:
            self.transport.abort()  # nothing flows on it: no FIN handshake to wait for; connection_lost follows

    def send(self, query: bytes, question_lc: bytes) -> asyncio.Future[bytes]:
        if not self.usable():
            raise ConnectionLost(f"{self.pool.label}: connection closed", asyncio.get_running_loop().time())
        assert self.transport is not None
        while True:
            qid = secrets.randbits(16)
            if qid not in self.pending:
                break
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[bytes] = loop.create_future()
        if not self.pending:
            self.busy_since = loop.time()
        self.pending[qid] = (fut, question_lc)
        if self.idle is not None:
            self.idle.cancel()
            self.idle = None
        self.transport.write(wire.frame(_U16.pack(qid) + query[2:]))
        return fut

    def abandon(self, fut: asyncio.Future[bytes]) -> None:
        """Forget a query that timed out, so its ID can be reused and the idle timer can run."""
        for qid, (f, _q) in list(self.pending.items()):
            if f is fut:
                del self.pending[qid]
        if not self.pending and not self.closed:
            self._arm_idle()

    def _arm_idle(self) -> None:
        if self.idle is not None:
            self.idle.cancel()
        loop = asyncio.get_running_loop()
        self.idle = loop.call_later(self.pool.idle_timeout, self._close_idle)

    def _close_idle(self) -> None:
        if not self.pending and self.transport is not None:
            self.transport.close()


class TCPPool:
    """Up to `size` persistent connections to one server; a query takes the least busy one.

    A new connection opens only when every open one already has queries in flight, so a quiet agent
    holds one connection and a busy one spreads over `size` (CoreDNS answers a connection's queries
    in order, so one connection would serialise them). With `stall_timeout`, a connection on which
    queries have waited that long without a byte coming back is closed instead of being picked.
    """

    def __init__(self, peer: Address, size: int, idle_timeout: float, stats: ResolveStats,
                 stall_timeout: float | None = None) -> None:
        self.peer = peer
        self.label = f"{peer[0]}:{peer[1]}"
        self.size = size
        self.idle_timeout = idle_timeout
        self.stall_timeout = stall_timeout
        self.stats = stats
        self.conns: list[_TCPConn] = []
        # Connections being opened (they count towards size), with the loop time each attempt started.
        self.opening: dict[asyncio.Task[_TCPConn], float] = {}

    def forget(self, conn: _TCPConn) -> None:
        if conn in self.conns:
            self.conns.remove(conn)

    async def _pick(self, timeout: float, since: float | None) -> _TCPConn:
        loop = asyncio.get_running_loop()
        now = loop.time()
        for c in list(self.conns):
            if c.stalled(now):
                c.stall(now)
        live = (c for c in self.conns if c.usable() and (since is None or c.born >= since))
        best = min(live, key=lambda c: len(c.pending), default=None)
        full = len(self.conns) + len(self.opening) >= self.size
        if best is not None and (not best.pending or full):
            return best
        opening = [t for t, started in self.opening.items() if since is None or started >= since]
        # Every slot is taken by a connection still being opened (or, for a resend after a loss, a new
        # connection is already on its way): wait for one rather than open more. A resend after a loss
        # that finds none opens one even at the cap: the lost connection has left the pool.
        if best is None and opening and (full or since is not None):
            done, _ = await asyncio.wait(opening, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            if not done:
                raise UpstreamTimeout(f"{self.label}: TCP connect timed out")
            return next(iter(done)).result()  # its failure is this query's too
        task = loop.create_task(self._connect(timeout))
        self.opening[task] = now
        task.add_done_callback(lambda t: self.opening.pop(t, None))
        return await asyncio.shield(task)

    async def _connect(self, timeout: float) -> _TCPConn:
        loop = asyncio.get_running_loop()
        try:
            # In this task, not one wait_for would add: a connect cancelled at shutdown then leaves no
            # coroutine behind that never ran.
            async with asyncio.timeout(timeout):
                _t, conn = await loop.create_connection(lambda: _TCPConn(self), self.peer[0], self.peer[1])
        except TimeoutError:
            raise UpstreamTimeout(f"{self.label}: TCP connect timed out") from None
        except OSError as e:
            raise UpstreamError(f"{self.label}: TCP connect failed: {e.strerror or e}") from None
        self.conns.append(conn)
        return conn

    async def exchange(self, query: bytes, question_lc: bytes, timeout: float, since: float | None = None) -> bytes:
        """Send `query` (its ID is replaced by one unique on the connection); return the reply.

        `since` (a ConnectionLost's `at`): only a connection made from then on may carry it. A loss of the
        connection under the query raises ConnectionLost at once.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        conn = await self._pick(timeout, since)
        fut = conn.send(query, question_lc)
        sent = loop.time()
        try:
            return await asyncio.wait_for(fut, max(0.0, deadline - loop.time()))
        except TimeoutError:
            conn.abandon(fut)
            # A whole try without a byte back on the connection: stalled (a peer gone without a RST).
            stall = self.stall_timeout
            if stall is not None and timeout >= stall and conn.last_rx < sent and not conn.closed:
                conn.stall(loop.time())
            raise UpstreamTimeout(f"{self.label} did not answer over TCP in {timeout:.2f}s") from None
        except asyncio.CancelledError:
            conn.abandon(fut)  # the caller gave up (shutdown, a probe no longer needed): free its ID
            raise

    def close(self) -> None:
        for t in list(self.opening):
            t.cancel()
        for c in list(self.conns):
            if c.transport is not None:
                c.transport.close()
