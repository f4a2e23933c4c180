#!/usr/bin/env python3
"""The Python floor for hack/bench.sh: the least a Python UDP cache-hit server can do.

A uvloop DatagramProtocol that looks the question bytes up in a dict and sends the stored answer back
with the query's ID: a bare Python loop that only looks up the question bytes in a dict and sends stored
bytes back, which costs ~6-8 µs of CPU per query at 50,000 QPS on this project's 2-core machine (the
README's Benchmark table: 7.90 µs). Any name gets `A 192.0.2.1`, TTL 3600, made on first sight and kept. It
checks nothing and counts nothing; it exists only so that the benchmark can show, on the same machine
and in the same run, how far the agent's hit path is from what Python itself costs.

  hack/bench/floor.py PORT [--loop uvloop|asyncio]
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import Any

_ANSWER = b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x0e\x10\x00\x04\xc0\x00\x02\x01"  # A 192.0.2.1, TTL 3600


def synthesize(query: bytes) -> bytes | None:
    """Bytes 2.. of the reply to `query` (ID excluded), or None for something not a plain query."""
    if len(query) < 17 or query[2] & 0x80:
        return None
    off = 12
    while off < len(query) and query[off]:
        off += 1 + query[off]
    qend = off + 5
    if qend > len(query):
        return None
    flags = bytes([0x80 | (query[2] & 0x01), 0x80])
    return flags + b"\x00\x01\x00\x01\x00\x00\x00\x00" + query[12:qend] + _ANSWER


class Floor(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.answers: dict[bytes, bytes] = {}
        self.transport: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        r = self.answers.get(data[12:])
        if r is None:
            r = synthesize(data)
            if r is None:
                return
            self.answers[data[12:]] = r
        self.transport.sendto(data[:2] + r, addr)


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(Floor, local_addr=("127.0.0.1", port))
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        transport.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("port", type=int)
    p.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    a = p.parse_args()
    if a.loop == "uvloop":
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(serve(a.port))
    else:
        asyncio.run(serve(a.port))


if __name__ == "__main__":
    main()
