#!/usr/bin/env python3
"""Helpers for hack/bench.sh: query files, a readiness probe, metric snapshots, and the final report.

Standard library only (the agent's own packages are not needed), so it runs under any python3.

  hack/bench/report.py names N FILE           write N distinct `nI.bench.test A` lines
  hack/bench/report.py portfree PORT...       exit 1 (naming it) if a 127.0.0.1 UDP or TCP port is taken
  hack/bench/report.py probe PORT [SECONDS]   wait until 127.0.0.1:PORT answers an A query (bounded)
  hack/bench/report.py metrics URL FILE       save a /metrics scrape (bounded)
  hack/bench/report.py report DIR [--json F]  read DIR/facts and the saved outputs, print the table
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import struct
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

SERVERS = ("agent", "unbound", "dnsmasq", "floor")


# ---------------------------------------------------------------------------------------------------
# small commands used while the benchmark runs

def cmd_names(n: int, path: str) -> int:
    with open(path, "w") as f:
        for i in range(n):
            f.write(f"n{i}.bench.test A\n")
    return 0


def cmd_portfree(ports: list[int]) -> int:
    for port in ports:
        for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
            s = socket.socket(socket.AF_INET, kind)
            if kind == socket.SOCK_STREAM:  # a listener counts, TIME-WAIT leftovers of a last run do not
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError as e:
                name = "udp" if kind == socket.SOCK_DGRAM else "tcp"
                print(f"port {name} 127.0.0.1:{port} is taken: {e.strerror}", file=sys.stderr)
                return 1
            finally:
                s.close()
    return 0


def _query(qid: int, name: str) -> bytes:
    q = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    for label in name.split("."):
        q += bytes([len(label)]) + label.encode()
    return q + b"\x00\x00\x01\x00\x01"


def cmd_probe(port: int, seconds: float) -> int:
    """Bounded: one query every 0.2 s until an answer with our ID comes back or time is up."""
    deadline = time.monotonic() + seconds
    qid = 0x4242
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        while time.monotonic() < deadline:
            try:
                s.sendto(_query(qid, "probe.bench.test"), ("127.0.0.1", port))
                data, _ = s.recvfrom(4096)
                if len(data) >= 12 and data[:2] == struct.pack(">H", qid) and data[2] & 0x80:
                    return 0
            except OSError:  # timeout, or ECONNREFUSED before the server binds
                time.sleep(0.1)
    print(f"no DNS answer from 127.0.0.1:{port} within {seconds:g}s", file=sys.stderr)
    return 1


def cmd_metrics(url: str, path: str) -> int:
    with urllib.request.urlopen(url, timeout=5) as r:
        Path(path).write_bytes(r.read())
    return 0


# ---------------------------------------------------------------------------------------------------
# parsing

def parse_dnsperf(path: Path) -> dict[str, Any]:
    """The summary dnsperf prints, plus latency percentiles from its -v lines when present."""
    text = path.read_text(errors="replace") if path.exists() else ""
    out: dict[str, Any] = {}

    def grab(pattern: str, key: str, conv: type = float) -> None:
        m = re.search(pattern, text, re.M)
        out[key] = conv(m.group(1)) if m else None

    grab(r"^\s*Queries sent:\s+(\d+)", "sent", int)
    grab(r"^\s*Queries completed:\s+(\d+)", "completed", int)
    grab(r"^\s*Queries lost:\s+(\d+)", "lost", int)
    grab(r"^\s*Queries interrupted:\s+(\d+)", "interrupted", int)
    grab(r"^\s*Run time \(s\):\s+([\d.]+)", "runtime")
    grab(r"^\s*Queries per second:\s+([\d.]+)", "qps")
    grab(r"^\s*Average Latency \(s\):\s+([\d.]+)", "lat_avg")
    grab(r"^\s*Average Latency \(s\):.*max ([\d.]+)\)", "lat_max")
    m = re.search(r"^\s*Response codes:\s+(.*)$", text, re.M)
    codes: dict[str, int] = {}
    if m:
        for code, n in re.findall(r"([A-Z]+) (\d+) \(", m.group(1)):
            codes[code] = int(n)
    out["rcodes"] = codes
    # -v: one line per answered query, "> NOERROR n1.bench.test A 0.000437"
    lats = sorted(float(x) for x in re.findall(r"^> \S+ \S+ \S+ ([\d.]+)$", text, re.M))
    out["verbose_lines"] = len(lats)
    if lats:
        out["lat_p50"] = lats[len(lats) // 2]
        out["lat_p99"] = lats[min(len(lats) - 1, int(len(lats) * 0.99))]
        out["lat_p999"] = lats[min(len(lats) - 1, int(len(lats) * 0.999))]
    else:
        out["lat_p50"] = out["lat_p99"] = out["lat_p999"] = None
    return out


def parse_metrics(path: Path) -> dict[str, float]:
    """Sum the agent's series we check, over their labels."""
    want = {
        "coredns_cache_hits_total": "hits",
        "coredns_cache_misses_total": "misses",
        "coredns_cache_entries": "entries",
        "coredns_dns_requests_total": "requests",
        "nodelocal_cache_bytes": "cache_bytes",
    }
    out = {v: 0.0 for v in want.values()}
    out["servfail"] = out["refused"] = 0.0
    if not path.exists():
        return {}
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            continue
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)", line)
        if not m:
            continue
        name, labels, value = m.group(1), m.group(2) or "", float(m.group(3))
        if name in want:
            out[want[name]] += value
        if name == "coredns_dns_responses_total":
            if 'rcode="SERVFAIL"' in labels:
                out["servfail"] += value
            elif 'rcode="REFUSED"' in labels:
                out["refused"] += value
    return out


def read_facts(path: Path) -> dict[str, dict[str, str]]:
    """`SERVER KEY VALUE` lines, written by bench.sh as it goes."""
    facts: dict[str, dict[str, str]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            parts = line.split(None, 2)
            if len(parts) == 3:
                facts.setdefault(parts[0], {})[parts[1]] = parts[2]
    return facts


# ---------------------------------------------------------------------------------------------------
# the report

def _num(d: dict[str, str], key: str) -> float | None:
    v = d.get(key)
    try:
        return float(v) if v is not None else None
    except ValueError:
        return None


def phases_of(run: dict[str, str]) -> list[str]:
    """fixed<QPS> for each offered load, then sat."""
    return [f"fixed{q}" for q in run.get("qps", "").split(",") if q] + ["sat"]


def build(workdir: Path) -> dict[str, Any]:
    facts = read_facts(workdir / "facts")
    run = facts.get("run", {})
    hz = float(run.get("clk_tck", "100"))
    phases = phases_of(run)
    results: dict[str, dict[str, Any]] = {}
    for srv in SERVERS:
        f = facts.get(srv)
        if f is None:
            continue
        r: dict[str, Any] = {"version": f.get("version", "")}
        for phase in phases:
            dp = parse_dnsperf(workdir / f"{srv}.{phase}.out")
            t0, t1 = _num(f, f"{phase}.ticks0"), _num(f, f"{phase}.ticks1")
            w0, w1 = _num(f, f"{phase}.wall0"), _num(f, f"{phase}.wall1")
            cpu_s = (t1 - t0) / hz if t0 is not None and t1 is not None else None
            done = dp.get("completed")
            ph: dict[str, Any] = dict(dp)
            ph["server_cpu_s"] = cpu_s
            ph["cpu_us_per_query"] = (cpu_s * 1e6 / done) if cpu_s is not None and done else None
            wall = (w1 - w0) if w0 is not None and w1 is not None else None
            ph["server_cpu_util"] = (cpu_s / wall) if cpu_s is not None and wall else None
            ph["udp_rcvbuf_errors"] = _num(f, f"{phase}.rcvbuf_errors")
            # the server core as a whole: /proc/stat user nice system idle iowait irq softirq steal ...
            # (tick-sampled, so coarse for bursty loads: kept in the JSON, used to spot other programs)
            c0, c1 = f.get(f"{phase}.core0"), f.get(f"{phase}.core1")
            if c0 and c1:
                d = [int(b) - int(a) for a, b in zip(c0.split(), c1.split(), strict=False)]
                busy = sum(d[:8]) - d[3] - d[4]
                ph["core_busy_s"] = busy / hz
                ph["core_softirq_s"] = d[6] / hz
                ph["core_us_per_query"] = busy / hz * 1e6 / done if done else None
            else:
                ph["core_busy_s"] = ph["core_softirq_s"] = ph["core_us_per_query"] = None
            # Other programs on the two cores (the machine may be shared): process-context time on each
            # core that neither the server nor dnsperf accounts for.
            ph["server_core_foreign_s"] = ph["client_core_foreign_s"] = ph["client_cpu_s"] = None
            if c0 and c1 and cpu_s is not None:
                ph["server_core_foreign_s"] = max(0.0, (d[0] + d[1] + d[2]) / hz - cpu_s)
            k0, k1 = f.get(f"{phase}.ccore0"), f.get(f"{phase}.ccore1")
            p0, p1 = _num(f, f"{phase}.client0"), _num(f, f"{phase}.client1")
            if p0 is not None and p1 is not None:
                ph["client_cpu_s"] = p1 - p0
                ph["client_cpu_util"] = (p1 - p0) / wall if wall else None
                if k0 and k1:
                    e = [int(b) - int(a) for a, b in zip(k0.split(), k1.split(), strict=False)]
                    ph["client_core_foreign_s"] = max(0.0, (e[0] + e[1] + e[2]) / hz - (p1 - p0))
            ph["wall_s"] = wall
            r[phase] = ph
        for key in ("rss_start_kib", "rss_warm_kib", "rss_10k_kib", "upstream_during_measure",
                    "upstream_during_warm"):
            r[key] = _num(f, key)
        if srv == "agent":
            m0 = parse_metrics(workdir / "agent.metrics.0")
            m1 = parse_metrics(workdir / "agent.metrics.1")
            m2 = parse_metrics(workdir / "agent.metrics.2")
            if m0 and m1:
                hits = m1["hits"] - m0["hits"]
                misses = m1["misses"] - m0["misses"]
                r["measure_hits"] = hits
                r["measure_misses"] = misses
                r["measure_hit_ratio"] = hits / (hits + misses) if hits + misses else None
                r["measure_servfail"] = m1["servfail"] - m0["servfail"]
                r["measure_refused"] = m1["refused"] - m0["refused"]
                r["measure_requests"] = m1["requests"] - m0["requests"]
            if m2:
                r["entries_10k"] = m2["entries"]
                r["cache_bytes_10k"] = m2["cache_bytes"]
            log = workdir / "agent.log"
            if log.exists():
                bad = [ln for ln in log.read_text(errors="replace").splitlines()
                       if re.search(r"ERROR|Traceback|CRITICAL|WARNING", ln)]
                r["log_problems"] = bad[:10]
                r["log_problem_count"] = len(bad)
        # every measured answer must be a NOERROR hit, or the figures compare different work
        problems = []
        for phase in phases:
            codes = r[phase].get("rcodes") or {}
            other = {k: v for k, v in codes.items() if k != "NOERROR"}
            if other:
                problems.append(f"{phase}: non-NOERROR answers {other}")
            if not r[phase].get("completed"):
                problems.append(f"{phase}: no completed queries")
        noisy = []
        for phase in phases:
            ph = r[phase]
            for side in ("server", "client"):
                x = ph.get(f"{side}_core_foreign_s")
                if isinstance(x, float) and ph.get("wall_s") and x > 0.05 * ph["wall_s"]:
                    noisy.append(f"{phase}: {x:.1f}s of other programs' CPU on the {side} core "
                                 f"({x / ph['wall_s']:.0%} of the run)")
        r["noisy"] = noisy
        if r.get("upstream_during_measure"):
            problems.append(f"{r['upstream_during_measure']:.0f} queries reached the upstream while measured")
        r["invalid"] = problems
        results[srv] = r

    def ratio(a: object, b: object) -> float | None:
        return a / b if isinstance(a, float | int) and isinstance(b, float | int) and b else None

    ratios: dict[str, float | None] = {}
    a = results.get("agent")
    for peer in ("unbound", "dnsmasq", "floor"):
        p = results.get(peer)
        if a is None or p is None:
            continue
        for phase in phases:
            if phase != "sat":
                ratios[f"{phase}_cpu_us_per_query_agent/{peer}"] = ratio(
                    a[phase]["cpu_us_per_query"], p[phase]["cpu_us_per_query"])
        ratios[f"sat_qps_agent/{peer}"] = ratio(a["sat"]["qps"], p["sat"]["qps"])
        ratios[f"sat_cpu_us_per_query_agent/{peer}"] = ratio(a["sat"]["cpu_us_per_query"],
                                                             p["sat"]["cpu_us_per_query"])
        ratios[f"rss_10k_agent/{peer}"] = ratio(a["rss_10k_kib"], p["rss_10k_kib"])
    return {"run": run, "phases": phases, "servers": results, "ratios": ratios}


def _fmt(v: object, spec: str, scale: float = 1.0, none: str = "-") -> str:
    if not isinstance(v, float | int):
        return none
    return format(v if scale == 1.0 else v * scale, spec)


def render(data: dict[str, Any]) -> str:
    run: dict[str, str] = data["run"]
    res: dict[str, dict[str, Any]] = data["servers"]
    phases: list[str] = data["phases"]
    names = [s for s in SERVERS if s in res]
    lines = [
        f"cache-hit benchmark: {run.get('names', '?')} names, type A, "
        f"{'EDNS' if run.get('edns') == '1' else 'no EDNS'}; servers on CPU {run.get('server_cpu', '?')}, "
        f"dnsperf {run.get('dnsperf', '')} on CPU {run.get('client_cpu', '?')}; {run.get('duration', '?')}s per run; "
        f"fixed loads {run.get('qps', '?').replace(',', ', ')} QPS (-c 1 -q {run.get('outstanding', '?')} -Q); "
        f"saturated -c 1 -q {run.get('outstanding', '?')}; user {run.get('user', '?')}"
    ]
    rows: list[tuple[str, ...]] = []

    def row(label: str, fn: Callable[[dict[str, Any]], str]) -> None:
        rows.append((label, *(fn(res[s]) for s in names)))

    def col(phase: str, key: str, spec: str, scale: float = 1.0) -> Callable[[dict[str, Any]], str]:
        return lambda r: _fmt(r[phase].get(key), spec, scale)

    def joined(phase: str, keys: tuple[str, ...], spec: str, scale: float = 1.0) -> Callable[[dict[str, Any]], str]:
        return lambda r: "/".join(_fmt(r[phase].get(k), spec, scale) for k in keys)

    def pair(phase: str) -> Callable[[dict[str, Any]], str]:
        return lambda r: (f"{_fmt(r[phase].get('completed'), ',.0f')}/{_fmt(r[phase].get('lost'), ',.0f')}"
                          f"/{_fmt(r[phase].get('udp_rcvbuf_errors'), ',.0f')}")

    for phase in phases:
        if phase == "sat":
            label = "saturated"
            rows.append((f"{label}:",) + ("",) * len(names))
            row("  QPS", col(phase, "qps", ",.0f"))
            row("  CPU us/query", col(phase, "cpu_us_per_query", ".2f"))
        else:
            label = f"{int(phase[5:]):,} QPS offered"
            rows.append((f"{label}:",) + ("",) * len(names))
            row("  CPU us/query", col(phase, "cpu_us_per_query", ".2f"))
            row("  achieved QPS", col(phase, "qps", ",.0f"))
        row("  server CPU util (of its core)", col(phase, "server_cpu_util", ".1%"))
        row("  core softirq s", col(phase, "core_softirq_s", ".2f"))
        row("  dnsperf CPU util (of its core)", col(phase, "client_cpu_util", ".1%"))
        row("  other programs' CPU s: srv/cli core", joined(phase, ("server_core_foreign_s", "client_core_foreign_s"),
                                                            ".1f"))
        row("  latency avg us", col(phase, "lat_avg", ".0f", 1e6))
        if phase != "sat":
            row("  latency p50 / p99 / p99.9 us", joined(phase, ("lat_p50", "lat_p99", "lat_p999"), ".0f", 1e6))
        row("  latency max us", col(phase, "lat_max", ".0f", 1e6))
        row("  completed/lost/rcvbuf drops", pair(phase))
    rows.append(("memory:",) + ("",) * len(names))
    row("  RSS at start MiB", lambda r: _fmt(r.get("rss_start_kib"), ".1f", 1 / 1024))
    row("  RSS after measured runs MiB", lambda r: _fmt(r.get("rss_warm_kib"), ".1f", 1 / 1024))
    row(f"  RSS with {run.get('rss_names', '?')} names MiB", lambda r: _fmt(r.get("rss_10k_kib"), ".1f", 1 / 1024))
    rows.append(("checks:",) + ("",) * len(names))
    row("  upstream queries while measured", lambda r: _fmt(r.get("upstream_during_measure"), ".0f"))
    row("  valid (all NOERROR hits)", lambda r: "no" if r.get("invalid") else "yes")
    w0 = max(len(r[0]) for r in rows)
    w = [max(len(s), *(len(r[i + 1]) for r in rows)) for i, s in enumerate(names)]
    lines.append("")
    lines.append(" " * w0 + "  " + "  ".join(n.rjust(w[i]) for i, n in enumerate(names)))
    for r in rows:
        lines.append(r[0].ljust(w0) + "  " + "  ".join(v.rjust(w[i]) for i, v in enumerate(r[1:])))
    lines.append("")
    ratios: dict[str, float | None] = data["ratios"]
    if ratios:
        lines.append("ratios agent/peer (CPU and RSS: lower is better; QPS: higher is better)")
        for k, v in ratios.items():
            lines.append(f"  {k:44s} {_fmt(v, '.2f')}")
        lines.append("")
    a = res.get("agent")
    if a is not None:
        lines.append(
            "agent /metrics over the measured runs: "
            f"hits {_fmt(a.get('measure_hits'), ',.0f')}, misses {_fmt(a.get('measure_misses'), ',.0f')}, "
            f"hit ratio {_fmt(a.get('measure_hit_ratio'), '.4%')}; SERVFAIL {_fmt(a.get('measure_servfail'), ',.0f')}, "
            f"REFUSED {_fmt(a.get('measure_refused'), ',.0f')}"
        )
        rss = a.get("rss_10k_kib")
        lines.append(
            f"agent after {run.get('rss_names', '?')} names: coredns_cache_entries "
            f"{_fmt(a.get('entries_10k'), ',.0f')}, nodelocal_cache_bytes {_fmt(a.get('cache_bytes_10k'), ',.0f')}; "
            f"RSS target <= 60 MiB: " + ("met" if isinstance(rss, float) and rss <= 60 * 1024 else "NOT met")
        )
        if a.get("log_problem_count"):
            lines.append(f"agent log: {a['log_problem_count']} warning/error lines, first: "
                         + " | ".join(a.get("log_problems", [])[:3]))
    for s in names:
        for p in res[s].get("noisy", []):
            lines.append(f"NOISE: {s} {p}: latency and QPS of that run are suspect "
                         "(per-process CPU us/query much less so)")
    for s in names:
        for p in res[s].get("invalid", []):
            lines.append(f"WARNING: {s}: {p}; its figures are not comparable")
        sat = res[s]["sat"]
        util, cutil, wall = sat.get("server_cpu_util"), sat.get("client_cpu_util"), sat.get("wall_s")
        if isinstance(util, float) and wall:
            # the server's own time plus the softirq work on its core (tick-sampled, so approximate)
            busy = util + (sat.get("core_softirq_s") or 0.0) / wall
            if busy < 0.9:
                limit = ("dnsperf (one core) was the limit" if isinstance(cutil, float) and cutil >= 0.9
                         else "neither core was saturated")
                lines.append(f"note: {s}'s saturated run kept its core {busy:.0%} busy (itself {util:.0%}, "
                             f"softirq included): {limit}, so its QPS is a lower bound")
    lines.append("versions: " + "; ".join(f"{res[s]['version']}" for s in names if res[s].get("version")))
    return "\n".join(lines)


def cmd_report(workdir: str, json_out: str | None, build: Callable[[Path], dict[str, Any]] = build,
               render: Callable[[dict[str, Any]], str] = render) -> int:
    """Build the report from `workdir`, print it, and write its JSON to `json_out` if given (the pod and
    overload reports pass their own build and render)."""
    data = build(Path(workdir))
    print(render(data))
    if json_out:
        Path(json_out).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        print(f"JSON written to {json_out}")
    return 0


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("names")
    s.add_argument("n", type=int)
    s.add_argument("file")
    s = sub.add_parser("portfree")
    s.add_argument("ports", type=int, nargs="+")
    s = sub.add_parser("probe")
    s.add_argument("port", type=int)
    s.add_argument("seconds", type=float, nargs="?", default=15.0)
    s = sub.add_parser("metrics")
    s.add_argument("url")
    s.add_argument("file")
    s = sub.add_parser("report")
    s.add_argument("dir")
    s.add_argument("--json")
    a = p.parse_args(argv)
    if a.cmd == "names":
        return cmd_names(a.n, a.file)
    if a.cmd == "portfree":
        return cmd_portfree(a.ports)
    if a.cmd == "probe":
        return cmd_probe(a.port, a.seconds)
    if a.cmd == "metrics":
        return cmd_metrics(a.url, a.file)
    return cmd_report(a.dir, a.json)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
