#!/usr/bin/env python3
"""hack/memflood.py — a random-subdomain flood through the cache: does the agent's RSS stay under the
cache's byte budget plus a fixed overhead, whatever the rate and the duration?

    .venv/bin/python hack/memflood.py [--rate 2000] [--seconds 60] [--cache-mib 16] [--json FILE]

The agent runs as `nodelocal serve` in a process of its own (127.0.0.1, a free port, no setup, the live
page on), with cache.max_bytes = --cache-mib. Its upstream is a server in this process (UDP on
127.0.0.1) that answers every name under flood.test. with NXDOMAIN and an SOA (TTL 30 s: each entry is
kept for the whole cache lifetime a name gets). The client sends a new random name per query, at --rate
queries a second for --seconds, and counts the answers. Each second the agent's RSS (/proc/PID/status) and
its nodelocal_cache_bytes and coredns_cache_entries (from /metrics) are read. Bounded in count and time;
loopback only. The report: per 5 s, then the RSS before the flood, its peak, the budget and the peak less
the budget (the overhead).
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import string
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from localproc import free_port, rss_kib  # hack/localproc.py: hack/ is not a package, its folder is on sys.path

ZONE = b"\x05flood\x04test\x00"


class Upstream:
    """NXDOMAIN with an SOA for every name under flood.test.; NOERROR and nothing else for the rest."""

    def __init__(self) -> None:
        self.port = free_port()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", self.port))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.settimeout(0.2)
        self.stop = threading.Event()
        self.answered = 0
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        soa_tail = struct.pack(">IIIII", 1, 3600, 600, 86400, 30)
        while not self.stop.is_set():
            try:
                q, addr = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            qend = 12
            while qend < len(q) and q[qend]:
                qend += 1 + q[qend]
            qend += 5
            if qend > len(q):
                continue
            zone_at = q.lower().find(ZONE, 12)
            flags = 0x8180 | (q[2] & 1) << 8
            if zone_at < 0:
                out = q[:2] + struct.pack(">HHHHH", flags, 1, 0, 0, 0) + q[12:qend]
            else:
                zp = struct.pack(">H", 0xC000 | zone_at)
                rdata = b"\x02ns" + zp + b"\x04host" + zp + soa_tail
                soa = zp + struct.pack(">HHIH", 6, 1, 30, len(rdata)) + rdata
                out = q[:2] + struct.pack(">HHHHH", flags | 3, 1, 0, 1, 0) + q[12:qend] + soa
            self.sock.sendto(out, addr)
            self.answered += 1

    def close(self) -> None:
        self.stop.set()
        self.thread.join(2)
        self.sock.close()


def drain(sock: socket.socket) -> int:
    """Read every reply waiting on the non-blocking client socket; how many there were."""
    n = 0
    while True:
        try:
            sock.recv(4096)
        except BlockingIOError:
            return n
        n += 1


def metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        body = r.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in body.splitlines()
               if line.startswith(name + " ") or line.startswith(name + "{"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--rate", type=int, default=2000, help="queries a second, each for a new name (default 2000)")
    p.add_argument("--seconds", type=float, default=60.0, help="length of the flood (default 60)")
    p.add_argument("--cache-mib", type=int, default=16, help="cache.max_bytes in MiB (default 16)")
    p.add_argument("--memory-limit-mib", type=int, default=-1,
                   help="cache.memory_limit in MiB (default: -1, no shedding; 0: the cgroup's)")
    p.add_argument("--json", help="write the report here too")
    args = p.parse_args(argv)
    if args.rate * args.seconds > 5_000_000:
        raise SystemExit("memflood: more than 5,000,000 queries: lower --rate or --seconds")
    up = Upstream()
    port, mport = free_port(), free_port()
    tmp = tempfile.TemporaryDirectory(prefix="nodelocal-memflood-")
    limit = args.memory_limit_mib if args.memory_limit_mib <= 0 else args.memory_limit_mib << 20
    group = {"servers": [f"127.0.0.1:{up.port}"], "transport": "udp", "try_timeout": 1.0}
    cfg = {"listen": {"localip": ["127.0.0.1"], "port": port}, "setup": False,
           "metrics_addr": f"127.0.0.1:{mport}", "health_addr": f"127.0.0.1:{free_port()}",
           "upstreams": {"cluster": group, "host": group},
           "cache": {"max_bytes": args.cache_mib << 20, "memory_limit": limit}}
    path = Path(tmp.name) / "nodelocal.yaml"
    path.write_text(json.dumps(cfg))
    log = (Path(tmp.name) / "agent.log").open("wb")
    agent = subprocess.Popen([str(Path(sys.executable).with_name("nodelocal")), "serve", "--config", str(path),
                              "--log-level", "warning"], stdout=log, stderr=subprocess.STDOUT)
    samples: list[dict[str, Any]] = []
    try:
        for _ in range(100):
            try:
                metric(mport, "nodelocal_cache_bytes")
                break
            except OSError:
                time.sleep(0.1)
        time.sleep(1.0)
        rss0 = rss_kib(agent.pid)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        sock.setblocking(False)
        rng = random.Random(1)
        letters = string.ascii_lowercase + string.digits
        sent = answered = 0
        t0 = time.monotonic()
        next_sample = t0 + 1.0
        while True:
            now = time.monotonic()
            if now - t0 >= args.seconds:
                break
            due = int((now - t0) * args.rate) - sent
            for _ in range(min(due, 500)):
                name = "".join(rng.choices(letters, k=12)).encode()
                q = struct.pack(">HHHHHH", rng.getrandbits(16), 0x0100, 1, 0, 0, 0) + bytes([12]) + name + ZONE \
                    + b"\x00\x01\x00\x01"
                sock.sendto(q, ("127.0.0.1", port))
                sent += 1
            answered += drain(sock)
            if now >= next_sample:
                next_sample += 1.0
                samples.append({"t": round(now - t0, 1), "sent": sent, "answered": answered,
                                "rss_mib": round(rss_kib(agent.pid) / 1024, 1),
                                "cache_mib": round(metric(mport, "nodelocal_cache_bytes") / 2**20, 2),
                                "entries": int(metric(mport, "coredns_cache_entries"))})
            if due <= 0:
                time.sleep(0.002)
        time.sleep(2.0)
        answered += drain(sock)
        rss1 = rss_kib(agent.pid)
        shed = metric(mport, "nodelocal_memory_shed_total")
        alive = agent.poll() is None
    finally:
        agent.terminate()
        try:
            agent.wait(15)
        except subprocess.TimeoutExpired:
            agent.kill()
            agent.wait()
        up.close()
        log.close()
    peak = max([rss0, rss1] + [int(s["rss_mib"] * 1024) for s in samples])
    report = {
        "rate": args.rate, "seconds": args.seconds, "sent": sent, "answered": answered,
        "upstream_answered": up.answered, "cache_budget_mib": args.cache_mib, "alive_at_end": alive,
        "rss_mib_before": round(rss0 / 1024, 1), "rss_mib_peak": round(peak / 1024, 1),
        "rss_mib_after": round(rss1 / 1024, 1), "overhead_mib": round(peak / 1024 - args.cache_mib, 1),
        "memory_shed_total": shed, "samples": samples,
    }
    for s in samples[4::5]:
        print(f"t={s['t']:>6}s sent={s['sent']:>8} answered={s['answered']:>8} rss={s['rss_mib']:>6} MiB "
              f"cache={s['cache_mib']:>6} MiB entries={s['entries']}", file=sys.stderr)
    text = json.dumps({k: v for k, v in report.items() if k != "samples"}, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    tmp.cleanup()
    return 0 if alive else 1


if __name__ == "__main__":
    sys.exit(main())
