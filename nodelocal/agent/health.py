"""What /health and /ready say, and how the agent finds out: a self-query on every DNS listener.

/health (liveness): the process serves DNS at all. Every listener is bound and answers a query sent to it
  from inside the agent: one UDP datagram to each UDP listener, one TCP connection and query to each TCP
  listener, each answered within SELF_CHECK_TIMEOUT. A listener whose socket no longer gets read (a
  wedged loop or transport) fails it, not only a process that is gone.
/ready (readiness): the agent serves queries now. The self-check passes, no shutdown or handover has
  begun, and either the cluster DNS group is reachable (an upstream has answered, and a server of the
  group is not marked down) or the cache holds answers to serve stale (RFC 8767) while it is not.

The self-query is a standard header with opcode STATUS (RFC 1035 §4.1.1): the resolver answers it NOTIMP
itself, without an upstream or the cache, so it tests the listener and the loop and nothing else. It is
counted like any query (one per listener per check, at most one check a second) and is exempt from the
overload shedding (server/udp.py), which must never turn a busy agent into a dead one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
import time
from collections.abc import Callable, Iterable

from nodelocal.config import Address, format_hostport
from nodelocal.resolve.forward import Group
from nodelocal.resolve.metrics import ResolveStats

SELF_CHECK_TIMEOUT = 2.0  # seconds a listener has to answer its self-query (the kubelet's probe waits 5)
SELF_CHECK_REUSE = 1.0  # seconds a result is reused: probes and curl loops cannot multiply the self-queries

_STATUS = 2 << 3  # opcode STATUS in header byte 2: answered NOTIMP by the resolver (no upstream, no cache)


def self_query() -> bytes:
    """A header-only STATUS query with a random ID."""
    return struct.pack("!HBBHHHH", int.from_bytes(os.urandom(2), "big"), _STATUS, 0, 0, 0, 0, 0)


def _answers(query: bytes, reply: bytes) -> bool:
    return len(reply) >= 12 and reply[:2] == query[:2] and bool(reply[2] & 0x80)


async def ask_udp(addr: Address, timeout: float, exempt: set[tuple[str, int]] | None = None) -> str | None:
    """None when the UDP listener at `addr` answered a self-query, else what went wrong. The query's source
    address is in `exempt` while it waits (the listener does not shed it)."""
    loop = asyncio.get_running_loop()
    fam = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
    query = self_query()
    got: asyncio.Future[bytes] = loop.create_future()

    class Client(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, _addr: object) -> None:
            if _answers(query, data) and not got.done():
                got.set_result(data)

        def error_received(self, exc: Exception) -> None:
            if not got.done():
                got.set_exception(exc)

    transport, _ = await loop.create_datagram_endpoint(Client, remote_addr=addr, family=fam)
    source = tuple(transport.get_extra_info("sockname")[:2])
    if exempt is not None:
        exempt.add(source)
    try:
        transport.sendto(query)
        await asyncio.wait_for(got, timeout)
        return None
    except TimeoutError:
        return f"udp {format_hostport(addr)}: no answer to a self-query within {timeout:.1f}s"
    except OSError as e:
        return f"udp {format_hostport(addr)}: {e.strerror or e}"
    finally:
        if exempt is not None:
            exempt.discard(source)
        transport.close()


async def ask_tcp(addr: Address, timeout: float) -> str | None:
    """None when the TCP listener at `addr` accepted a connection and answered a self-query on it."""
    query = self_query()

    async def exchange() -> bytes:
        reader, writer = await asyncio.open_connection(addr[0], addr[1])
        try:
            writer.write(struct.pack("!H", len(query)) + query)
            n = struct.unpack("!H", await reader.readexactly(2))[0]
            return await reader.readexactly(n)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    try:
        reply = await asyncio.wait_for(exchange(), timeout)
    except TimeoutError:
        return f"tcp {format_hostport(addr)}: no answer to a self-query within {timeout:.1f}s"
    except (OSError, asyncio.IncompleteReadError) as e:
        return f"tcp {format_hostport(addr)}: {getattr(e, 'strerror', None) or e}"
    return None if _answers(query, reply) else f"tcp {format_hostport(addr)}: a reply that is not ours"


class SelfCheck:
    """Self-queries on every listener; one check at a time, its result reused for SELF_CHECK_REUSE seconds."""

    def __init__(self, listeners: Callable[[], Iterable[tuple[str, Address]]],
                 timeout: float = SELF_CHECK_TIMEOUT, now: Callable[[], float] = time.monotonic) -> None:
        self.listeners = listeners  # ("udp"/"tcp"/..., address) of what is bound now
        self.timeout = timeout
        self.now = now
        self.exempt: set[tuple[str, int]] = set()  # self-queries' source addresses (shared with the listeners)
        self._result: tuple[float, str | None] | None = None
        self._running: asyncio.Task[str | None] | None = None

    async def problem(self) -> str | None:
        """None when every DNS listener answered its self-query, else the first failure."""
        if self._result is not None and self.now() - self._result[0] < SELF_CHECK_REUSE:
            return self._result[1]
        if self._running is None:
            self._running = asyncio.get_running_loop().create_task(self._check())
            self._running.add_done_callback(self._store)
        return await asyncio.shield(self._running)

    def _store(self, task: asyncio.Task[str | None]) -> None:
        self._running = None
        if not task.cancelled() and task.exception() is None:
            self._result = (self.now(), task.result())

    async def _check(self) -> str | None:
        asks = [ask_udp(a, self.timeout, self.exempt) if k == "udp" else ask_tcp(a, self.timeout)
                for k, a in self.listeners() if k in ("udp", "tcp")]
        if not asks:
            return "no DNS listener is bound"
        for problem in await asyncio.gather(*asks):
            if problem is not None:
                return problem
        return None


def upstream_problem(groups: dict[str, Group], stats: ResolveStats, cached: int) -> str | None:
    """None when the cluster DNS group is reachable (an upstream answered since start and a server of the
    group is not marked down; the first group with servers when `cluster` has none) or `cached` answers can
    be served stale; else why not."""
    group = groups.get("cluster")
    if group is None or not group.servers:
        group = next((g for g in groups.values() if g.servers), None)
    if group is None:
        return "no upstream server is configured" if not cached else None
    reachable = stats.ready and any(s.label not in stats.upstream_down for s in group.servers)
    if reachable or cached:
        return None
    if not stats.ready:
        return f"no upstream has answered yet and the cache is empty (group {group.name})"
    return f"every server of group {group.name} is down and the cache is empty"
