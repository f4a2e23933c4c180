#!/usr/bin/env python3
"""How long the control endpoint holds the agent's event loop while it dumps or flushes a big cache.

A store is filled with N entries (`nameI.example A`, one zone), then the control protocol's operations
run (agent/control.py, ControlServer.serve, as a client request does) beside a task that only yields
(`asyncio.sleep(0)`): the gaps between that task's turns are how long a query arriving meanwhile would
wait. Gaps are thread CPU time (time.thread_time), so that other programs on a shared machine do not
show as stalls; `--wall` measures wall time instead. Python's cyclic GC runs as it would in the agent
(`--no-gc` turns it off, to tell its pauses apart).

    .venv/bin/python hack/bench/control.py [--entries 10000,100000] [--wall] [--no-gc]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time
from typing import Any

import dns.message
import dns.rrset

from nodelocal.agent.control import ControlServer
from nodelocal.cache.policy import TTLPolicy, entry_for
from nodelocal.cache.store import SUCCESS, Store
from nodelocal.dns import wire

OPS: tuple[dict[str, Any], ...] = ({"op": "dump"}, {"op": "dump", "name": "name5.example"},
                                   {"op": "flush", "zone": "nothing.test"}, {"op": "flush", "all": True})


def fill(store: Store, n: int) -> None:
    part = store.partition(".", SUCCESS, n + 1)
    for i in range(n):
        q = dns.message.make_query(f"name{i}.example.", "A")
        r = dns.message.make_response(q)
        r.answer.append(dns.rrset.from_text(f"name{i}.example.", 300, "IN", "A", "192.0.2.1"))
        qw = q.to_wire()
        qend = wire.question_end(qw)
        e, _ = entry_for(wire.question_key(qw, qend, b""), r.to_wire(), False, store.now(),
                         TTLPolicy(success_max_ttl=3600))
        store.put(e, part)


async def measure(n: int, clock: Any) -> None:
    store = Store(1 << 31)
    fill(store, n)

    async def status() -> dict[str, Any]:
        return {}

    async def route(_name: str) -> dict[str, Any]:
        return {}

    srv = ControlServer("/nonexistent", store, status, route, time.monotonic)
    gaps: list[float] = []
    running = True

    async def ticker() -> None:
        last = clock()
        while running:
            await asyncio.sleep(0)
            t = clock()
            gaps.append(t - last)
            last = t

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    for op in OPS:
        gaps.clear()
        t0 = clock()
        lines = [o async for o in srv.serve(op)]
        top = sorted(gaps)[::-1][:4]
        print(f"{n:>7} entries  {op!s:<45} {1000 * (clock() - t0):8.1f} ms in all, {len(lines):>5} lines; "
              f"longest stalls {', '.join(f'{1000 * g:.1f}' for g in top)} ms")
    running = False
    await task


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--entries", default="10000,100000", help="cache sizes, comma-separated")
    ap.add_argument("--wall", action="store_true", help="wall time instead of thread CPU time")
    ap.add_argument("--no-gc", action="store_true", help="turn Python's cyclic GC off")
    args = ap.parse_args()
    if args.no_gc:
        gc.disable()
    clock = time.perf_counter if args.wall else time.thread_time
    for n in (int(x) for x in args.entries.split(",")):
        asyncio.run(measure(n, clock))


if __name__ == "__main__":
    main()
