"""Forwarding-loop detection, like CoreDNS's `loop` plugin: does an upstream send our queries back to us?

A node whose /etc/resolv.conf names the agent's own address (or a resolver that forwards to it) makes
the `host` group a loop: every miss would travel agent -> resolver -> agent -> ... . Two checks:
  static_loops()  an upstream at one of the agent's own listen addresses: certain, needs no traffic
  probe()         (resolve.loop_detect) each upstream gets a query for `<random>.<random>.<zone>` HINFO,
                  a name nobody asks; if that very question reaches our own listener, the server loops
                  back to us. The guard answers it REFUSED there and then, so the probe is never
                  forwarded again (CoreDNS counts its probe and exits; we stop using that server).
In-flight coalescing already keeps a loop from amplifying (the looped query joins the one that is
waiting for it), but the client would still wait for the query timeout: hence the detection.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import logging
import secrets
import struct
import time
from collections.abc import Callable, Iterable

from nodelocal import WireError
from nodelocal.config import Address, Config, format_hostport
from nodelocal.dns import wire
from nodelocal.dns.names import to_wire
from nodelocal.resolve.forward import Server
from nodelocal.resolve.metrics import ResolveStats

log = logging.getLogger("nodelocal.loop")

TYPE_HINFO = 13
PROBE_TIMEOUT = 2.0  # seconds a probe waits for any reply: CoreDNS forward's read timeout
LATE_WINDOW = 30.0  # seconds a probe name stays recognised after the pass (a slow loop is still a loop)


class LoopGuard:
    """The probe names in flight; the resolver asks it about every query while there are any."""

    def __init__(self, now: Callable[[], float] = time.monotonic) -> None:
        self.probes: dict[bytes, tuple[str, str]] = {}  # question (lowercased name, type, class) -> (to, group)
        self.found: dict[str, str] = {}  # to -> group, every server seen looping since the last reset
        self.on_loop: Callable[[str, str], None] | None = None  # told about each loop as it is seen
        self.now = now

    def question(self, name: str) -> bytes:
        return to_wire(name).lower() + struct.pack(">HH", TYPE_HINFO, 1)

    def check(self, query: bytes) -> bytes | None:
        """REFUSED for a probe of ours that came back (recording the loop); None for any other query."""
        try:
            qend = wire.question_end(query)
        except WireError:
            return None
        hit = self.probes.get(wire.question_key(query, qend, b""))
        if hit is None:
            return None
        to, group = hit
        if to not in self.found:
            self.found[to] = group
            if self.on_loop is not None:
                self.on_loop(to, group)
        return wire.error_reply(query, wire.REFUSED, qend)


def own_addresses(cfg: Config) -> set[Address]:
    """Our listen addresses, in the canonical form config.parse_hostport gives upstream addresses."""
    return {(ipaddress.ip_address(ip).compressed, cfg.listen.port) for ip in cfg.listen.localip}


def static_loops(cfg: Config, own: Iterable[Address]) -> dict[str, str]:
    """Upstreams at one of our own listen addresses: to -> group."""
    mine = set(own)
    out: dict[str, str] = {}
    for gname, g in cfg.upstreams.items():
        for addr in g.addresses():
            if addr in mine:
                out[format_hostport(addr)] = gname
    return out


def without(cfg: Config, servers: Iterable[str]) -> Config:
    """cfg with the given upstreams (HOST:PORT as in metrics) taken out of their groups."""
    drop = set(servers)
    groups = {}
    for gname, g in cfg.upstreams.items():
        keep = tuple(s for s, a in zip(g.servers, g.addresses(), strict=True) if format_hostport(a) not in drop)
        groups[gname] = g if keep == g.servers else dataclasses.replace(g, servers=keep)
    return dataclasses.replace(cfg, upstreams=groups)


def _zone_for(cfg: Config, group: str) -> str | None:
    for zname, z in cfg.zones.items():
        if group in z.forward:
            return zname
    return None


async def probe(cfg: Config, guard: LoopGuard, stats: ResolveStats, timeout: float = PROBE_TIMEOUT,
                skip: Iterable[str] = ()) -> dict[str, str]:
    """Probe every upstream a zone uses; the ones whose probe came back to us (to -> group).

    Each probe goes out through the forwarder's own client (forward.Server: the group's transport, the
    reply checked against ID and question); a reply of any kind, or none, only ends its wait.
    """
    skipped = set(skip)
    loop = asyncio.get_running_loop()
    sends = []
    servers: list[Server] = []
    names: list[bytes] = []
    for gname, g in cfg.upstreams.items():
        zone = _zone_for(cfg, gname)
        if zone is None:
            continue
        for addr in g.addresses():
            to = format_hostport(addr)
            if to in skipped:
                continue
            name = f"{secrets.token_hex(4)}.{secrets.token_hex(4)}.{'' if zone == '.' else zone}"
            q = guard.question(name)
            guard.probes[q] = (to, gname)
            names.append(q)
            server = Server(addr, g, stats)
            servers.append(server)
            query = wire.build_query(0, q, True, False, False, wire.EDNS_PAYLOAD)
            sends.append(loop.create_task(server.exchange(query, q, timeout)))
    t0 = loop.time()
    if sends:
        await asyncio.wait(sends, timeout=timeout + 0.5)
        for t in sends:
            if not t.done():
                t.cancel()
            else:
                with contextlib.suppress(BaseException):
                    t.exception()  # no reply, or an error: neither is a loop
    for server in servers:
        server.close()

    def forget() -> None:
        for q in names:
            guard.probes.pop(q, None)

    loop.call_later(LATE_WINDOW, forget)
    found = {to: group for to, group in guard.found.items() if to not in skipped}
    log.info("loop check: %d upstream(s) probed in %.2fs, %s", len(sends), loop.time() - t0,
             f"{len(found)} loop(s)" if found else "no loop")
    return found


def explain(to: str, group: str) -> str:
    return (f"forwarding loop: upstream {to} (group {group}) sends queries back to this agent; not forwarding "
            f"to it any more. Point the node's resolv.conf (or the {group} group's servers) at a resolver "
            "that does not forward to the agent")
