#!/usr/bin/env python3
"""CPU per cache miss: the agent (UDP to the host group, TCP to the cluster group) against dnsmasq.

Every query asks a name never asked before (`<tag>-<i>.bench.test A`), so every query is a miss that the
server forwards to an authoritative nsd on loopback (a wildcard zone, rate limiting off). dnsperf sends at
fixed rates (-Q, a large -q); the servers run pinned to --server-cpu, dnsperf and nsd to --client-cpu.
The figure is the server's CPU (utime+stime from /proc/PID/stat, and the finer sum of its threads'
/proc/PID/task/*/schedstat) over the run divided by the queries dnsperf saw answered. Before each run the
server is left idle for --idle seconds and that CPU rate is reported beside it (timers, sweeps: the part
of the figure that is not per query). Beside it too, the server core's time in interrupts and softirqs
("softirq": loopback delivery and wakeups, which the kernel may not charge to any process) and the rest
of the core's busy time ("other": other programs; on a shared machine, a run whose share stands out was
disturbed: rerun it). Each run has a
server started for it (and warmed), so that no run inherits another's state.

Several agent source trees can be measured in one go, interleaved run by run (so that a noisy minute hits
each alike), e.g. before and after a change:

  git archive HEAD | (mkdir -p /tmp/nl-before && tar -x -C /tmp/nl-before)
  .venv/bin/python hack/bench/miss.py --agent before=/tmp/nl-before --agent after=. \\
      --transport udp,tcp --qps "2000 300" --duration 20 --repeat 3

Each agent runs as `PYTHON -m nodelocal serve` in SRC with PYTHONPATH=SRC, so that SRC's package is the
one imported, not an editable install's (PYTHON: --python, default this interpreter, which needs the
agent's dependencies); the script checks that the package imported that way is SRC's. Only 127.0.0.1
and ports --port-base+1..+4 are used. Needs dnsperf, nsd, dnsmasq and taskset. Every process it starts
is stopped on exit.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HZ = os.sysconf("SC_CLK_TCK")


@dataclass
class Result:
    """One measured run."""

    server: str  # agent variant name, or dnsmasq
    transport: str  # how the server forwards: udp or tcp
    qps: int
    rep: int
    completed: int
    lost: int
    cpu_s: float  # utime+stime delta
    sched_s: float  # schedstat run-time delta
    wall_s: float
    idle_cpu_per_s: float  # CPU seconds per second while idle before the run
    other_share: float  # share of the server core's time used by other programs during the run
    irq_share: float  # share of the server core's time in interrupts and softirqs (not charged to the server)
    lat_avg: float | None
    rcodes: dict[str, int] = field(default_factory=dict)
    misses: float | None = None  # the agent's cache-miss counter delta (every query must be one)
    upstream: float | None = None  # the agent's upstream-request counter delta

    @property
    def us_per_q(self) -> float:
        return self.cpu_s / self.completed * 1e6 if self.completed else float("nan")

    @property
    def sched_us_per_q(self) -> float:
        return self.sched_s / self.completed * 1e6 if self.completed else float("nan")


# ---------------------------------------------------------------------------------------------------
# process and /proc helpers

def ticks(pid: int) -> int:
    """utime+stime of PID in clock ticks (fields 14 and 15; after the `comm` field, which may hold spaces)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    rest = stat[stat.rindex(")") + 2 :].split()
    return int(rest[11]) + int(rest[12])


def sched_ns(pid: int) -> int:
    """Nanoseconds on CPU of all of PID's threads (schedstat's first field)."""
    total = 0
    for t in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            total += int((t / "schedstat").read_text().split()[0])
    return total


def core_busy(cpu: int) -> tuple[int, int]:
    """Busy jiffies of one core (all but idle and iowait; guest time is in user already) and, of them,
    the time in interrupts and softirqs, from /proc/stat."""
    for line in Path("/proc/stat").read_text().splitlines():
        parts = line.split()
        if parts[0] == f"cpu{cpu}":
            vals = [int(v) for v in parts[1:]]
            return sum(vals) - vals[3] - vals[4] - sum(vals[8:]), vals[5] + vals[6]
    raise SystemExit(f"no cpu{cpu} in /proc/stat")


def query(qid: int, name: str) -> bytes:
    q = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    for label in name.split("."):
        q += bytes([len(label)]) + label.encode()
    return q + b"\x00\x00\x01\x00\x01"


def probe(port: int, seconds: float = 20.0) -> bool:
    """Bounded: ask a new name every 0.2 s until an answer with our ID comes back."""
    deadline = time.monotonic() + seconds
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        while time.monotonic() < deadline:
            qid = secrets.randbits(16)
            try:
                s.sendto(query(qid, f"probe-{secrets.token_hex(4)}.bench.test"), ("127.0.0.1", port))
                data, _ = s.recvfrom(4096)
                if len(data) >= 12 and data[:2] == struct.pack(">H", qid) and data[2] & 0x80:
                    return True
            except OSError:  # a timeout, or ECONNREFUSED before the server binds
                time.sleep(0.1)
    return False


def port_free(port: int) -> bool:
    """Nothing bound to 127.0.0.1:PORT, UDP or TCP (a listener; TIME-WAIT leftovers do not count)."""
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_INET, kind) as s:
            if kind == socket.SOCK_STREAM:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def scrape(url: str) -> dict[str, float]:
    """Sum the agent counters we check over their labels."""
    want = {"coredns_cache_misses_total": "misses", "nodelocal_upstream_requests_total": "upstream"}
    out = dict.fromkeys(want.values(), 0.0)
    with urllib.request.urlopen(url, timeout=5) as r:
        text = r.read().decode()
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)", line)
        if m and m.group(1) in want:
            out[want[m.group(1)]] += float(m.group(3))
    return out


class Procs:
    """Every process started, stopped on exit (TERM, then KILL)."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, cpu: int, cmd: list[str], env: dict[str, str] | None = None,
              cwd: str | None = None) -> subprocess.Popen[bytes]:
        with open(self.work / f"{name}.log", "ab") as log:  # the child holds its own descriptor
            p = subprocess.Popen(["taskset", "-c", str(cpu), *cmd], stdout=log, stderr=subprocess.STDOUT, env=env,
                                 cwd=cwd, start_new_session=True)
        self.procs.append(p)
        return p

    def stop(self, p: subprocess.Popen[bytes]) -> None:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if p in self.procs:
            self.procs.remove(p)

    def stop_all(self) -> None:
        for p in list(self.procs):
            self.stop(p)


# ---------------------------------------------------------------------------------------------------
# the servers

NSD_CONF = """server:
    ip-address: 127.0.0.1@{port}
    port: {port}
    do-ip6: no
    server-count: 1
    username: ""
    chroot: ""
    zonesdir: "{work}"
    database: ""
    zonelistfile: "{work}/nsd.zone.list"
    xfrdfile: "{work}/nsd.xfrd.state"
    xfrdir: "{work}"
    pidfile: "{work}/nsd.pid"
    logfile: "{work}/nsd.file.log"
    verbosity: 0
    minimal-responses: yes
    tcp-count: 256
    tcp-timeout: 120
    # Debian's NSD rate-limits responses per /24; every query here comes from 127.0.0.1.
    rrl-ratelimit: 0
    rrl-whitelist-ratelimit: 0
remote-control:
    control-enable: no
zone:
    name: "bench.test"
    zonefile: "{work}/bench.test.zone"
"""

ZONE = """$ORIGIN bench.test.
$TTL 300
@ IN SOA ns1.bench.test. hostmaster.bench.test. 1 7200 1800 1209600 300
@ IN NS ns1.bench.test.
ns1 IN A 192.0.2.53
* IN A 192.0.2.1
"""


def agent_yaml(transport: str, auth: int, port: int, metrics: int, health: int, page: bool = True) -> str:
    # UDP: the host group (transport udp); TCP: the cluster group (transport tcp), as the default
    # config has them. Everything else is the default config (--no-page: without the live page).
    group = "host" if transport == "udp" else "cluster"
    return f"""log_level: warning
setup: false
page: {"true" if page else "false"}
listen:
  localip: [127.0.0.1]
  port: {port}
metrics_addr: 127.0.0.1:{metrics}
health_addr: 127.0.0.1:{health}
upstreams:
  cluster:
    servers: ["127.0.0.1:{auth}"]
    transport: tcp
  host:
    servers: ["127.0.0.1:{auth}"]
    transport: udp
zones:
  ".":
    forward: [{group}]
"""


@dataclass
class Target:
    """A server to measure: its name, how it forwards and how it is started."""

    name: str
    transport: str
    cmd: list[str]
    env: dict[str, str] | None
    port: int
    metrics_url: str | None
    cwd: str | None = None  # `python -m` puts the working directory first on sys.path: the source tree


# ---------------------------------------------------------------------------------------------------
# a run

def dnsperf(work: Path, tag: str, cpu: int, port: int, names: Path, args: list[str]) -> dict[str, Any]:
    out = work / f"{tag}.dnsperf"
    with open(out, "wb") as f:
        subprocess.run(["taskset", "-c", str(cpu), "dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(names),
                        "-c", "1", "-t", "2", *args], stdout=f, stderr=subprocess.STDOUT, check=True, timeout=600)
    text = out.read_text(errors="replace")

    def grab(pattern: str) -> float | None:
        m = re.search(pattern, text, re.M)
        return float(m.group(1)) if m else None

    m = re.search(r"Response codes:(.*)", text)
    codes = {c: int(n) for c, n in re.findall(r"([A-Z]+) (\d+) \(", m.group(1))} if m else {}
    return {"completed": int(grab(r"^\s*Queries completed:\s+(\d+)") or 0),
            "lost": int(grab(r"^\s*Queries lost:\s+(\d+)") or 0),
            "lat_avg": grab(r"^\s*Average Latency \(s\):\s+([\d.]+)"), "rcodes": codes}


def write_names(path: Path, tag: str, n: int) -> Path:
    with open(path, "w") as f:
        for i in range(n):
            f.write(f"{tag}-{i}.bench.test A\n")
    return path


def measure(a: argparse.Namespace, work: Path, t: Target, pid: int, qps: int, rep: int) -> Result:
    tag = f"{t.name}-{t.transport}-{qps}-{rep}-{secrets.token_hex(3)}"
    names = write_names(work / "names.txt", tag, int(qps * a.duration * 1.2) + 1000)
    # idle: the CPU the server spends with no queries (timers, sweeps), as a rate (schedstat: ns, not ticks)
    i0, w0 = sched_ns(pid), time.monotonic()
    time.sleep(a.idle)
    idle = (sched_ns(pid) - i0) / 1e9 / (time.monotonic() - w0)
    m0 = scrape(t.metrics_url) if t.metrics_url else None
    c0, s0, b0, w0 = ticks(pid), sched_ns(pid), core_busy(a.server_cpu), time.monotonic()
    dp = dnsperf(work, tag, a.client_cpu, t.port, names,
                 ["-l", str(a.duration), "-Q", str(qps), "-q", str(a.outstanding)])
    c1, s1, b1, w1 = ticks(pid), sched_ns(pid), core_busy(a.server_cpu), time.monotonic()
    m1 = scrape(t.metrics_url) if t.metrics_url else None
    cpu = (c1 - c0) / HZ
    wall = w1 - w0
    irq = (b1[1] - b0[1]) / HZ / wall
    other = max(0.0, (b1[0] - b0[0] - (b1[1] - b0[1])) / HZ - cpu) / wall
    r = Result(t.name, t.transport, qps, rep, dp["completed"], dp["lost"], cpu, (s1 - s0) / 1e9, wall, idle,
               other, irq, dp["lat_avg"], dp["rcodes"])
    if m0 is not None and m1 is not None:
        r.misses = m1["misses"] - m0["misses"]
        r.upstream = m1["upstream"] - m0["upstream"]
    return r


def run_target(a: argparse.Namespace, work: Path, procs: Procs, t: Target, rep: int, qps: int) -> Result:
    """One run in a server started for it: what a server did before (a forwarder's sockets, a cache
    filled by another run) does not carry over from one rate to the next."""
    p = procs.start(f"{t.name}-{t.transport}", a.server_cpu, t.cmd, t.env, t.cwd)
    try:
        if not probe(t.port):
            raise SystemExit(f"{t.name} ({t.transport}) did not answer; see {work}")
        # warm: the code paths, the upstream sockets or connections, the allocator (not measured)
        warm = write_names(work / "warm.txt", f"warm-{secrets.token_hex(3)}", 3000)
        dnsperf(work, f"{t.name}-warm", a.client_cpu, t.port, warm, ["-n", "1", "-Q", "1000", "-q", "200"])
        r = measure(a, work, t, p.pid, qps, rep)
        print(f"  {r.server:>10} {r.transport} {r.qps:>5} q/s rep {rep}: {r.us_per_q:7.1f} µs/q "
              f"(schedstat {r.sched_us_per_q:6.1f}), idle {r.idle_cpu_per_s * 1e3:5.1f} ms/s, "
              f"softirq {r.irq_share:5.1%}, other {r.other_share:5.1%}, lost {r.lost}, misses {r.misses}, "
              f"upstream {r.upstream}",
              file=sys.stderr)
        if p.poll() is not None:
            raise SystemExit(f"{t.name} exited; see {work}")
        return r
    finally:
        procs.stop(p)


def summary(results: list[Result]) -> list[dict[str, Any]]:
    rows: dict[tuple[str, str, int], list[Result]] = {}
    for r in results:
        rows.setdefault((r.server, r.transport, r.qps), []).append(r)
    ref = {qps: statistics.median(x.us_per_q for x in rs) for (s, _t, qps), rs in rows.items() if s == "dnsmasq"}
    out = []
    for (server, transport, qps), rs in rows.items():
        us = [r.us_per_q for r in rs]
        med = statistics.median(us)
        out.append({"server": server, "transport": transport, "qps": qps, "runs": len(rs),
                    "us_per_q_median": med, "us_per_q_min": min(us), "us_per_q_max": max(us),
                    "sched_us_per_q_median": statistics.median(r.sched_us_per_q for r in rs),
                    "idle_ms_per_s": statistics.median(r.idle_cpu_per_s for r in rs) * 1e3,
                    "other_share_max": max(r.other_share for r in rs),
                    "irq_share_median": statistics.median(r.irq_share for r in rs),
                    "lost": sum(r.lost for r in rs),
                    "lat_avg_ms": statistics.median((r.lat_avg or 0.0) for r in rs) * 1e3,
                    "vs_dnsmasq": med / ref[qps] if ref.get(qps) else None})
    return out


def print_table(rows: list[dict[str, Any]]) -> None:
    print(f"{'server':>10} {'fwd':>4} {'q/s':>5} {'runs':>4} {'µs/q med':>9} {'[min-max]':>15} {'sched':>7} "
          f"{'idle ms/s':>9} {'softirq':>7} {'other':>6} {'lost':>5} {'lat ms':>7} {'x dnsmasq':>9}")
    for r in sorted(rows, key=lambda r: (-r["qps"], r["transport"], r["server"])):
        ratio = f"{r['vs_dnsmasq']:.2f}" if r["vs_dnsmasq"] else "-"
        print(f"{r['server']:>10} {r['transport']:>4} {r['qps']:>5} {r['runs']:>4} {r['us_per_q_median']:9.1f} "
              f"{'[' + format(r['us_per_q_min'], '.1f') + '-' + format(r['us_per_q_max'], '.1f') + ']':>15} "
              f"{r['sched_us_per_q_median']:7.1f} {r['idle_ms_per_s']:9.2f} {r['irq_share_median']:7.1%} "
              f"{r['other_share_max']:6.1%} "
              f"{r['lost']:>5} {r['lat_avg_ms']:7.2f} {ratio:>9}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--agent", action="append", default=[], metavar="NAME=SRC",
                    help="an agent source tree to measure (repeatable); default agent=<this repository>")
    ap.add_argument("--python", default=sys.executable, help="interpreter that runs the agent")
    ap.add_argument("--transport", default="udp", help="udp, tcp or udp,tcp: how the agent forwards")
    ap.add_argument("--no-dnsmasq", action="store_true", help="leave out dnsmasq (the reference, UDP)")
    ap.add_argument("--no-page", action="store_true",
                    help="agents without the live page (page: false): what its sampling costs per query")
    ap.add_argument("--qps", default="2000 300", help="offered loads, one run each")
    ap.add_argument("--duration", type=int, default=20, help="seconds per run")
    ap.add_argument("--idle", type=float, default=2.0, help="seconds of idle CPU measured before each run")
    ap.add_argument("--repeat", type=int, default=3, help="rounds; each round runs every server once")
    ap.add_argument("--outstanding", type=int, default=1000, help="dnsperf -q")
    ap.add_argument("--server-cpu", type=int, default=0)
    ap.add_argument("--client-cpu", type=int, default=1)
    ap.add_argument("--port-base", type=int, default=15500, help="bench.sh uses 15300, bench_pods.sh 15400")
    ap.add_argument("--json", help="write every run and the summary here")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    a = ap.parse_args()
    a.qps = [int(q) for q in a.qps.replace(",", " ").split()]
    for tool in ("dnsperf", "nsd", "dnsmasq", "taskset"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found")
    here = Path(__file__).resolve().parent
    agents = [tuple(x.split("=", 1)) for x in a.agent] or [("agent", str(here.parent.parent))]
    work = Path(tempfile.mkdtemp(prefix="nodelocal-miss."))
    procs = Procs(work)
    auth, port = a.port_base + 1, a.port_base + 2
    metrics, health = a.port_base + 3, a.port_base + 4
    taken = [p for p in (auth, port, metrics, health) if not port_free(p)]
    if taken:
        raise SystemExit(f"ports in use: {taken}; pick others with --port-base")

    targets: list[Target] = []
    for name, src in agents:
        tree = str(Path(src).resolve())
        if not (Path(tree) / "nodelocal" / "__main__.py").exists():
            raise SystemExit(f"{src}: no nodelocal package there")
        env = dict(os.environ, PYTHONPATH=tree)
        where = subprocess.run([a.python, "-c", "import nodelocal; print(nodelocal.__file__)"], env=env, cwd=tree,
                               capture_output=True, text=True, check=True).stdout.strip()
        if not where.startswith(tree + os.sep):
            raise SystemExit(f"{name}: {a.python} imports nodelocal from {where}, not from {tree}")
        print(f"{name}: {where}", file=sys.stderr)
        for tr in a.transport.split(","):
            conf = work / f"{name}-{tr}.yaml"
            conf.write_text(agent_yaml(tr, auth, port, metrics, health, not a.no_page))
            targets.append(Target(name, tr, [a.python, "-m", "nodelocal", "serve", "--config", str(conf)], env, port,
                                  f"http://127.0.0.1:{metrics}/metrics", tree))
    if not a.no_dnsmasq:
        targets.append(Target("dnsmasq", "udp", ["dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--pid-file=",
                                                 "--no-resolv", "--no-hosts", f"--server=127.0.0.1#{auth}",
                                                 "--port", str(port), "--listen-address", "127.0.0.1",
                                                 "--bind-interfaces", "--cache-size=10000", "--dns-forward-max=1000"],
                              None, port, None))

    (work / "bench.test.zone").write_text(ZONE)
    (work / "nsd.conf").write_text(NSD_CONF.format(port=auth, work=work))
    results: list[Result] = []
    try:
        procs.start("nsd", a.client_cpu, ["nsd", "-d", "-c", str(work / "nsd.conf")])
        if not probe(auth):
            raise SystemExit(f"nsd did not answer; see {work}")
        for rep in range(a.repeat):
            for qps in a.qps:
                for t in targets:
                    results.append(run_target(a, work, procs, t, rep, qps))
    finally:
        procs.stop_all()
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"outputs kept in {work}", file=sys.stderr)
    rows = summary(results)
    print(f"\nCPU µs per miss (dnsperf -Q, {a.duration} s runs, -q {a.outstanding}); server on CPU {a.server_cpu}, "
          f"dnsperf and nsd on CPU {a.client_cpu}; {a.repeat} rounds")
    print_table(rows)
    if a.json:
        Path(a.json).write_text(json.dumps({"runs": [asdict(r) | {"us_per_q": r.us_per_q} for r in results],
                                            "summary": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
