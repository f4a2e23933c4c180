#!/usr/bin/env python3
"""What access control and the per-client rate limit cost on the cache-hit path, in process.

The shipped UDPServer.datagram_received is called in a loop on a fake transport whose sendto is a C
no-op, for --names cached names from --clients source addresses, so only the Python work of a hit is
timed (the syscalls and the event loop, most of a real hit's CPU, are left out: the percentages are of
the Python part only, an upper bound of the real share). Variants, interleaved round by round, best
round counts:

  off     acl.allow 0.0.0.0/0 and ::/0: everyone is answered, the listener skips the check
  acl     the default: the verdict dict looked up per datagram (loopback and two pod ranges allowed)
  rate    acl plus clients.rate (high enough that nothing is limited): a token bucket per datagram

Both the reply memo path (the same query bytes again: the usual hit) and the full hit path (memo
cleared before every pass) are timed. hack/bench.sh measures the whole agent, syscalls included.

Run: .venv/bin/python hack/bench/acl.py [--names 1000] [--clients 50] [--passes 100] [--rounds 7] [--json FILE]
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import dns.message
import dns.rrset

from nodelocal.cache.policy import TTLPolicy, entry_for
from nodelocal.cache.store import SUCCESS, Store
from nodelocal.config import load
from nodelocal.dns import wire
from nodelocal.server.clients import Clients
from nodelocal.server.metrics import ServerStats
from nodelocal.server.udp import UDPServer

NOW = 1000.0
NODE = [ipaddress.ip_network(n) for n in ("127.0.0.0/8", "::1/128", "10.244.0.0/16", "192.0.2.0/24")]


class NullTransport:
    """sendto is a C builtin that does nothing with its two arguments."""

    sendto = staticmethod(slice)  # any two arguments, no work


def build(variant: str, names: int) -> tuple[UDPServer, list[bytes]]:
    over: dict[str, Any] = {}
    if variant == "off":
        over["acl"] = {"allow": ["0.0.0.0/0", "::/0"]}
    if variant == "rate":
        over["clients"] = {"rate": 10**9}
    cfg = load(None, over, env={}, resolv_conf="/nonexistent")
    store = Store(1 << 28, now=lambda: NOW)
    part = store.partition(".", SUCCESS, 1 << 20)
    queries = []
    for i in range(names):
        q = dns.message.make_query(f"name{i}.default.svc.cluster.local", "A")
        q.id = 0
        r = dns.message.make_response(q)
        r.answer.append(dns.rrset.from_text(q.question[0].name, 300, "IN", "A", f"10.0.{i // 250}.{i % 250}"))
        data = q.to_wire()
        qend = wire.question_end(data)
        e, _ok = entry_for(wire.question_key(data, qend, wire.key_suffix(True, False, False)), r.to_wire(), False,
                           NOW - 1, TTLPolicy(min_ttl=0, success_max_ttl=3600))
        store.put(e, part)
        queries.append(data)
    clients = Clients(cfg, NODE, lambda: NOW)
    srv = UDPServer(None, store, ServerStats(), 1232, now=lambda: NOW, clients=clients)  # type: ignore[arg-type]
    srv.connection_made(NullTransport())  # type: ignore[arg-type]
    return srv, queries


def timed(srv: UDPServer, queries: list[bytes], addrs: list[tuple[str, int]], passes: int, memo: bool) -> float:
    """Seconds per datagram over `passes` passes of every query from every address in turn."""
    recv = srv.datagram_received
    n = 0
    total = 0.0
    for _ in range(passes):
        if not memo:
            srv.memo.clear()
        t0 = time.perf_counter()
        for i, q in enumerate(queries):
            recv(q, addrs[i % len(addrs)])
        total += time.perf_counter() - t0
        n += len(queries)
    return total / n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--names", type=int, default=1000)
    ap.add_argument("--clients", type=int, default=50, help="distinct source addresses (all allowed)")
    ap.add_argument("--passes", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--json", metavar="FILE")
    a = ap.parse_args()
    addrs = [(f"10.244.{i // 250}.{i % 250 + 1}", 40000 + i) for i in range(a.clients)]
    variants = ("off", "acl", "rate")
    servers = {v: build(v, a.names) for v in variants}
    best: dict[tuple[str, bool], float] = {}
    for _ in range(a.rounds):
        for memo in (True, False):
            for v in variants:
                srv, qs = servers[v]
                t = timed(srv, qs, addrs, a.passes, memo)
                best[(v, memo)] = min(best.get((v, memo), 1.0), t)
    for srv, _qs in servers.values():
        assert srv.stats.limited == {k: 0 for k in srv.stats.limited}, "a measured datagram was limited"
    out: dict[str, Any] = {"names": a.names, "clients": a.clients, "passes": a.passes, "rounds": a.rounds}
    print(f"in-process hit path, best of {a.rounds} rounds, {a.names} names from {a.clients} clients "
          f"(Python work only; no syscalls)")
    for memo in (True, False):
        path = "memo hit" if memo else "full hit"
        base = best[("off", memo)]
        for v in variants:
            t = best[(v, memo)]
            print(f"  {path:8} {v:5} {t * 1e9:7.0f} ns/datagram  {t / base:5.3f}x  (+{(t - base) * 1e9:4.0f} ns)")
            out[f"{path.replace(' ', '_')}_{v}_ns"] = round(t * 1e9, 1)
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
