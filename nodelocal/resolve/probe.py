"""Readiness probe: an independent client (c-ares via aiodns) asks each upstream until one answers.

Any DNS reply, NXDOMAIN or REFUSED included, proves the upstream is reachable; only a timeout or a
refused connection does not. Real traffic marks the agent ready too (forward.Chain).
"""

from __future__ import annotations

import asyncio
import logging
import time

import aiodns
import pycares

from nodelocal.config import Config, format_hostport
from nodelocal.resolve.metrics import ResolveStats

log = logging.getLogger("nodelocal.probe")

# c-ares errors that carry a DNS reply from the server (an rcode, or no data of the asked type).
_ANSWERED = {
    getattr(aiodns.error, name)
    for name in ("ARES_ENOTFOUND", "ARES_ENODATA", "ARES_EREFUSED", "ARES_ESERVFAIL", "ARES_EFORMERR",
                 "ARES_ENOTIMP", "ARES_EBADRESP")
}


async def probe_once(host: str, port: int, tcp: bool, name: str, timeout: float = 2.0) -> bool:
    """Did the server at host:port answer a query for `name` SOA at all?"""
    return (await probe_timed(host, port, tcp, name, timeout))[0]


async def probe_timed(host: str, port: int, tcp: bool, name: str, timeout: float = 2.0) -> tuple[bool, float, str]:
    """(answered at all, seconds it took, what came back: 'answer', an rcode-like c-ares error, or why not).

    Also `nodelocal doctor`'s probe: a client independent of the agent's own forwarder.
    """
    flags = pycares.ARES_FLAG_USEVC if tcp else 0
    resolver = aiodns.DNSResolver(nameservers=[format_hostport((host, port))], timeout=timeout, tries=1,
                                  flags=flags)
    t0 = time.monotonic()
    try:
        await resolver.query_dns(name, "SOA")
        return True, time.monotonic() - t0, "answer"
    except aiodns.error.DNSError as e:
        took = time.monotonic() - t0
        detail = str(e.args[1]) if len(e.args) > 1 else str(e.args[0])
        return e.args[0] in _ANSWERED, took, detail
    finally:
        await resolver.close()


async def wait_ready(cfg: Config, stats: ResolveStats, interval: float = 2.0) -> None:
    """Probe every upstream until one answers, then set stats.ready; returns at once when already ready."""
    while not stats.ready:
        for gname, group in cfg.upstreams.items():
            for host, port in group.addresses():
                name = cfg.cluster_domain if gname == "cluster" else "."
                try:
                    ok = await probe_once(host, port, group.transport == "tcp", name)
                except Exception as e:  # c-ares set-up errors must not stop the agent
                    log.debug("probe of %s:%d failed: %s", host, port, e)
                    ok = False
                if ok:
                    log.info("upstream %s (%s) answers: ready", format_hostport((host, port)), gname)
                    stats.ready = True
                    return
        await asyncio.sleep(interval)
