"""Upstream transports: one-shot UDP from a fresh random port, and pooled, pipelined TCP.

Every reply is checked before it is believed (RFC 5452 §9.1): the source address (a connected socket,
checked again), the random ID, QR, and the question. A reply that fails is dropped and counted as
spoofed; the query keeps waiting for the real one until its timeout.
"""

from __future__ import annotations

import asyncio
import secrets
import struct
from typing import Any

from nodelocal import UpstreamError, UpstreamTimeout
from nodelocal.dns import wire
from nodelocal.resolve.metrics import ResolveStats

Address = tuple[str, int]
_U16 = struct.Struct(">H")


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
                       stats: ResolveStats) -> bytes:
    """Send `query` from a new socket on a kernel-chosen random port; return the matching reply."""
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(
        lambda: _OneShot(peer, qid, question_lc, stats), remote_addr=peer
    )
    try:
        transport.sendto(query)
        return await asyncio.wait_for(proto.reply, timeout)
    except TimeoutError:
        raise UpstreamTimeout(f"{peer[0]}:{peer[1]} did not answer in {timeout:.2f}s") from None
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

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._arm_idle()

    def data_received(self, data: bytes) -> None:
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
        err = UpstreamError(f"{self.pool.label}: connection closed ({exc or 'by peer'})")
        for fut, _q in self.pending.values():
            if not fut.done():
                fut.set_exception(err)
        self.pending.clear()
        self.pool.forget(self)

    def send(self, query: bytes, question_lc: bytes) -> asyncio.Future[bytes]:
        if self.closed or self.transport is None or self.transport.is_closing():
            raise UpstreamError(f"{self.pool.label}: connection closed")
        while True:
            qid = secrets.randbits(16)
            if qid not in self.pending:
                break
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
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
        if not self.pending:
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
    in order, so one connection would serialise them).
    """

    def __init__(self, peer: Address, size: int, idle_timeout: float, stats: ResolveStats) -> None:
        self.peer = peer
        self.label = f"{peer[0]}:{peer[1]}"
        self.size = size
        self.idle_timeout = idle_timeout
        self.stats = stats
        self.conns: list[_TCPConn] = []
        self.opening: set[asyncio.Task[_TCPConn]] = set()  # connections being opened (they count towards size)

    def forget(self, conn: _TCPConn) -> None:
        if conn in self.conns:
            self.conns.remove(conn)

    async def _pick(self, timeout: float) -> _TCPConn:
        live = (c for c in self.conns if not c.closed and c.transport is not None and not c.transport.is_closing())
        best = min(live, key=lambda c: len(c.pending), default=None)
        full = len(self.conns) + len(self.opening) >= self.size
        if best is not None and (not best.pending or full):
            return best
        if best is None and full and self.opening:
            # Every slot is taken by a connection still being opened: wait for one rather than open more.
            done, _ = await asyncio.wait(self.opening, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            if not done:
                raise UpstreamTimeout(f"{self.label}: TCP connect timed out")
            return next(iter(done)).result()  # its failure is this query's too
        task = asyncio.get_running_loop().create_task(self._connect(timeout))
        self.opening.add(task)
        task.add_done_callback(self.opening.discard)
        return await asyncio.shield(task)

    async def _connect(self, timeout: float) -> _TCPConn:
        loop = asyncio.get_running_loop()
        try:
            _t, conn = await asyncio.wait_for(
                loop.create_connection(lambda: _TCPConn(self), self.peer[0], self.peer[1]), timeout
            )
        except TimeoutError:
            raise UpstreamTimeout(f"{self.label}: TCP connect timed out") from None
        except OSError as e:
            raise UpstreamError(f"{self.label}: TCP connect failed: {e.strerror or e}") from None
        self.conns.append(conn)
        return conn

    async def exchange(self, query: bytes, question_lc: bytes, timeout: float) -> bytes:
        """Send `query` (its ID is replaced by one unique on the connection); return the reply."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        conn = await self._pick(timeout)
        fut = conn.send(query, question_lc)
        try:
            return await asyncio.wait_for(fut, max(0.0, deadline - loop.time()))
        except TimeoutError:
            conn.abandon(fut)
            raise UpstreamTimeout(f"{self.label} did not answer over TCP in {timeout:.2f}s") from None

    def close(self) -> None:
        for t in list(self.opening):
            t.cancel()
        for c in list(self.conns):
            if c.transport is not None:
                c.transport.close()
