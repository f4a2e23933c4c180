#!/usr/bin/env python3
"""hack/podload.py — a pod's resolver under load: what pods see, phase by phase.

Sends UDP queries for a fixed list of (name, type) pairs at a steady rate to one server, EVERY QUERY
FROM A NEW SOCKET (a new source port, as glibc and musl resolvers in pods do), and waits up to the
client timeout for each. --tcp: each query over a new TCP connection instead (connect, one framed
query, the framed reply; a refused or reset connection is `error`).
A query's outcome is the answer's rcode (NOERROR, NXDOMAIN, SERVFAIL, REFUSED, other), `timeout` (no
valid reply in time) or `error` (ICMP unreachable, send failure).
The send schedule is fixed (query i leaves at start + i/rate): slow answers never lower the offered
rate; at most --max-outstanding queries wait at once, a query that would pass that is `dropped`
(counted, not sent). Replies are matched by ID, source and question; anything else is ignored.

Run inside a pod's namespace, e.g.
  hack/lab.sh exec pod-a .venv/bin/python hack/podload.py --server 10.96.0.10 --duration 10
  hack/lab.sh exec pod-b .venv/bin/python hack/podload.py --server 169.254.20.10 \\
      --start-at 1700000000.0 --phases warmup=10,before=20,fault=60,after=20 --out pod-b.json

Output (--out FILE, else stdout): one JSON document {"server", "rate", "timeout", "pairs", "phases": [...]}
with, per phase: offered = sent + dropped; sent = NOERROR + NXDOMAIN + SERVFAIL + REFUSED + other + timeout
+ error + unfinished (unfinished: only when interrupted); answered = NOERROR + NXDOMAIN; nodata (NOERROR
without answer records); latency percentiles in ms of answered queries and of all replies; per_second
[[sent, answered], ...]; by_pair {"NAME TYPE": {outcome: count}}. A query belongs to the phase in which
it was sent. --jsonl FILE adds one line per query: {"t": send time, "phase", "name", "type", "outcome", "ms"}.
--random-under ZONE asks a new random name under ZONE each time instead of the list (a random-subdomain
flood: every query a cache miss; by_pair counts them as "*.ZONE TYPE").
Bounded: at most 3600 s and 5000 q/s; SIGINT/SIGTERM stop sending and still write the report.
Needs only the standard library and dnspython.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import json
import math
import os
import random
import resource
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

import dns.message
import dns.rdatatype

# The lab's CoreDNS serves these (hack/lab.sh): services, a headless service, a name without AAAA
# (NODATA), a search-path miss (NXDOMAIN, as ndots:5 makes pods send), and an outside name.
DEFAULT_NAMES = (
    "web.default.svc.cluster.local",
    "api.default.svc.cluster.local",
    "db.default.svc.cluster.local",
    "kube-dns.kube-system.svc.cluster.local",
    "www.example.com.default.svc.cluster.local",
    "www.example.com",
)
DEFAULT_TYPES = ("A", "AAAA")
OUTCOMES = ("NOERROR", "NXDOMAIN", "SERVFAIL", "REFUSED", "other", "timeout", "error", "unfinished")
RCODES = {0: "NOERROR", 2: "SERVFAIL", 3: "NXDOMAIN", 5: "REFUSED"}
MAX_SECONDS = 3600.0
MAX_RATE = 5000.0
RANDOM_LABEL = 16  # hex digits of a --random-under name's first label


@dataclass
class Phase:
    name: str
    start: float  # wall clock (time.time()), shared by every namespace
    seconds: float
    offered: int = 0
    dropped: int = 0
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))
    nodata: int = 0
    answered_ms: list[float] = field(default_factory=list)
    reply_ms: list[float] = field(default_factory=list)
    per_second: list[list[int]] = field(default_factory=list)
    by_pair: dict[str, dict[str, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.per_second = [[0, 0] for _ in range(max(1, math.ceil(self.seconds)))]

    def second(self, t: float) -> list[int]:
        return self.per_second[min(len(self.per_second) - 1, max(0, int(t - self.start)))]


def parse_phases(spec: str) -> list[tuple[str, float]]:
    out = []
    for part in spec.split(","):
        name, _, secs = part.partition("=")
        if not name or not secs:
            raise argparse.ArgumentTypeError(f"phase {part!r}: want NAME=SECONDS")
        s = float(secs)
        if s <= 0:
            raise argparse.ArgumentTypeError(f"phase {part!r}: seconds must be > 0")
        out.append((name.strip(), s))
    return out


def percentile(sorted_ms: list[float], q: float) -> float | None:
    if not sorted_ms:
        return None
    i = min(len(sorted_ms) - 1, max(0, math.ceil(q * len(sorted_ms)) - 1))
    return round(sorted_ms[i], 3)


def latency(ms: list[float]) -> dict[str, float | int | None]:
    s = sorted(ms)
    return {"n": len(s), "p50": percentile(s, 0.50), "p90": percentile(s, 0.90), "p99": percentile(s, 0.99),
            "max": round(s[-1], 3) if s else None}


class Load:
    """The sender and every outstanding query, callback-driven on one event loop (no task per query)."""

    def __init__(self, args: argparse.Namespace, phases: list[Phase], jsonl: TextIO | None) -> None:
        self.args = args
        self.phases = phases
        self.jsonl = jsonl
        self.loop = asyncio.get_running_loop()
        self.family = socket.AF_INET6 if ":" in args.server else socket.AF_INET
        self.dest = (args.server, args.port)
        self.pairs: list[tuple[str, str, bytes]] = []
        names = [f"{'r' * RANDOM_LABEL}.{args.random_under}"] if args.random_under else args.names
        for name in names:
            for rdtype in args.types:
                q = dns.message.make_query(name, dns.rdatatype.from_text(rdtype))
                label = f"*.{args.random_under}" if args.random_under else name
                self.pairs.append((label, rdtype, q.to_wire()))
        self.outstanding: dict[int, tuple[socket.socket, asyncio.TimerHandle, float, float, Phase, int]] = {}
        self.buffers: dict[int, bytes] = {}  # TCP: reply bytes read so far
        self.stopping = False
        self.done = asyncio.Event()
        self.max_lag = 0.0

    def phase_at(self, t: float) -> Phase | None:
        for p in self.phases:
            if p.start <= t < p.start + p.seconds:
                return p
        return None

    async def run(self) -> None:
        start = self.phases[0].start
        end = self.phases[-1].start + self.phases[-1].seconds
        interval = 1.0 / self.args.rate
        i = 0
        while not self.stopping:
            due = start + i * interval
            if due >= end:
                break
            delay = due - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
                if self.stopping:
                    break
            else:
                self.max_lag = max(self.max_lag, -delay)
            ph = self.phase_at(due)
            if ph is not None:
                self.send(ph, i, due)
            i += 1
        # Every query sent gets its full timeout (a timer each), unless we were told to stop.
        self.done.clear()
        if self.outstanding and not self.stopping:
            await self.done.wait()
        for fd in list(self.outstanding):
            self.finish(fd, "unfinished", None)

    def send(self, ph: Phase, i: int, t_sched: float) -> None:
        ph.offered += 1
        if len(self.outstanding) >= self.args.max_outstanding:
            ph.dropped += 1
            return
        wire = self.pairs[i % len(self.pairs)][2]
        if self.args.random_under:  # a fresh first label in place of the template's (after its length byte)
            label = f"{random.getrandbits(4 * RANDOM_LABEL):0{RANDOM_LABEL}x}".encode()
            wire = wire[:13] + label + wire[13 + RANDOM_LABEL :]
        qid = random.getrandbits(16)
        msg = qid.to_bytes(2, "big") + wire[2:]
        t0 = time.time()
        ph.second(t_sched)[0] += 1
        tcp = self.args.tcp
        try:
            sock = socket.socket(self.family, socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM)
        except OSError:
            self.record(ph, t0, i, "error", None, t_sched=t_sched)
            return
        try:
            sock.setblocking(False)
            if tcp:
                err = sock.connect_ex(self.dest)  # a new connection (and source port) per query
                if err not in (0, errno.EINPROGRESS):
                    raise OSError(err, os.strerror(err))
            else:
                sock.connect(self.dest)  # a new ephemeral source port; ICMP errors come back as ECONNREFUSED
                sock.send(msg)
        except OSError:
            sock.close()
            self.record(ph, t0, i, "error", None, t_sched=t_sched)
            return
        fd = sock.fileno()
        timer = self.loop.call_later(self.args.timeout, self.finish, fd, "timeout", None)
        self.outstanding[fd] = (sock, timer, t0, t_sched, ph, i)
        if tcp:
            self.buffers[fd] = b""
            self.loop.add_writer(fd, self.connected, fd, msg)
        self.loop.add_reader(fd, self.readable, fd, qid, wire[12:])

    def connected(self, fd: int, msg: bytes) -> None:
        """TCP: the connection is up (or failed): send the framed query."""
        self.loop.remove_writer(fd)
        entry = self.outstanding.get(fd)
        if entry is None:
            return
        sock = entry[0]
        try:
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                raise OSError(err, os.strerror(err))
            sock.send(len(msg).to_bytes(2, "big") + msg)  # a few dozen bytes: fits an empty send buffer
        except OSError:
            self.finish(fd, "error", time.time())

    def readable(self, fd: int, qid: int, question: bytes) -> None:
        entry = self.outstanding.get(fd)
        if entry is None:
            return
        sock = entry[0]
        while True:
            try:
                data = sock.recv(65535)
            except BlockingIOError:
                return
            except OSError:
                self.finish(fd, "error", time.time())
                return
            if self.args.tcp:
                if not data:
                    self.finish(fd, "error", time.time())  # closed before the whole reply came
                    return
                buf = self.buffers[fd] = self.buffers.get(fd, b"") + data
                if len(buf) < 2 or len(buf) < 2 + int.from_bytes(buf[:2], "big"):
                    continue
                data = buf[2:2 + int.from_bytes(buf[:2], "big")]
            # Our ID, a reply, one question equal to ours (names compared case-insensitively).
            if (len(data) >= 12 and int.from_bytes(data[:2], "big") == qid and data[2] & 0x80
                    and data[4:6] == b"\x00\x01" and data[12:12 + len(question)].lower() == question.lower()):
                rcode = data[3] & 0x0F
                outcome = RCODES.get(rcode, "other")
                nodata = outcome == "NOERROR" and data[6:8] == b"\x00\x00"
                self.finish(fd, outcome, time.time(), nodata)
                return

    def finish(self, fd: int, outcome: str, t_reply: float | None, nodata: bool = False) -> None:
        entry = self.outstanding.pop(fd, None)
        if entry is None:
            return
        sock, timer, t0, t_sched, ph, i = entry
        timer.cancel()
        self.loop.remove_reader(fd)
        self.loop.remove_writer(fd)
        self.buffers.pop(fd, None)
        sock.close()
        ms = None if t_reply is None else (t_reply - t0) * 1000.0
        self.record(ph, t0, i, outcome, ms, nodata, t_sched)
        if not self.outstanding:
            self.done.set()

    def record(self, ph: Phase, t0: float, i: int, outcome: str, ms: float | None, nodata: bool = False,
               t_sched: float | None = None) -> None:
        ph.counts[outcome] += 1
        name, rdtype, _ = self.pairs[i % len(self.pairs)]
        pair = ph.by_pair.setdefault(f"{name} {rdtype}", {})
        pair[outcome] = pair.get(outcome, 0) + 1
        if ms is not None and outcome not in ("error", "unfinished"):
            ph.reply_ms.append(ms)
        if outcome in ("NOERROR", "NXDOMAIN"):
            ph.second(t0 if t_sched is None else t_sched)[1] += 1
            assert ms is not None
            ph.answered_ms.append(ms)
            ph.nodata += nodata
        if self.jsonl is not None:
            self.jsonl.write(json.dumps({"t": round(t0, 4), "phase": ph.name, "name": name, "type": rdtype,
                                         "outcome": outcome, "ms": None if ms is None else round(ms, 3)}) + "\n")


def summary(args: argparse.Namespace, load: Load, interrupted: bool) -> dict[str, Any]:
    phases = []
    for p in load.phases:
        sent = p.offered - p.dropped
        answered = p.counts["NOERROR"] + p.counts["NXDOMAIN"]
        phases.append({
            "phase": p.name, "start": round(p.start, 3), "seconds": p.seconds,
            "offered": p.offered, "dropped": p.dropped, "sent": sent, **p.counts,
            "answered": answered, "answered_share": round(answered / sent, 5) if sent else None,
            "nodata": p.nodata,
            "latency_ms": {"answered": latency(p.answered_ms), "replies": latency(p.reply_ms)},
            "per_second": p.per_second,
            "by_pair": p.by_pair,
        })
    return {"server": args.server, "port": args.port, "tcp": args.tcp, "rate": args.rate, "timeout": args.timeout,
            "max_outstanding": args.max_outstanding, "pairs": [[n, t] for n, t, _ in load.pairs],
            "max_send_lag_ms": round(load.max_lag * 1000, 1), "interrupted": interrupted, "phases": phases}


async def amain(args: argparse.Namespace) -> dict[str, Any]:
    start = args.start_at if args.start_at else time.time() + 0.2
    phases, t = [], start
    for name, secs in args.phases:
        phases.append(Phase(name, t, secs))
        t += secs
    jsonl = open(args.jsonl, "w") if args.jsonl else None  # closed below
    try:
        load = Load(args, phases, jsonl)
        interrupted = False

        def stop() -> None:
            nonlocal interrupted
            interrupted = True
            load.stopping = True
            load.done.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            load.loop.add_signal_handler(sig, stop)
        await load.run()
        return summary(args, load, interrupted)
    finally:
        if jsonl is not None:
            jsonl.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--server", required=True, help="the resolver's IP (a pod's nameserver)")
    ap.add_argument("--port", type=int, default=53)
    ap.add_argument("--tcp", action="store_true", help="each query over a new TCP connection (default: UDP)")
    ap.add_argument("--rate", type=float, default=200.0, help="queries per second (default 200)")
    ap.add_argument("--timeout", type=float, default=2.0,
                    help="seconds a query waits for its reply (default 2; glibc: 5 s per try, `options timeout`)")
    ap.add_argument("--max-outstanding", type=int, default=2000, help="queries waiting at once (default 2000)")
    ap.add_argument("--duration", type=float, help="one phase 'load' of this many seconds (or --phases)")
    ap.add_argument("--phases", type=parse_phases, help="NAME=SECONDS,... run back to back, e.g. before=20,fault=60")
    ap.add_argument("--start-at", type=float, help="wall-clock time (time.time()) the first phase starts")
    ap.add_argument("--names", nargs="+", default=list(DEFAULT_NAMES))
    ap.add_argument("--types", nargs="+", default=list(DEFAULT_TYPES))
    ap.add_argument("--random-under", metavar="ZONE", help="a new random name under ZONE per query (a flood of misses)")
    ap.add_argument("--out", help="write the JSON report here (default: stdout)")
    ap.add_argument("--jsonl", help="also write one JSON line per query here")
    args = ap.parse_args(argv)
    if args.phases is None:
        args.phases = [("load", args.duration or 10.0)]
    elif args.duration is not None:
        ap.error("--duration or --phases, not both")
    total = sum(s for _, s in args.phases)
    if total > MAX_SECONDS or not 0 < args.rate <= MAX_RATE or args.timeout <= 0 or args.max_outstanding < 1:
        ap.error(f"bounds: phases <= {MAX_SECONDS:.0f} s in all, 0 < rate <= {MAX_RATE:.0f}, timeout > 0")
    if args.start_at and not -5 < args.start_at - time.time() < 60:
        ap.error("--start-at must be within the next minute")
    # One descriptor per outstanding query: lift the soft limit (1024 by default) to what the cap needs.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = args.max_outstanding + 64
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want if hard == resource.RLIM_INFINITY else min(want, hard), hard))
    report = asyncio.run(amain(args))
    text = json.dumps(report, indent=1)
    if args.out:
        tmp = args.out + ".tmp"
        with open(tmp, "w") as f:
            f.write(text + "\n")
        os.replace(tmp, args.out)
    else:
        sys.stdout.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
