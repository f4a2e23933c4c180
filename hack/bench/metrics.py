#!/usr/bin/env python3
"""What counting costs on the cache-hit path: the agent's hit path with and without its metrics code.

The variants are built from the shipped UDPServer.datagram_received itself (so they follow every change
to it): its source is parsed and statements are removed before it is compiled again.

  shipped     the hit path as it ships, sampling one datagram in --every for the live page (the rate the
              agent picks at TARGET samples/s: every=100 at 50k QPS)
  no-sampling the shipped code minus the live-page sampling (the countdown and the sampled branch)
  bare        minus every counter too: each `x += 1` of the hot path (queries, the entry's and the
              partition's hits, rcodes); what is left is the work a hit needs
  floor       hack/bench/floor.py's handler: a dict lookup and a send, the least Python can do per hit

Two measurements:
  1. in process (default): datagram_received called in a loop on a fake transport whose sendto is a
     C no-op, so only Python work is timed; rounds interleave the variants and the best round counts.
     This isolates the metrics code but leaves out the syscalls and the event loop, which are most of a
     real hit; so its percentages are of the Python part only, an upper bound of the real share.
  2. --dnsperf: the real agent (`nodelocal serve`, uvloop, real sockets) per variant, pinned to
     --server-cpu with dnsperf on --client-cpu at --qps for --duration seconds, all names cached; the
     agent's CPU time (utime+stime) per answered query, variants alternated --rounds times. This is the
     share of the whole hit path the issue asks about. Needs dnsperf, dnsmasq and taskset.

Run: .venv/bin/python hack/bench/metrics.py [--names 1000] [--passes 200] [--rounds 5] [--every 100]
                                            [--dnsperf --qps 20000 --duration 8] [--json FILE]
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import inspect
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent  # hack/bench/: floor.py
sys.path.insert(0, str(HERE.parent.parent))  # the repository: nodelocal
sys.path.insert(0, str(HERE))

import dns.flags  # noqa: E402
import dns.message  # noqa: E402
import dns.rrset  # noqa: E402

from nodelocal.cache.policy import TTLPolicy, entry_for  # noqa: E402
from nodelocal.cache.store import SUCCESS, Store  # noqa: E402
from nodelocal.config import load  # noqa: E402
from nodelocal.observe.live import Live  # noqa: E402
from nodelocal.observe.meters import Meters  # noqa: E402
from nodelocal.resolve.resolver import Resolver  # noqa: E402
from nodelocal.server import udp  # noqa: E402

VARIANTS = ("shipped", "no-sampling", "bare")
CLIENT = ("10.1.2.3", 40000)


# --------------------------------------------------------------------------------------------------
# variants of the hot path, derived from its source

def _is_sampling(node: ast.stmt) -> bool:
    """The live-page sampling: statements that read or write `countdown`."""
    return any(isinstance(n, ast.Attribute) and n.attr == "countdown" for n in ast.walk(node))


def _is_count(node: ast.stmt) -> bool:
    """A counter: `x += 1` (the hot path's other augmented assignments, `key += ...`, do real work)."""
    return (isinstance(node, ast.AugAssign) and isinstance(node.op, ast.Add)
            and isinstance(node.value, ast.Constant) and node.value.value == 1)


def _strip(body: list[ast.stmt], drop: Callable[[ast.stmt], bool]) -> list[ast.stmt]:
    out = []
    for stmt in body:
        if drop(stmt):
            continue
        for field in ("body", "orelse"):
            inner = getattr(stmt, field, None)
            if isinstance(inner, list) and inner:
                setattr(stmt, field, _strip(inner, drop) or [ast.Pass()])
        out.append(stmt)
    return out


def variant_method(name: str) -> tuple[Callable[..., None], list[str]]:
    """datagram_received with the statements of variant `name` removed, and those statements' source."""
    src = textwrap.dedent(inspect.getsource(udp.UDPServer.datagram_received))
    tree = ast.parse(src)
    func = tree.body[0]
    assert isinstance(func, ast.FunctionDef)
    removed: list[str] = []

    def drop(stmt: ast.stmt) -> bool:
        hit = (name in ("no-sampling", "bare") and _is_sampling(stmt)) or (name == "bare" and _is_count(stmt))
        if hit:
            removed.append(ast.get_source_segment(src, stmt) or ast.dump(stmt))
        return hit

    func.body = _strip(func.body, drop)
    ast.fix_missing_locations(tree)
    namespace: dict[str, Any] = {}
    exec(compile(tree, f"<{name} datagram_received>", "exec"), vars(udp), namespace)
    return namespace["datagram_received"], removed


def server_class(name: str) -> type[udp.UDPServer]:
    """A subclass holding the variant; "shipped" is recompiled the same way, so that all compare alike."""
    method, _removed = variant_method(name)
    return type(f"UDPServer_{name.replace('-', '_')}", (udp.UDPServer,), {"datagram_received": method})


# --------------------------------------------------------------------------------------------------
# 1. in process

class NullTransport:
    """sendto is dict.get: a C call that keeps nothing."""

    def __init__(self) -> None:
        self.sendto = {}.get

    def is_closing(self) -> bool:
        return False


def make_queries(n: int) -> list[bytes]:
    return [dns.message.make_query(f"n{i}.bench.test", "A").to_wire() for i in range(n)]


def cached_store(queries: list[bytes], now: float) -> Store:
    store = Store(1 << 28, now=lambda: now)
    part = store.partition(".", SUCCESS, len(queries) + 10)
    policy = TTLPolicy(min_ttl=0, success_max_ttl=3600)
    for wire in queries:
        q = dns.message.from_wire(wire)
        r = dns.message.make_response(q)
        r.flags |= dns.flags.RA
        r.answer.append(dns.rrset.from_text(q.question[0].name, 3600, "IN", "A", "192.0.2.1"))
        key = wire[12:] + b""  # no EDNS, RD set: the key is the question itself
        e, ok = entry_for(key, r.to_wire(), False, now, policy)
        assert ok
        store.put(e, part)
    return store


def in_process(names: int, passes: int, rounds: int, every: int) -> dict[str, Any]:
    now = 1000.0
    queries = make_queries(names)
    store = cached_store(queries, now)
    cfg = load(None, {}, env={}, resolv_conf="/nonexistent")
    handlers: dict[str, Callable[[bytes, Any], None]] = {}
    servers = {}
    for name in VARIANTS:
        meters = Meters()
        resolver = Resolver(cfg, store, meters.cache, meters.resolve, now=lambda: now)
        # steady state at a fixed rate: `every` as tick() would set it, no burst back-off (target huge)
        live = Live(meters, store, node="bench", now=lambda: now, target=1 << 40)
        srv = server_class(name)(resolver, store, meters.server, 4096, now=lambda: now, live=live)
        live.every = every
        live.register(srv)
        srv.connection_made(NullTransport())  # type: ignore[arg-type]
        handlers[name] = srv.datagram_received
        servers[name] = (srv, live)
    import floor as floor_server

    floor = floor_server.Floor()
    floor.connection_made(NullTransport())  # type: ignore[arg-type]
    handlers["floor"] = floor.datagram_received

    # one warm pass each; every query must be a hit on the synchronous path
    for name, h in handlers.items():
        for q in queries:
            h(q, CLIENT)
        if name in servers:
            srv, live = servers[name]
            assert not srv.tasks, f"{name}: a query left the hot path"
            live.ring.clear()

    best: dict[str, float] = {}
    for _ in range(rounds):
        for name, h in handlers.items():
            t0 = time.perf_counter_ns()
            for _p in range(passes):
                for q in queries:
                    h(q, CLIENT)
            ns = (time.perf_counter_ns() - t0) / (passes * len(queries))
            best[name] = min(best.get(name, ns), ns)
            if name in servers:
                servers[name][1].ring.clear()
    return {"ns_per_hit": best, "names": names, "passes": passes, "rounds": rounds, "every": every,
            "removed": {n: variant_method(n)[1] for n in VARIANTS if n != "shipped"}}


# --------------------------------------------------------------------------------------------------
# 2. dnsperf against the real agent

def serve_variant(variant: str, argv: list[str]) -> int:
    """Child process: the real `nodelocal serve`, with the variant's hot path swapped in."""
    if variant != "shipped":
        method, _removed = variant_method(variant)
        udp.UDPServer.datagram_received = method  # type: ignore[method-assign]
    from nodelocal.cli.commands import main

    return main(["serve", *argv])


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def _answers(port: int, name: str = "n0.bench.test") -> bool:
    import dns.query

    try:
        dns.query.udp(dns.message.make_query(name, "A"), "127.0.0.1", port=port, timeout=0.3)
        return True
    except Exception:
        return False


def _wait(cond: Callable[[], bool], timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.1)
    return False


def _completed(out: str) -> int:
    for line in out.splitlines():
        if "Queries completed:" in line:
            return int(line.split()[2])
    raise RuntimeError(f"dnsperf printed no completed count:\n{out[-500:]}")


def with_dnsperf(names: int, qps: int, duration: int, rounds: int, server_cpu: int, client_cpu: int,
                 ) -> dict[str, Any]:
    for tool in ("dnsperf", "dnsmasq", "taskset"):
        if shutil.which(tool) is None:
            raise SystemExit(f"bench/metrics.py: {tool} not found (hack/setup.sh installs it)")
    work = Path(tempfile.mkdtemp(prefix="nodelocal-bench-metrics."))
    names_file = work / "names.txt"
    names_file.write_text("".join(f"n{i}.bench.test A\n" for i in range(names)))
    cfg = work / "agent.yaml"
    cfg.write_text(textwrap.dedent(f"""\
        log_level: warning
        zones:
          ".":
            forward: [host]
            cache: {{success_max_ttl: 3600, success_capacity: {names + 1000}}}
        """))
    up_port = _free_port()
    procs: list[subprocess.Popen[str]] = []
    cpu: dict[str, list[float]] = {v: [] for v in VARIANTS}
    try:
        up = subprocess.Popen(
            ["taskset", "-c", str(client_cpu), "dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--pid-file=",
             "--no-resolv", "--no-hosts", f"--port={up_port}", "--listen-address=127.0.0.1", "--bind-interfaces",
             "--address=/bench.test/192.0.2.1", "--local-ttl=3600"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)
        procs.append(up)
        if not _wait(lambda: _answers(up_port), 10):
            raise SystemExit("bench/metrics.py: dnsmasq did not answer")
        for r in range(rounds):
            for variant in VARIANTS if r % 2 == 0 else tuple(reversed(VARIANTS)):
                port, mport = _free_port(), _free_port()
                agent = subprocess.Popen(
                    ["taskset", "-c", str(server_cpu), sys.executable, __file__, "--serve", variant, "--",
                     "--dev", "--config", str(cfg), "--port", str(port), "--metrics-addr", f"127.0.0.1:{mport}",
                     "--health-addr", f"127.0.0.1:{mport}", "--cluster-dns", f"127.0.0.1:{up_port}",
                     "--upstream", f"127.0.0.1:{up_port}"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                procs.append(agent)
                try:
                    if not _wait(lambda p=port: _answers(p), 15):  # type: ignore[misc]
                        raise SystemExit(f"bench/metrics.py: agent ({variant}) did not answer")
                    base = ["taskset", "-c", str(client_cpu), "dnsperf", "-s", "127.0.0.1", "-p", str(port),
                            "-d", str(names_file), "-t", "2", "-c", "1", "-q", "200"]
                    subprocess.run([*base, "-n", "2"], capture_output=True, text=True, timeout=120, check=True)
                    # warm-up at the measured rate (the agent settles its sampling rate), then measure
                    subprocess.run([*base, "-l", "3", "-Q", str(qps)], capture_output=True, text=True,
                                   timeout=60, check=True)
                    t0 = _ticks(agent.pid)
                    res = subprocess.run([*base, "-l", str(duration), "-Q", str(qps)], capture_output=True,
                                         text=True, timeout=duration + 60, check=True)
                    t1 = _ticks(agent.pid)
                    done = _completed(res.stdout)
                    us = (t1 - t0) / os.sysconf("SC_CLK_TCK") / max(done, 1) * 1e6
                    cpu[variant].append(us)
                    print(f"bench/metrics.py: round {r + 1} {variant}: {us:.2f} µs CPU per hit ({done} queries)",
                          file=sys.stderr)
                finally:
                    agent.send_signal(signal.SIGTERM)
                    try:
                        agent.wait(10)
                    except subprocess.TimeoutExpired:
                        agent.kill()
                        agent.wait()
                    procs.remove(agent)
    finally:
        for p in procs:
            p.terminate()
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)
    return {"us_per_hit": {v: statistics.median(xs) for v, xs in cpu.items()},
            "all_us_per_hit": cpu, "qps": qps, "duration": duration, "rounds": rounds, "names": names}


# --------------------------------------------------------------------------------------------------

def report(inproc: dict[str, Any] | None, perf: dict[str, Any] | None) -> str:
    lines = []
    if inproc is not None:
        ns = inproc["ns_per_hit"]
        lines.append(f"in process: {inproc['names']} cached names x {inproc['passes']} passes, best of "
                     f"{inproc['rounds']} rounds, sampling 1 in {inproc['every']}")
        for v in (*VARIANTS, "floor"):
            lines.append(f"  {v:<12} {ns[v]:8.0f} ns per hit (Python only)")
        metrics = ns["shipped"] - ns["bare"]
        sampling = ns["shipped"] - ns["no-sampling"]
        lines.append(f"  metrics cost {metrics:.0f} ns = {100 * metrics / ns['shipped']:.1f}% of the Python hit path"
                     f" (of which live-page sampling {sampling:.0f} ns)")
        for v, removed in inproc["removed"].items():
            lines.append(f"  {v} removes: " + "; ".join(" ".join(r.split()) for r in removed))
    if perf is not None:
        us = perf["us_per_hit"]
        lines.append(f"dnsperf: {perf['qps']} QPS offered for {perf['duration']} s, median of {perf['rounds']} "
                     "rounds, agent CPU per answered query")
        for v in VARIANTS:
            runs = ", ".join(f"{x:.2f}" for x in perf["all_us_per_hit"][v])
            lines.append(f"  {v:<12} {us[v]:6.2f} µs per hit   ({runs})")
        metrics = us["shipped"] - us["bare"]
        lines.append(f"  metrics cost {metrics:.2f} µs = {100 * metrics / us['shipped']:.1f}% of the whole hit path")
        if inproc is not None:
            ns = inproc["ns_per_hit"]
            est = (ns["shipped"] - ns["bare"]) / 1000
            lines.append(f"  (in-process difference {est:.2f} µs = {100 * est / us['shipped']:.1f}% of the measured"
                         " whole hit path: the steadier figure)")
    return "\n".join(lines)


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--serve":
        argv = sys.argv[3:]
        return serve_variant(sys.argv[2], argv[1:] if argv[:1] == ["--"] else argv)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--names", type=int, default=1000)
    p.add_argument("--passes", type=int, default=200, help="in process: passes over the names per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--every", type=int, default=100, help="in process: sample one datagram in this many")
    p.add_argument("--dnsperf", action="store_true", help="also measure the real agent with dnsperf")
    p.add_argument("--no-inprocess", action="store_true")
    p.add_argument("--qps", type=int, default=20000)
    p.add_argument("--duration", type=int, default=8)
    p.add_argument("--server-cpu", type=int, default=0)
    p.add_argument("--client-cpu", type=int, default=1)
    p.add_argument("--json", metavar="FILE")
    a = p.parse_args()
    if not (1 <= a.names <= 100000 and 1 <= a.passes <= 10000 and 1 <= a.rounds <= 50 and a.every >= 1
            and 1 <= a.duration <= 120 and a.qps >= 1):
        p.error("out of range")
    asyncio.set_event_loop(asyncio.new_event_loop())  # UDPServer creates no task on hits, but be safe
    inproc = None if a.no_inprocess else in_process(a.names, a.passes, a.rounds, a.every)
    perf = (with_dnsperf(a.names, a.qps, a.duration, a.rounds, a.server_cpu, a.client_cpu)
            if a.dnsperf else None)
    print(report(inproc, perf))
    if a.json:
        Path(a.json).write_text(json.dumps({"in_process": inproc, "dnsperf": perf}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
