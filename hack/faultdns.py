#!/usr/bin/env python3
"""hack/faultdns.py — a DNS proxy in front of the lab's CoreDNS that can be told to misbehave.

For each --listen IP it serves UDP and TCP on IP:--port and forwards to IP:--upstream-port (the lab's
dnsmasq "CoreDNS" on port 53 of the same address; hack/lab.sh DNATs queries to port 53 here while a
fault run needs it). What it does with a query depends on the mode, read from --mode-file (polled every
100 ms, and at once on SIGHUP; a missing or empty file means pass):
  pass       forward, answer as soon as the upstream does
  servfail   answer SERVFAIL at once, forward nothing (CoreDNS whose plugins all fail)
  slow       forward, but hold the upstream's answer until DELAY seconds after the query came in
             ("slow" or "slow 3.5" in the file; default --delay, 3 s: past the agent's 2 s per-try timeout)
  drop       forward nothing, answer nothing
The mode a query gets is the one in force when it arrives. TCP: one upstream connection per client
connection, pipelined queries matched back by ID (the agent speaks TCP to CoreDNS by default).
--stats FILE is rewritten every second: {"mode", "received": {mode: queries}, "answered", "upstream_errors"}.
Runs until SIGTERM/SIGINT. Needs only the standard library and dnspython.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import signal
import socket
import struct
import sys
import time
import typing
from collections import deque

import dns.exception
import dns.message
import dns.rcode

MODES = ("pass", "servfail", "slow", "drop")


class State:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.mode = "pass"
        self.delay = args.delay
        self.received = dict.fromkeys(MODES, 0)
        self.answered = 0
        self.upstream_errors = 0

    def read_mode(self) -> None:
        try:
            with open(self.args.mode_file) as f:
                words = f.read().split()
        except FileNotFoundError:
            words = []
        mode = words[0] if words else "pass"
        delay = self.args.delay
        if mode not in MODES:
            print(f"faultdns: unknown mode {mode!r} in {self.args.mode_file}; keeping {self.mode}", file=sys.stderr)
            return
        if len(words) > 1:
            with contextlib.suppress(ValueError):
                delay = float(words[1])
        if (mode, delay) != (self.mode, self.delay):
            print(f"faultdns: {time.time():.3f} mode {self.mode} -> {mode}"
                  f"{f' ({delay:g} s)' if mode == 'slow' else ''}; received so far {self.received}",
                  file=sys.stderr, flush=True)
            self.mode, self.delay = mode, delay

    def write_stats(self) -> None:
        if not self.args.stats:
            return
        tmp = self.args.stats + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"time": time.time(), "mode": self.mode, "delay": self.delay, "received": self.received,
                       "answered": self.answered, "upstream_errors": self.upstream_errors}, f)
        os.replace(tmp, self.args.stats)


def servfail(query: bytes) -> bytes | None:
    try:
        q = dns.message.from_wire(query)
    except dns.exception.DNSException:
        return None
    r = dns.message.make_response(q)
    r.set_rcode(dns.rcode.SERVFAIL)
    return r.to_wire()


class Udp(asyncio.DatagramProtocol):
    def __init__(self, st: State, upstream: tuple[str, int]) -> None:
        self.st = st
        self.upstream = upstream
        self.transport: asyncio.DatagramTransport | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = typing.cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        st = self.st
        mode = st.mode
        st.received[mode] += 1
        if mode == "drop":
            return
        if mode == "servfail":
            reply = servfail(data)
            if reply is not None and self.transport is not None:
                self.transport.sendto(reply, addr)
                st.answered += 1
            return
        t = asyncio.get_running_loop().create_task(self.forward(data, addr, time.monotonic(),
                                                                st.delay if mode == "slow" else 0.0))
        self.tasks.add(t)
        t.add_done_callback(self.tasks.discard)

    async def forward(self, data: bytes, addr: tuple[str, int], t_in: float, delay: float) -> None:
        loop = asyncio.get_running_loop()
        fam = socket.AF_INET6 if ":" in self.upstream[0] else socket.AF_INET
        with socket.socket(fam, socket.SOCK_DGRAM) as s:
            s.setblocking(False)
            try:
                s.connect(self.upstream)
                s.send(data)
                reply = await asyncio.wait_for(loop.sock_recv(s, 65535), 5.0)
            except (TimeoutError, OSError):
                self.st.upstream_errors += 1
                return
        wait = t_in + delay - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(reply, addr)
            self.st.answered += 1


async def read_msg(reader: asyncio.StreamReader) -> bytes:
    n = struct.unpack("!H", await reader.readexactly(2))[0]
    return await reader.readexactly(n)


class TcpClient:
    """One client connection and its upstream connection."""

    def __init__(self, st: State, upstream: tuple[str, int], reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.st = st
        self.upstream = upstream
        self.reader = reader
        self.writer = writer
        self.up_writer: asyncio.StreamWriter | None = None
        self.up_task: asyncio.Task[None] | None = None
        self.pending: dict[bytes, deque[tuple[float, float]]] = {}  # query ID -> (arrival, delay) in order

    def send(self, msg: bytes) -> None:
        if not self.writer.is_closing():
            self.writer.write(struct.pack("!H", len(msg)) + msg)
            self.st.answered += 1

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                try:
                    msg = await read_msg(self.reader)
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                st = self.st
                mode = st.mode
                st.received[mode] += 1
                if mode == "drop" or len(msg) < 12:
                    continue
                if mode == "servfail":
                    reply = servfail(msg)
                    if reply is not None:
                        self.send(reply)
                    continue
                if self.up_writer is None or self.up_writer.is_closing():
                    try:
                        r, self.up_writer = await asyncio.open_connection(*self.upstream)
                    except OSError:
                        st.upstream_errors += 1
                        continue
                    self.pending.clear()
                    self.up_task = loop.create_task(self.replies(r))
                self.pending.setdefault(msg[:2], deque()).append(
                    (time.monotonic(), st.delay if mode == "slow" else 0.0))
                self.up_writer.write(struct.pack("!H", len(msg)) + msg)
        finally:
            if self.up_task is not None:
                self.up_task.cancel()
            if self.up_writer is not None:
                self.up_writer.close()
            self.writer.close()

    async def replies(self, r: asyncio.StreamReader) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                msg = await read_msg(r)
                q = self.pending.get(msg[:2])
                if not q:
                    continue
                t_in, delay = q.popleft()
                if not q:
                    del self.pending[msg[:2]]
                wait = t_in + delay - time.monotonic()
                if wait > 0:
                    loop.call_later(wait, self.send, msg)
                else:
                    self.send(msg)
        except (asyncio.IncompleteReadError, ConnectionError):
            self.st.upstream_errors += 1
            if self.up_writer is not None:
                self.up_writer.close()


async def amain(args: argparse.Namespace) -> None:
    st = State(args)
    st.read_mode()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, st.read_mode)  # hack/lab.sh: the mode file changed
    servers: list[asyncio.AbstractServer] = []
    transports: list[asyncio.BaseTransport] = []
    clients: set[asyncio.Task[None]] = set()

    async def handle(upstream: tuple[str, int], reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        t = asyncio.current_task()
        assert t is not None
        clients.add(t)
        try:
            await TcpClient(st, upstream, reader, writer).run()
        finally:
            clients.discard(t)

    for ip in args.listen:
        upstream = (ip, args.upstream_port)
        udp, _ = await loop.create_datagram_endpoint(functools.partial(Udp, st, upstream), local_addr=(ip, args.port))
        transports.append(udp)
        servers.append(await asyncio.start_server(functools.partial(handle, upstream), ip, args.port,
                                                  reuse_address=True))
    print(f"faultdns: listening on {', '.join(args.listen)} port {args.port} -> port {args.upstream_port}; "
          f"mode {st.mode}", file=sys.stderr, flush=True)
    st.write_stats()
    last = time.monotonic()
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.1)
        st.read_mode()
        if time.monotonic() - last >= 1.0:
            st.write_stats()
            last = time.monotonic()
    for s in servers:
        s.close()
    for tr in transports:
        tr.close()
    for t in list(clients):
        t.cancel()
    st.write_stats()
    print(f"faultdns: stopped; received {st.received}, answered {st.answered}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--listen", action="append", required=True, help="IP to serve on (repeat)")
    ap.add_argument("--port", type=int, default=5300)
    ap.add_argument("--upstream-port", type=int, default=53)
    ap.add_argument("--mode-file", required=True)
    ap.add_argument("--delay", type=float, default=3.0, help="seconds a slow answer is held (default 3)")
    ap.add_argument("--stats", help="rewrite this JSON file every second")
    asyncio.run(amain(ap.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
