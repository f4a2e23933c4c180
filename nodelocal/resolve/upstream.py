"""Upstream transports: pooled UDP sockets on random ports that are replaced as they go, and pooled,
pipelined TCP.

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
import functools
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
UDP_SOCKET_QUERIES = 1000  # queries a pooled UDP socket carries before it is replaced (a new source port)
UDP_SOCKET_AGE = 60.0  # seconds a pooled UDP socket takes new queries before it is replaced


class LoopRef:
    """The running event loop, looked up once rather than on every query.

    On Python 3.11, asyncio.get_running_loop() makes a getpid() system call each time (its check for a
    fork); a miss used to make several. The loop found is kept while it runs; a holder used again under
    another loop (tests run one loop after another) looks it up afresh.
    """

    __slots__ = ("_loop",)

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None

    def __call__(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is None or not loop.is_running():
            loop = self._loop = asyncio.get_running_loop()
        return loop


class ConnectionLost(UpstreamError):
    """Raised for a query whose TCP connection was closed, reset or found stalled before its reply came.

    `at` is the loop time of the loss: connections opened from then on are new (ConnectionLost is for the
    caller to resend on one of those: behind a Service's ClusterIP a new connection lands on a live pod).
    """

    def __init__(self, message: str, at: float) -> None:
        super().__init__(message)
        self.at = at


def reply_matches(reply: bytes, qid: int, question: bytes, exact: bool = False) -> bool:
    """Is `reply` a response to our query `qid` for `question` (name, then type and class)?

    With `exact` (the name went out in randomised case, draft-vixie-dnsext-dns0x20), the reply must echo
    the question byte for byte: a forger who guessed the ID must also guess the case of every letter.
    Otherwise `question` has its name lowercased and the name compares case-insensitively; type and class
    compare as they are (HTTPS is 65, which is byte 'A': lowercasing the whole question would take a
    reply for type 97 for it).
    """
    end = wire.HEADER_LEN + len(question)
    if len(reply) < end or _U16.unpack_from(reply, 0)[0] != qid or not reply[2] & wire.QR or reply[4:6] != b"\x00\x01":
        return False
    if exact:
        return reply[wire.HEADER_LEN : end] == question
    return reply[end - 4 : end] == question[-4:] and reply[wire.HEADER_LEN : end - 4].lower() == question[:-4]


def case_mismatch(reply: bytes, qid: int, question: bytes) -> bool:
    """A reply that would match `question` but for the case of its name: a forgery, or a server that does
    not preserve case (counted apart, so that such a server can be found and given randomize_case off)."""
    lc = question[:-4].lower() + question[-4:]
    return reply_matches(reply[:wire.HEADER_LEN] + reply[wire.HEADER_LEN : wire.HEADER_LEN + len(question) - 4].lower()
                         + reply[wire.HEADER_LEN + len(question) - 4 :], qid, lc)


class _UDPQuery:
    """One query waiting on a pooled UDP socket: its ID there, its datagram and its timer.

    The timer does the waiting that asyncio.wait_for would do, without the waiter future, task and
    callbacks that costs on every try: it sends the datagram again after a silence, and fails the query
    when the try is over.
    """

    __slots__ = (
        "again",
        "datagram",
        "deadline",
        "fut",
        "qid",
        "question_lc",
        "resent",
        "retransmit",
        "rx",
        "sock",
        "timeout",
        "timer",
    )

    def __init__(self, sock: _UDPSocket, qid: int, question_lc: bytes, fut: asyncio.Future[bytes], datagram: bytes,
                 deadline: float, timeout: float, retransmit: float) -> None:
        self.sock = sock
        self.qid = qid
        self.question_lc = question_lc
        self.fut = fut
        self.datagram = datagram
        self.deadline = deadline
        self.timeout = timeout
        self.retransmit = retransmit
        self.resent = 0
        self.again = False
        self.timer: asyncio.TimerHandle | None = None
        self.rx = sock.rx  # the socket's replies so far: any more by the timeout and the socket is alive

    def arm(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wait for the reply: `retransmit` seconds if the datagram may go again after that (at most
        MAX_RETRANSMITS times, and only while the try has `retransmit` seconds left after the resend),
        else the rest of the try."""
        left = self.deadline - loop.time()
        r = self.retransmit
        self.again = r > 0 and self.resent < MAX_RETRANSMITS and left >= 2 * r
        self.timer = loop.call_later(r if self.again else max(0.0, left), self._fire)

    def _fire(self) -> None:
        self.timer = None
        if self.fut.done():
            return
        sock = self.sock
        if not self.again:
            pool = sock.pool
            if sock.rx == self.rx:
                # Nothing at all came back on this socket for the whole try: its flow may be the dead end
                # (behind a Service, a conntrack entry leading to a backend that is gone). A new socket is a
                # new flow. One lost reply among others answered is no reason.
                pool.retire(sock)
            self.fut.set_exception(UpstreamTimeout(f"{pool.label} did not answer in {self.timeout:.2f}s"))
            return
        # The same datagram (same socket, same ID): a reply to either copy matches.
        if sock.transport is None or sock.closed:
            return  # closed under it (and so failed already)
        sock.transport.sendto(self.datagram)
        self.resent += 1
        sock.pool.stats.retransmit(sock.pool.label, "udp")
        if not self.fut.done():  # a send error (ICMP reported on the socket) fails it at once
            self.arm(sock.pool.loop())

    def finish(self) -> None:
        """Forget it on its socket (its ID is free again) and stop its timer; idempotent.

        Still waiting here means it ended without its reply (timed out, failed, or given up by its caller):
        the ID is remembered as late, so that the reply, if it comes after all, is not taken for a spoof.
        """
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        sock = self.sock
        pending = sock.pending
        if pending.get(self.qid) is self:
            del pending[self.qid]
            sock.late[self.qid] = self.question_lc
            if sock.retired and not pending:
                sock.close()


class _UDPSocket(asyncio.DatagramProtocol):
    """One connected UDP socket of a UDPPool: a source port the kernel picked at random, many queries at once.

    Connected, so the kernel hands it only datagrams from the server's address and port, and reports the
    server's ICMP errors on it; the source is compared again all the same (two string and int compares).
    """

    def __init__(self, pool: UDPPool, expires: float) -> None:
        self.pool = pool
        self.transport: asyncio.DatagramTransport | None = None
        self.pending: dict[int, _UDPQuery] = {}
        self.left = pool.max_queries  # queries it may still carry before it is replaced
        self.expires = expires  # loop time after which it carries no new query
        self.retired = False  # carries no new query; closed once its pending ones are done
        self.closed = False
        self.rx = 0  # replies accepted
        # IDs of queries that ended without their reply or were sent twice, with their questions: a reply
        # to one arriving late (or the second reply to a resent query) is dropped, not counted as spoofed.
        # At most one per query the socket carries (max_queries); gone with the socket.
        self.late: dict[int, bytes] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's UDPTransport is not a subclass

    def datagram_received(self, data: bytes, addr: Any) -> None:
        pool = self.pool
        # The kernel delivers only the server's datagrams to a connected socket; the source is compared
        # again all the same (None: an address the event loop could not convert, from the kernel's check).
        if len(data) >= wire.HEADER_LEN and (addr is None or (addr[1] == pool.port and addr[0] == pool.host)):
            qid = data[0] << 8 | data[1]
            q = self.pending.get(qid)
            if q is not None and reply_matches(data, qid, q.question_lc, pool.exact):
                del self.pending[qid]
                self.rx += 1
                timer = q.timer
                if timer is not None:
                    timer.cancel()
                    q.timer = None
                if not q.fut.done():
                    q.fut.set_result(data)
                if q.resent:
                    self.late[qid] = q.question_lc  # the reply to the other copy may follow
                if self.retired and not self.pending:
                    self.close()
                return
            asked = self.late.get(qid)
            if asked is not None and reply_matches(data, qid, asked, pool.exact):
                return  # a late or second reply to one of our own queries, which has ended: not a spoof
            if q is not None and pool.exact and case_mismatch(data, qid, q.question_lc):
                pool.stats.case_mismatch[pool.label] = pool.stats.case_mismatch.get(pool.label, 0) + 1
        pool.stats.spoofed += 1

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable and friends. A connected socket reports them as an error on the socket,
        # without saying which datagram drew it: every query waiting on this socket fails its try now
        # rather than at its timeout (the chain moves on; a server that is down is down for all of them).
        self._fail_all(UpstreamError(f"{self.pool.label}: {exc}"))
        self.pool.retire(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail_all(UpstreamError(f"{self.pool.label}: socket closed ({exc or 'closed'})"))
        self.pool.forget(self)

    def _fail_all(self, err: UpstreamError) -> None:
        for q in list(self.pending.values()):
            if not q.fut.done():
                q.fut.set_exception(err)

    def close(self) -> None:
        """No new query; those still waiting fail now (a retired socket is closed only once drained)."""
        self.retired = True
        self.pool.draining.discard(self)
        if not self.closed:
            self.closed = True
            self._fail_all(UpstreamError(f"{self.pool.label}: socket closed"))
            if self.transport is not None:
                self.transport.close()


class UDPPool:
    """Up to `size` connected UDP sockets to one server, each carrying many queries told apart by ID.

    Spoofing protection (RFC 5452 §9.1, §9.2) is that of a socket per query, at a fraction of its cost
    (a socket, a connect, a poll registration and a close for every query): each socket's source port is
    a random one the kernel picks (an unprivileged bind to port 0), each query takes a socket at random
    and a random ID no other query waiting on that socket has, and every reply is checked (source, ID, QR,
    question) before it is believed; an ID unknown on the socket, or a reply that fails the checks, is
    dropped and counted as spoofed, and the query keeps waiting for the real one. So that the source ports
    keep changing (RFC 5452 §9.2: the port is the other 16 bits an attacker must guess), a socket is
    replaced after it has carried `max_queries` queries or lived `max_age` seconds: it takes no new query
    and closes once the ones waiting on it are answered or timed out. A socket that an ICMP error came
    back on, or on which a query waited its whole try while no reply at all came in, is replaced as well:
    its flow (behind a Service's ClusterIP, a conntrack entry leading to one backend) may be the dead end,
    and a new socket is a new flow.
    """

    def __init__(self, peer: Address, size: int, stats: ResolveStats, max_queries: int = UDP_SOCKET_QUERIES,
                 max_age: float = UDP_SOCKET_AGE, exact: bool = False) -> None:
        self.peer = peer
        self.exact = exact  # replies must echo the question's case byte for byte (0x20: see reply_matches)
        self.host, self.port = peer
        self.label = format_hostport(peer)
        self.size = size
        self.stats = stats
        self.max_queries = max_queries
        self.max_age = max_age
        self.loop = LoopRef()
        self.slots: list[_UDPSocket | None] = [None] * size  # sockets taking new queries
        self.draining: set[_UDPSocket] = set()  # retired ones still waiting for replies
        self.opening: dict[int, asyncio.Task[_UDPSocket]] = {}  # slot -> its socket being opened

    def forget(self, sock: _UDPSocket) -> None:
        self.draining.discard(sock)
        for i, s in enumerate(self.slots):
            if s is sock:
                self.slots[i] = None

    async def exchange(self, query: bytes, question_lc: bytes, timeout: float, retransmit: float = 0.0) -> bytes:
        """Send `query` (its ID replaced by one free on the socket it takes); return the matching reply.

        With `retransmit`, the same datagram goes again after that many seconds without a reply, at most
        MAX_RETRANSMITS times, and only while the try has `retransmit` seconds left after it: one lost
        datagram then costs `retransmit`, not the whole try. An ICMP error on the socket fails it at once.
        """
        loop = self.loop()
        now = loop.time()
        deadline = now + timeout
        # One draw from the system CSPRNG gives both the socket (high bits) and the ID (low 16).
        r = secrets.randbits(32)
        i = (r >> 16) % self.size
        sock = self.slots[i]
        if sock is None or sock.left <= 0 or now >= sock.expires or sock.closed:
            if sock is not None:
                self.retire(sock)
            sock = await self._open(i, timeout)
        pending = sock.pending
        qid = r & 0xFFFF
        while qid in pending:
            qid = secrets.randbits(16)
        sock.left -= 1
        datagram = _U16.pack(qid) + query[2:]
        q = _UDPQuery(sock, qid, question_lc, loop.create_future(), datagram, deadline, timeout, retransmit)
        pending[qid] = q
        try:
            assert sock.transport is not None
            sock.transport.sendto(datagram)
            if not q.fut.done():  # a send error (an earlier ICMP on the socket) has failed it already
                q.arm(loop)
            return await q.fut
        finally:
            q.finish()

    def retire(self, sock: _UDPSocket) -> None:
        """Take `sock` out of its slot: no new query; closed now if nothing waits on it, else when drained."""
        slots = self.slots
        for i, s in enumerate(slots):
            if s is sock:
                slots[i] = None
        sock.retired = True
        if sock.pending:
            self.draining.add(sock)
        else:
            sock.close()

    async def _open(self, i: int, timeout: float) -> _UDPSocket:
        """The socket for slot `i`, opened now (queries that want the same slot meanwhile share it)."""
        task = self.opening.get(i)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._connect(i, timeout))
            self.opening[i] = task
            task.add_done_callback(functools.partial(self._opened, i))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if task.cancelled() and (current is None or not current.cancelling()):
                # The pool was closed while the socket was being opened; this query was not cancelled.
                raise UpstreamError(f"{self.label}: closed while opening a UDP socket") from None
            raise

    def _opened(self, i: int, task: asyncio.Task[_UDPSocket]) -> None:
        if self.opening.get(i) is task:
            del self.opening[i]
        if not task.cancelled():
            task.exception()  # each waiter gets it too; retrieved here in case every waiter gave up

    async def _connect(self, i: int, timeout: float) -> _UDPSocket:
        loop = asyncio.get_running_loop()
        expires = loop.time() + self.max_age
        try:
            async with asyncio.timeout(timeout):
                # Unbound: the kernel picks the source port at random from its ephemeral range.
                _t, sock = await loop.create_datagram_endpoint(lambda: _UDPSocket(self, expires),
                                                               remote_addr=self.peer)
        except TimeoutError:
            raise UpstreamTimeout(f"{self.label}: UDP socket not ready in {timeout:.2f}s") from None
        except OSError as e:
            raise UpstreamError(f"{self.label}: UDP socket: {e.strerror or e}") from None
        old = self.slots[i]
        if old is not None:
            self.retire(old)
        self.slots[i] = sock
        return sock

    def close(self) -> None:
        """Close every socket (queries waiting on them fail); the pool opens new ones if used again."""
        for t in list(self.opening.values()):
            t.cancel()
        self.opening.clear()
        for s in [*self.slots, *self.draining]:
            if s is not None:
                s.close()
        self.slots = [None] * self.size
        self.draining.clear()


class _Expired(Exception):
    """A TCP query's try ran out (set on its future by its timer)."""


def _expire(fut: asyncio.Future[bytes]) -> None:
    if not fut.done():
        fut.set_exception(_Expired())


class _TCPConn(asyncio.Protocol):
    """One upstream TCP connection carrying many queries at once, matched to replies by ID."""

    def __init__(self, pool: TCPPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.pending: dict[int, tuple[asyncio.Future[bytes], bytes]] = {}
        self.closed = False
        self.idle: asyncio.TimerHandle | None = None
        self.loop = loop = pool.loop()
        self.born = loop.time()  # a connection made after a loss is a new one (ConnectionLost.at)
        self.last_rx = self.born  # when bytes last came in
        self.busy_since = self.born  # when the queries now pending started to wait (pending went non-empty)
        self.why = ""  # why we closed it ourselves, for the pending queries' error

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._arm_idle()

    def data_received(self, data: bytes) -> None:
        self.last_rx = self.loop.time()
        self.buf += data
        for msg in wire.pop_frames(self.buf):
            qid = msg[0] << 8 | msg[1] if len(msg) >= 2 else -1
            waiter = self.pending.get(qid)
            if waiter is None or not reply_matches(msg, qid, waiter[1], self.pool.exact):
                stats = self.pool.stats
                if waiter is not None and self.pool.exact and case_mismatch(msg, qid, waiter[1]):
                    stats.case_mismatch[self.pool.label] = stats.case_mismatch.get(self.pool.label, 0) + 1
                stats.spoofed += 1
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
            raise ConnectionLost(f"{self.pool.label}: connection closed", self.loop.time())
        assert self.transport is not None
        while True:
            qid = secrets.randbits(16)
            if qid not in self.pending:
                break
        loop = self.loop
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
                 stall_timeout: float | None = None, exact: bool = False) -> None:
        self.peer = peer
        self.exact = exact  # replies must echo the question's case byte for byte (0x20: see reply_matches)
        self.label = f"{peer[0]}:{peer[1]}"
        self.size = size
        self.idle_timeout = idle_timeout
        self.stall_timeout = stall_timeout
        self.stats = stats
        self.loop = LoopRef()
        self.conns: list[_TCPConn] = []
        # Connections being opened (they count towards size), with the loop time each attempt started.
        self.opening: dict[asyncio.Task[_TCPConn], float] = {}

    def forget(self, conn: _TCPConn) -> None:
        if conn in self.conns:
            self.conns.remove(conn)

    async def _pick(self, timeout: float, since: float | None) -> _TCPConn:
        loop = self.loop()
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
        loop = self.loop()
        deadline = loop.time() + timeout
        conn = await self._pick(timeout, since)
        fut = conn.send(query, question_lc)
        sent = loop.time()
        # A timer on the reply's future rather than asyncio.wait_for (a waiter future and callbacks a query).
        timer = loop.call_later(max(0.0, deadline - sent), _expire, fut)
        try:
            return await fut
        except _Expired:
            conn.abandon(fut)
            # A whole try without a byte back on the connection: stalled (a peer gone without a RST).
            stall = self.stall_timeout
            if stall is not None and timeout >= stall and conn.last_rx < sent and not conn.closed:
                conn.stall(loop.time())
            raise UpstreamTimeout(f"{self.label} did not answer over TCP in {timeout:.2f}s") from None
        except asyncio.CancelledError:
            conn.abandon(fut)  # the caller gave up (shutdown, a probe no longer needed): free its ID
            raise
        finally:
            timer.cancel()

    def close(self) -> None:
        for t in list(self.opening):
            t.cancel()
        for c in list(self.conns):
            if c.transport is not None:
                c.transport.close()
