#!/usr/bin/env python3
"""Helpers for hack/bench_pods.sh --overload: hit and miss names, the capacity read off a ladder, a time
estimate, and the report (the pod table from pods.py, then hits and misses, the ladders and a summary).

Standard library only.

  overload.py names DIR --rates "R ..." --secs S --miss-zone cluster|outside
                                  DIR/hit.txt (HIT_NAMES names under hit.cluster.local) and, per rate,
                                  DIR/miss-R.txt: unique names under miss.<zone> (every one a miss)
  overload.py capacity DIR SERVER the most queries/s SERVER answered within 1 s on its ladder (integer)
  overload.py estimate ...        about how long a run takes
  overload.py report DIR [--json F]

DIR/runs.facts holds `TAG KEY VALUE` lines written while the runs go: TAG is SERVER.KIND, KIND one of
l<rate> (a ladder step), over (the overload step), rec (the recovery probe), lwarm (the ladder's warm-up),
hit<rate> and miss<rate>; a bare SERVER tag holds the ladder's rates, its capacity and its cgroup checks.
Each measured run's dnsperf output (-S 1 -v) is DIR/TAG.out.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pods  # hack/bench/pods.py: the pod workload's report
import report as base  # hack/bench/report.py: dnsperf parsing, facts

SERVERS = pods.SERVERS
HIT_NAMES = 100
HIT_SUFFIX = "hit.cluster.local"
MISS_SUFFIX = {"cluster": "miss.cluster.local", "outside": "miss.example.net"}
RECOVERED = 0.9  # a probe second counts as answered when this share of its rate came back


# ---------------------------------------------------------------------------------------------------
# inputs

def miss_count(rate: int, secs: int) -> int:
    """Names enough that dnsperf never wraps around the file (it would ask a name a second time: a hit)."""
    return int(rate * secs * 1.1) + 100


def cmd_names(workdir: str, rates: Sequence[int], secs: int, miss_zone: str) -> int:
    out = Path(workdir)
    with open(out / "hit.txt", "w") as f:
        for i in range(HIT_NAMES):
            f.write(f"h{i}.{HIT_SUFFIX} A\n")
    for r in rates:
        with open(out / f"miss-{r}.txt", "w") as f:
            for i in range(miss_count(r, secs)):
                f.write(f"r{r}-{i}.{MISS_SUFFIX[miss_zone]} A\n")
    return 0


def parse_rates(text: str) -> list[int]:
    """`"250 500 1000"` (spaces or commas) -> [250, 500, 1000]."""
    return [int(x) for x in re.split(r"[\s,]+", text.strip()) if x]


def estimate(servers: int, warmup: int, duration: int, ladder: Sequence[int], step: int, ladder_warmup: int,
             drain_max: int, recovery_secs: int, mh_rates: Sequence[int], mh_secs: int,
             idle_secs: int = 3) -> tuple[int, int]:
    """(typical, worst) seconds of a whole run: starts, dnsperf's last second, stats; worst when every step
    leaves a backlog the server needs --drain-max to clear."""
    pod = 2 + warmup + duration + 1
    hitmiss = 1 + 1 + idle_secs + len(mh_rates) * (0.5 + mh_secs + 0.5) + len(mh_rates) * (mh_secs + 0.5)
    steps = len(ladder) + 1
    ladder_s = 2 + ladder_warmup + 1 + steps * (step + 1.2) + recovery_secs + 1 + 1
    typical = servers * (pod + hitmiss + ladder_s) + 5
    worst = typical + servers * (len(ladder) + 2) * max(0, drain_max - 1)
    return int(typical), int(worst)


# ---------------------------------------------------------------------------------------------------
# parsing

def parse_intervals(text: str) -> list[float]:
    """dnsperf -S 1: one `<epoch>: <responses per second>` line per interval, in order."""
    return [float(m) for m in re.findall(r"^\d+\.\d+: ([\d.]+)\s*$", text, re.M)]


def _num(d: dict[str, str], key: str) -> float | None:
    v = d.get(key)
    try:
        return float(v) if v is not None else None
    except ValueError:
        return None


def _triple(d: dict[str, str], key: str) -> list[float] | None:
    v = d.get(key)
    if not v:
        return None
    try:
        return [float(x) for x in v.split()]
    except ValueError:
        return None


def _ratio(a: object, b: object) -> float | None:
    return a / b if isinstance(a, float | int) and isinstance(b, float | int) and b else None


def run_result(workdir: Path, runs: dict[str, dict[str, str]], tag: str, hz: float) -> dict[str, Any] | None:
    """One measured run: what dnsperf got, and what it cost the server."""
    f = runs.get(tag)
    if f is None:
        return None
    path = workdir / f"{tag}.out"
    dp = base.parse_dnsperf(path)
    text = path.read_text(errors="replace") if path.exists() else ""
    rate, secs = _num(f, "rate"), _num(f, "secs")
    sent, done = dp.get("sent"), dp.get("completed")
    r: dict[str, Any] = {"tag": tag, "rate": rate, "secs": secs, "sent": sent, "completed": done,
                         "lost": dp.get("lost"), "rcodes": dp.get("rcodes") or {}}
    # answered within 1 s (dnsperf -t 1 counts a later answer as lost) per second of offered load
    r["answered_qps"] = done / secs if isinstance(done, int) and secs else None
    r["answered_share"] = _ratio(done, sent)
    r["offered_share"] = _ratio(sent, rate * secs if rate and secs else None)
    r["lat_p50"], r["lat_p99"] = dp.get("lat_p50"), dp.get("lat_p99")
    # the server's CPU: cpuacct nanoseconds when recorded, else clock ticks; over the whole run (dnsperf's
    # last second of waiting for late answers included: work those queries caused) per answer, and over
    # the -l window alone (to "mid") as a rate, so that an overloaded server shows its quota
    w0, wm, w1 = (_num(f, k) for k in ("wall0", "wallmid", "wall1"))
    n0, nm, n1 = (_num(f, k) for k in ("ns0", "nsmid", "ns1"))
    t0, tm, t1 = (_num(f, k) for k in ("ticks0", "ticksmid", "ticks1"))

    def cpu(a: float | None, b: float | None, ta: float | None, tb: float | None) -> float | None:
        if a is not None and b is not None:
            return (b - a) / 1e9
        return (tb - ta) / hz if ta is not None and tb is not None else None

    wall = w1 - w0 if w0 is not None and w1 is not None else None
    load_wall = wm - w0 if w0 is not None and wm is not None else None
    cpu_s, load_cpu_s = cpu(n0, n1, t0, t1), cpu(n0, nm, t0, tm)
    r["cpu_source"] = "cpuacct" if n0 is not None else "ticks"
    r["wall_s"], r["server_cpu_s"], r["load_wall_s"], r["load_cpu_s"] = wall, cpu_s, load_wall, load_cpu_s
    r["cpu_millicores"] = load_cpu_s * 1000 / load_wall if load_cpu_s is not None and load_wall else None
    r["cpu_us_per_answer"] = cpu_s * 1e6 / done if cpu_s is not None and done else None
    a0, a1 = _num(f, "auth0"), _num(f, "auth1")
    up = a1 - a0 if a0 is not None and a1 is not None else None
    r["upstream_queries"] = up
    r["upstream_per_query"] = _ratio(up, sent)
    r["rcvbuf_errors"] = _num(f, "rcvbuf_errors")
    c0, cm = _triple(f, "cg0"), _triple(f, "cgmid")
    if c0 and cm and len(c0) == len(cm) == 3:  # over the -l window
        periods, throttled, ns = (b - a for a, b in zip(c0, cm, strict=True))
        r["cgroup"] = {"periods": periods, "throttled": throttled, "throttled_s": ns / 1e9,
                       "throttled_share": _ratio(throttled, periods)}
    k0, k1 = f.get("core0"), f.get("core1")
    if k0 and k1 and cpu_s is not None:
        d = [int(y) - int(x) for x, y in zip(k0.split(), k1.split(), strict=False)]
        r["server_core_foreign_s"] = max(0.0, (d[0] + d[1] + d[2]) / hz - cpu_s) if len(d) >= 3 else None
        # time the hypervisor ran something else on the server's CPU: a host under contention slows all
        r["server_core_steal_s"] = d[7] / hz if len(d) >= 8 else None
    r["busy_after_s"] = _num(f, "busy_after")
    idle = _num(f, "idle_after")
    r["idle_after"] = None if idle is None else bool(idle)
    r["per_second"] = parse_intervals(text)
    return r


def idle_millicores(f: dict[str, str], hz: float) -> float | None:
    """The server's CPU while nobody asked (SERVER.idle: ns or ticks, wall at both ends), in millicores."""
    w0, w1 = _num(f, "wall0"), _num(f, "wall1")
    n0, n1, t0, t1 = (_num(f, k) for k in ("ns0", "ns1", "ticks0", "ticks1"))
    if w0 is None or w1 is None or w1 <= w0:
        return None
    if n0 is not None and n1 is not None:
        return (n1 - n0) / 1e6 / (w1 - w0)
    return (t1 - t0) * 1000 / hz / (w1 - w0) if t0 is not None and t1 is not None else None


def capacity_of(steps: Sequence[dict[str, Any] | None]) -> tuple[float, float | None]:
    """(the most queries/s answered within 1 s on the ladder, the offered rate of that step); 0 if none."""
    best, at = 0.0, None
    for s in steps:
        if s and isinstance(s.get("answered_qps"), float | int) and s["answered_qps"] > best:
            best, at = float(s["answered_qps"]), s.get("rate")
    return best, at


def recovered_after(per_second: Sequence[float], rate: float, share: float = RECOVERED) -> int | None:
    """Seconds into the probe from which every second answered at least `share` of `rate` (1 = from the
    first second on); None if the last second did not."""
    if not per_second or not rate:
        return None
    ok = [x >= share * rate for x in per_second]
    if not ok[-1]:
        return None
    i = len(ok)
    while i > 0 and ok[i - 1]:
        i -= 1
    return i + 1


def cmd_capacity(workdir: str, server: str) -> int:
    wd = Path(workdir)
    run = base.read_facts(wd / "facts").get("run", {})
    runs = base.read_facts(wd / "runs.facts")
    hz = float(run.get("clk_tck", "100"))
    rates = parse_rates(runs.get(server, {}).get("ladder", ""))
    cap, _ = capacity_of([run_result(wd, runs, f"{server}.l{r}", hz) for r in rates])
    print(round(cap))
    return 0


# ---------------------------------------------------------------------------------------------------
# the report

def build(workdir: Path) -> dict[str, Any]:
    facts = base.read_facts(workdir / "facts")
    run = facts.get("run", {})
    hz = float(run.get("clk_tck", "100"))
    runs = base.read_facts(workdir / "runs.facts")
    quota = _num(run, "ladder_quota") or 0.0
    factor = _num(run, "overload_factor") or 4.0
    pod = pods.build(workdir) if (workdir / "workload.json").exists() else {"run": run, "servers": {}}
    mh_rates = parse_rates(run.get("mh_rates", ""))
    servers: dict[str, dict[str, Any]] = {}
    for srv in SERVERS:
        if srv not in runs and srv not in pod["servers"]:
            continue
        sf = runs.get(srv, {})
        ladder_rates = parse_rates(sf.get("ladder", ""))
        ladder = [run_result(workdir, runs, f"{srv}.l{r}", hz) for r in ladder_rates]
        cap, cap_at = capacity_of(ladder)
        over = run_result(workdir, runs, f"{srv}.over", hz)
        rec = run_result(workdir, runs, f"{srv}.rec", hz)
        lwarm = runs.get(f"{srv}.lwarm", {})
        s: dict[str, Any] = {
            "version": facts.get(srv, {}).get("version", ""),
            "pod_cpu_us_per_query": (pod["servers"].get(srv) or {}).get("cpu_us_per_query"),
            "pod_answered_share": (pod["servers"].get(srv) or {}).get("answered_share"),
            "ladder": [x for x in ladder if x], "capacity_qps": cap if ladder_rates else None,
            "capacity_at_rate": cap_at, "over": over, "recovery": rec,
            "warmup_busy_after_s": _num(lwarm, "busy_after"),
            "cgroup_threads": _num(sf, "cgroup_threads"),
            "cgroup_threads_outside": _num(sf, "cgroup_threads_outside"),
            "idle_millicores": idle_millicores(runs.get(f"{srv}.idle", {}), hz),
            "hits": {str(r): run_result(workdir, runs, f"{srv}.hit{r}", hz) for r in mh_rates},
            "misses": {str(r): run_result(workdir, runs, f"{srv}.miss{r}", hz) for r in mh_rates},
        }
        top = s["ladder"][-1] if s["ladder"] else None
        s["capacity_open"] = bool(top and isinstance(top.get("answered_share"), float)
                                  and top["answered_share"] >= 0.99 and top.get("rate") == max(ladder_rates))
        s["over_pct_of_capacity"] = _ratio(over.get("answered_qps") if over else None, cap or None)
        s["recovered_after_s"] = (recovered_after(rec["per_second"], rec["rate"] or 0)
                                  if rec and rec.get("per_second") else None)
        s["problems"] = problems(srv, s, quota)
        s["noise"] = noise(s)
        servers[srv] = s
    data: dict[str, Any] = {"run": run, "pods": pod, "servers": servers, "quota_millicores": quota,
                            "overload_factor": factor}
    data["summary"] = summary(data)
    return data


def problems(srv: str, s: dict[str, Any], quota: float) -> list[str]:
    """What makes a figure suspect (the report prints them as WARNING lines)."""
    out = []
    for kind, runs in (("hit", s["hits"]), ("miss", s["misses"])):
        for rate, r in runs.items():
            if not r:
                out.append(f"{kind} run at {rate}/s missing")
                continue
            upq = r.get("upstream_per_query")
            if kind == "hit" and isinstance(upq, float) and upq > 0.01:
                out.append(f"hit run at {rate}/s: {upq:.1%} of queries went upstream (not all hits)")
            if kind == "miss" and isinstance(upq, float) and upq < 0.98:
                out.append(f"miss run at {rate}/s: only {upq:.1%} of queries went upstream (not all misses)")
            if isinstance(r.get("answered_share"), float) and r["answered_share"] < 0.99:
                out.append(f"{kind} run at {rate}/s: {r['answered_share']:.1%} answered within 1 s "
                           "(saturated without a limit?)")
    steps = [*s["ladder"], *([s["over"]] if s["over"] else [])]
    for r in steps:
        name = "overload step" if r["tag"].endswith(".over") else f"ladder step {r['rate']:.0f}/s"
        if isinstance(r.get("offered_share"), float) and r["offered_share"] < 0.97:
            out.append(f"{name}: dnsperf sent only {r['offered_share']:.1%} of the rate (the client is the "
                       "limit: raise --outstanding or lower the rate)")
        m, share = r.get("cpu_millicores"), r.get("answered_share")
        if quota and isinstance(m, float) and isinstance(share, float) and share < 0.95 and m < 0.9 * quota:
            out.append(f"{name}: {1 - share:.1%} lost while the server used {m:.0f} of {quota:.0f} millicores")
    over = s["over"]
    if quota and over and isinstance(over.get("cpu_millicores"), float) and over["cpu_millicores"] < 0.9 * quota:
        out.append(f"overload step: the server used {over['cpu_millicores']:.0f} millicores, not its quota "
                   f"{quota:.0f}")
    if s.get("cgroup_threads_outside"):
        out.append(f"{s['cgroup_threads_outside']:.0f} threads outside the cgroup at the end")
    return out




def noise(s: dict[str, Any]) -> list[str]:
    """Runs during which other programs or the hypervisor (steal, >5% of the run) took the server core: their
    CPU per query is suspect (a shared or overcommitted machine), and so is a ladder's capacity. Other
    programs count past 10% of a hit or miss run; under the quota only past 80% (the server needs 5%)."""
    out = []
    named = [(f"hit run at {k}/s", r, 0.1) for k, r in s["hits"].items()]
    named += [(f"miss run at {k}/s", r, 0.1) for k, r in s["misses"].items()]
    named += [(f"ladder step {r['rate']:.0f}/s", r, 0.8) for r in s["ladder"]]
    named += [("overload step", s["over"], 0.8)] if s["over"] else []
    for name, r, most in named:
        if not r or not r.get("wall_s"):
            continue
        wall, parts = r["wall_s"], []
        x, st = r.get("server_core_foreign_s"), r.get("server_core_steal_s")
        if isinstance(x, float) and x > most * wall:
            parts.append(f"other programs {x / wall:.0%}")
        if isinstance(st, float) and st > 0.05 * wall:
            parts.append(f"steal {st / wall:.0%}")
        if parts:
            out.append(f"{name}: {', '.join(parts)} of the server core's time")
    return out


def summary(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The headline rows: label, value per server, and agent/unbound, agent/dnsmasq."""
    run, res = data["run"], data["servers"]
    quota, factor = data["quota_millicores"], data["overload_factor"]
    rows: list[dict[str, Any]] = []

    def add(key: str, label: str, better: str, fn: Callable[[dict[str, Any]], float | None]) -> None:
        vals = {srv: fn(s) for srv, s in res.items()}
        a = vals.get("agent")
        rows.append({"key": key, "label": label, "better": better, "values": vals,
                     "agent_vs_unbound": _ratio(a, vals.get("unbound")),
                     "agent_vs_dnsmasq": _ratio(a, vals.get("dnsmasq"))})

    def get(*path: str) -> Callable[[dict[str, Any]], float | None]:
        def fn(s: dict[str, Any]) -> float | None:
            v: Any = s
            for p in path:
                v = v.get(p) if isinstance(v, dict) else None
            return float(v) if isinstance(v, float | int) and not isinstance(v, bool) else None
        return fn

    qps = run.get("qps", "?")
    add("pod_cpu_us", f"CPU µs/query, pod workload at {qps}/s, no limit", "lower", get("pod_cpu_us_per_query"))
    add("capacity", f"answered q/s within 1 s at {quota:.0f}m (capacity)", "higher", get("capacity_qps"))
    add("over_pct", f"answered at {factor:g}x capacity, % of capacity", "higher", get("over_pct_of_capacity"))
    add("over_share", f"share answered at {factor:g}x capacity", "higher", get("over", "answered_share"))
    add("over_cpu", f"server CPU at {factor:g}x capacity, millicores", "-", get("over", "cpu_millicores"))
    add("rec_share", f"recovery probe at {run.get('recovery_qps', '?')}/s right after: answered", "higher",
        get("recovery", "answered_share"))
    for r in parse_rates(run.get("mh_rates", "")):
        add(f"miss{r}", f"CPU µs per miss at {r}/s", "lower", get("misses", str(r), "cpu_us_per_answer"))
    for r in parse_rates(run.get("mh_rates", "")):
        add(f"hit{r}", f"CPU µs per hit at {r}/s", "lower", get("hits", str(r), "cpu_us_per_answer"))
    add("idle", "server CPU while idle, millicores", "lower", get("idle_millicores"))
    return rows


def _fmt(v: object, spec: str, scale: float = 1.0, none: str = "-") -> str:
    if not isinstance(v, float | int) or isinstance(v, bool):
        return none
    return format(v * scale, spec)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    w = [max(len(header[i]), *(len(r[i]) for r in rows)) if rows else len(header[i]) for i in range(len(header))]
    out = [header[0].ljust(w[0]) + "  " + "  ".join(h.rjust(w[i + 1]) for i, h in enumerate(header[1:]))]
    for r in rows:
        out.append(r[0].ljust(w[0]) + "  " + "  ".join(v.rjust(w[i + 1]) for i, v in enumerate(r[1:])))
    return out


def _step_row(label: str, r: dict[str, Any]) -> list[str]:
    cg = r.get("cgroup") or {}
    busy = r.get("busy_after_s")
    busy_s = "-" if busy is None else (f"{busy:.0f}" if r.get("idle_after") else f">{busy:.0f}")
    return [label, _fmt(r.get("rate"), ",.0f"), _fmt(r.get("answered_qps"), ",.0f"),
            _fmt(r.get("answered_share"), ".1%"),
            "/".join(_fmt(r.get(k), ".1f", 1e3) for k in ("lat_p50", "lat_p99")),
            _fmt(r.get("cpu_millicores"), ".1f"), _fmt(cg.get("throttled_share"), ".0%"),
            _fmt(r.get("rcvbuf_errors"), ",.0f"), busy_s]


def render(data: dict[str, Any]) -> str:
    run, res = data["run"], data["servers"]
    names = [s for s in SERVERS if s in res]
    quota, factor = data["quota_millicores"], data["overload_factor"]
    lines = ["=" * 100, "1. pod-shaped workload without a CPU limit", "=" * 100]
    if data["pods"].get("servers"):
        lines.append(pods.render(data["pods"]))
    lines += ["", "=" * 100, f"2. CPU per hit and per miss, no limit ({run.get('mh_secs')} s per run, fresh "
              f"server; hits: {HIT_NAMES} names asked just before; misses: unique names under "
              f"{MISS_SUFFIX.get(run.get('miss_zone', 'cluster'), '?')})", "=" * 100]
    rows = []
    for kind, key in (("miss", "misses"), ("hit", "hits")):
        for rate in parse_rates(run.get("mh_rates", "")):
            def cell(s: str, kind: str = kind, key: str = key, rate: int = rate) -> str:
                r = res[s][key].get(str(rate)) or {}
                return (f"{_fmt(r.get('cpu_us_per_answer'), '.1f')} us  "
                        f"{_fmt(r.get('answered_share'), '.1%')}  "
                        f"up {_fmt(r.get('upstream_per_query'), '.2f')}  "
                        f"p50 {_fmt(r.get('lat_p50'), '.2f', 1e3)} ms")
            rows.append([f"{kind} at {rate}/s", *(cell(s) for s in names)])
    rows.append(["idle (nobody asking)", *(f"{_fmt(res[s].get('idle_millicores'), '.2f')} millicores"
                                           for s in names)])
    lines += _table(["CPU/answer  answered  upstream/query  p50", *names], rows)
    lines += ["", "=" * 100,
              f"3. under a {quota:.0f}-millicore CPU quota (cgroup v1, period 100 ms): the pod workload offered at "
              f"each rate for {run.get('step')} s (dnsperf -c {run.get('clients')} -q {run.get('outstanding')} "
              f"-t 1), then {factor:g}x capacity, then a {run.get('recovery_secs')} s probe at "
              f"{run.get('recovery_qps')}/s",
              "   answered = queries/s answered within 1 s; CPU in millicores of the server's own time; throttled = "
              "periods the cgroup was throttled in;",
              "   kernel drops = UDP receive-buffer errors (machine-wide); busy after = whole seconds the server "
              f"still worked once dnsperf ended ('>' = not idle within --drain-max {run.get('drain_max')} s)",
              "=" * 100]
    for s in names:
        r = res[s]
        if not r["ladder"]:
            continue
        lines.append(f"{s}: {r['version']}")
        rows = [_step_row("ladder", x) for x in r["ladder"]]
        if r["over"]:
            rows.append(_step_row(f"{factor:g}x capacity", r["over"]))
        if r["recovery"]:
            rows.append(_step_row("recovery probe", r["recovery"]))
        lines += ["  " + x for x in _table(
            ["step", "offered/s", "answered/s", "share", "p50/p99 ms", "CPU m", "throttled", "kernel drops",
             "busy after s"], rows)]
        cap_at = r.get("capacity_at_rate")
        lines.append(f"  capacity {'>= ' if r.get('capacity_open') else ''}{_fmt(r['capacity_qps'], ',.0f')} q/s "
                     f"(at {_fmt(cap_at, ',.0f')} offered); at {factor:g}x it answered "
                     f"{_fmt(r['over_pct_of_capacity'], '.0%')} of that"
                     + (" (the ladder's top step was answered in full: its capacity lies above; extend --ladder)"
                        if r.get("capacity_open") else ""))
        rec = r["recovery"]
        if rec:
            ra = r.get("recovered_after_s")
            lines.append("  recovery probe, answers per second: "
                         + " ".join(_fmt(x, ".0f") for x in rec.get("per_second", []))
                         + f" of {_fmt(rec.get('rate'), '.0f')}: "
                         + (f"answering from second {ra} on" if ra else "not answering by its end"))
        lines.append("")
    lines += ["=" * 100, "summary (the issue's figures)", "=" * 100]
    rows = []
    for row in data["summary"]:
        spec = {"over_pct": ".0%", "over_share": ".1%", "rec_share": ".1%", "capacity": ",.0f",
                "over_cpu": ".1f", "idle": ".2f"}.get(row["key"], ".1f")
        rows.append([row["label"], *(_fmt(row["values"].get(s), spec) for s in names),
                     _fmt(row["agent_vs_unbound"], ".2f"), _fmt(row["agent_vs_dnsmasq"], ".2f")])
    lines += _table(["", *names, "agent/unbound", "agent/dnsmasq"], rows)
    lines.append("(ratios: lower is better for CPU, higher for answered q/s and shares)")
    for s in names:
        for p in res[s]["problems"]:
            lines.append(f"WARNING: {s}: {p}")
        for p in res[s].get("noise", []):
            lines.append(f"NOISE: {s}: {p}")
    lines.append(f"started {run.get('started', '?')}; versions: "
                 + "; ".join(res[s]["version"] for s in names if res[s].get("version")))
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("names")
    s.add_argument("dir")
    s.add_argument("--rates", required=True)
    s.add_argument("--secs", type=int, required=True)
    s.add_argument("--miss-zone", choices=sorted(MISS_SUFFIX), default="cluster")
    s = sub.add_parser("capacity")
    s.add_argument("dir")
    s.add_argument("server", choices=SERVERS)
    s = sub.add_parser("estimate")
    s.add_argument("--servers", required=True)
    for k in ("warmup", "duration", "step", "ladder-warmup", "drain-max", "recovery-secs", "mh-secs", "idle-secs"):
        s.add_argument(f"--{k}", type=int, required=True)
    s.add_argument("--ladder", required=True)
    s.add_argument("--mh-rates", required=True)
    s = sub.add_parser("report")
    s.add_argument("dir")
    s.add_argument("--json")
    a = p.parse_args(argv)
    if a.cmd == "names":
        return cmd_names(a.dir, parse_rates(a.rates), a.secs, a.miss_zone)
    if a.cmd == "capacity":
        return cmd_capacity(a.dir, a.server)
    if a.cmd == "estimate":
        typical, worst = estimate(len(a.servers.split()), a.warmup, a.duration, parse_rates(a.ladder), a.step,
                                  a.ladder_warmup, a.drain_max, a.recovery_secs, parse_rates(a.mh_rates),
                                  a.mh_secs, a.idle_secs)
        print(f"about {typical // 60} min {typical % 60} s (up to {worst // 60} min {worst % 60} s if every step "
              "leaves a backlog)")
        return 0
    return base.cmd_report(a.dir, a.json, build, render)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
