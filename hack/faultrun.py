#!/usr/bin/env python3
"""hack/faultrun.py — what pods see while CoreDNS misbehaves (run it as `hack/lab.sh fault KIND...`).

For each KIND (stop, servfail, slow, loss) in turn, in a lab that is up with its agent running:
  1. `hack/lab.sh fault prepare KIND` (servfail, slow: hack/faultdns.py goes in front of CoreDNS, passing);
  2. hack/podload.py in pod-a (-> the kube-dns ClusterIP 10.96.0.10) and in pod-b (-> 169.254.20.10), each
     --rate q/s, a new socket per query, over four back-to-back phases on one shared clock:
     warmup (--warmup s), before (--before s), fault (--seconds s), after (--after s);
  3. `hack/lab.sh fault on KIND` when the fault phase starts, `hack/lab.sh fault off` when it ends;
  4. the agent's /metrics scraped at every phase boundary and each second between (counter deltas per
     phase; nodelocal_upstream_healthy as it went), and CoreDNS's own query count (its dnsmasq log);
  5. `hack/lab.sh fault reset`, also on failure and Ctrl-C.
Then one table per KIND: per phase and pod, queries sent, answered (NOERROR or NXDOMAIN), their share,
SERVFAIL, REFUSED, timeouts, the rest, and p50/p99 latency of the answered ones; per phase the agent's
counters. --json FILE writes everything (each pod's full podload report, every metrics sample).
Stdlib only; the lab's scripts and namespaces are passed in by hack/lab.sh.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PODS = {"pod-a": "10.96.0.10", "pod-b": "169.254.20.10"}  # pod -> the nameserver its resolv.conf names
PHASES = ("warmup", "before", "fault", "after")
DESCRIBE = {
    "stop": "CoreDNS answers nothing (the coredns namespace drops DNS traffic: timeouts)",
    "servfail": "CoreDNS answers SERVFAIL to everything (hack/faultdns.py)",
    "slow": "CoreDNS answers {delay:g} s late, past the agent's per-try timeout (hack/faultdns.py)",
    "loss": "{loss}% of the node's packets to CoreDNS dropped (nft numgen in the node namespace)",
}
# Counters whose delta per phase the table shows: column -> (metric, label filter)
COUNTERS = {
    "misses": ("coredns_cache_misses_total", {}),
    "stale": ("coredns_cache_served_stale_total", {}),
    "prefetch": ("coredns_cache_prefetch_total", {}),
    "to CoreDNS": ("nodelocal_upstream_requests_total", {"to": "@cluster"}),
    "up timeout": ("nodelocal_upstream_requests_total", {"to": "@cluster", "outcome": "timeout"}),
    "agent SERVFAIL": ("coredns_dns_responses_total", {"rcode": "SERVFAIL"}),
}
SAMPLE_RE = re.compile(r'^([A-Za-z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)')
LABEL_RE = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def stop_procs(procs: dict[str, subprocess.Popen[bytes]]) -> None:
    """SIGTERM every podload still running, then wait for each (killed past 10 s)."""
    for p in procs.values():
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs.values():
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def collect_pods(procs: dict[str, subprocess.Popen[bytes]], outdir: Path, timeout: float) -> dict[str, Any]:
    """Wait for each pod's podload (terminated past `timeout`) and read its JSON report; a podload that
    failed raises with the end of its stderr."""
    pods = {}
    for pod, p in procs.items():
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.terminate()
            p.wait(timeout=10)
        if p.returncode != 0:
            why = (outdir / f"{pod}.err").read_text()[-2000:]
            raise RuntimeError(f"podload in {pod} exited {p.returncode}: {why}")
        pods[pod] = json.loads((outdir / f"{pod}.json").read_text())
    return pods


class Interrupted(Exception):
    pass


def parse_metrics(text: str) -> list[tuple[str, dict[str, str], float]]:
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE_RE.match(line)
        if m is None:
            continue
        try:
            value = float(m.group(3))
        except ValueError:
            continue
        out.append((m.group(1), dict(LABEL_RE.findall(m.group(2) or "")), value))
    return out


def cluster_servers(samples: Iterable[tuple[str, dict[str, str], float]]) -> set[str]:
    return {lb.get("to", "") for n, lb, _ in samples
            if n == "nodelocal_upstream_healthy" and lb.get("group") == "cluster"}


def counter(samples: list[tuple[str, dict[str, str], float]], name: str, want: dict[str, str]) -> float | None:
    cluster = cluster_servers(samples)
    total, seen = 0.0, False
    for n, lb, v in samples:
        if n != name:
            continue
        if all((lb.get(k) in cluster) if w == "@cluster" else lb.get(k) == w for k, w in want.items()):
            total += v
            seen = True
    return total if seen else None


def healthy(samples: list[tuple[str, dict[str, str], float]]) -> int | None:
    """nodelocal_upstream_healthy of the cluster group: 1 if every server is healthy, else 0."""
    vals = [v for n, lb, v in samples if n == "nodelocal_upstream_healthy" and lb.get("group") == "cluster"]
    return int(min(vals)) if vals else None


class Run:
    def __init__(self, args: argparse.Namespace, kind: str, outdir: Path) -> None:
        self.args = args
        self.kind = kind
        self.outdir = outdir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.samples: list[dict[str, Any]] = []  # {"t", "tag", "metrics", "coredns"}
        self.events: list[dict[str, Any]] = []
        self.coredns_log = Path(args.state) / "coredns.log"
        self.coredns_pos = 0
        self.coredns_count = 0

    # -- the lab ------------------------------------------------------------------------------------

    def lab(self, *argv: str, check: bool = True) -> str:
        p = subprocess.run([self.args.lab, *argv], capture_output=True, text=True, timeout=60, check=False)
        if check and p.returncode != 0:
            raise RuntimeError(f"hack/lab.sh {' '.join(argv)} failed ({p.returncode}): {p.stderr.strip()}")
        return p.stdout

    def ns(self, pod: str) -> list[str]:
        return ["ip", "netns", "exec", f"{self.args.prefix}-{pod}"]

    def scrape(self) -> list[tuple[str, dict[str, str], float]]:
        p = subprocess.run([*self.ns("node"), "curl", "-s", "-m", "2", "http://127.0.0.1:9253/metrics"],
                           capture_output=True, text=True, timeout=10, check=False)
        return parse_metrics(p.stdout) if p.returncode == 0 else []

    def coredns_queries(self) -> int:
        """Queries CoreDNS (the lab's dnsmasq, --log-queries) has received so far: its log read on from where
        we were."""
        try:
            with open(self.coredns_log, "rb") as f:
                f.seek(self.coredns_pos)
                data = f.read()
        except FileNotFoundError:
            return self.coredns_count
        end = data.rfind(b"\n") + 1  # whole lines only
        self.coredns_count += data[:end].count(b"query[")
        self.coredns_pos += end
        return self.coredns_count

    def sample(self, tag: str = "") -> None:
        t = time.time()
        self.samples.append({"t": round(t, 3), "tag": tag, "metrics": self.scrape(), "coredns": self.coredns_queries()})

    def event(self, what: str) -> None:
        self.events.append({"t": round(time.time(), 3), "event": what})

    # -- one sequence -------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        a = self.args
        secs = {"warmup": a.warmup, "before": a.before, "fault": a.seconds, "after": a.after}
        self.outdir.mkdir(parents=True, exist_ok=True)
        if a.fresh_agent:
            self.lab("agent", "restart")
            self.event("agent restarted")
        self.lab("fault", "prepare", self.kind)
        self.event(f"prepared {self.kind}")
        self.coredns_queries()
        t0 = time.time() + 1.5  # podload's start-up (dnspython import) well inside this
        bounds = [t0]
        for ph in PHASES:
            bounds.append(bounds[-1] + secs[ph])
        spec = ",".join(f"{ph}={secs[ph]:g}" for ph in PHASES)
        for pod, server in PODS.items():
            argv = [*self.ns(pod), str(REPO / ".venv" / "bin" / "python"), str(REPO / "hack" / "podload.py"),
                    "--server", server, "--rate", f"{a.rate:g}", "--timeout", f"{a.timeout:g}",
                    "--max-outstanding", str(a.max_outstanding), "--start-at", f"{t0:.6f}", "--phases", spec,
                    "--out", str(self.outdir / f"{pod}.json")]
            if a.jsonl:
                argv += ["--jsonl", str(self.outdir / f"{pod}.jsonl")]
            with open(self.outdir / f"{pod}.err", "wb") as err:
                self.procs[pod] = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stderr=err)
        actions = {2: ("on", self.kind, *self.fault_arg()), 3: ("off",)}
        tick = t0 + 1.0  # a sample each second on t0's grid, and one at each boundary
        for k, at in enumerate(bounds):
            while (now := time.time()) < at:
                if tick < at - 0.05:
                    if now >= tick:
                        self.sample()
                        while tick <= time.time():
                            tick += 1.0
                    else:
                        time.sleep(tick - now)
                else:
                    time.sleep(at - now)
            while tick <= at + 0.05:
                tick += 1.0
            self.sample(PHASES[k] if k < len(PHASES) else "end")
            if k in actions:
                self.lab("fault", *actions[k])
                self.event(f"fault {' '.join(actions[k])}")
            if k < len(PHASES):
                print(f"faultrun: {self.kind}: {PHASES[k]} ({secs[PHASES[k]]:g} s)", file=sys.stderr, flush=True)
        pods = collect_pods(self.procs, self.outdir, a.timeout + 20)
        return self.report(pods, bounds, secs)

    def fault_arg(self) -> tuple[str, ...]:
        if self.kind == "slow":
            return (f"{self.args.delay:g}",)
        if self.kind == "loss":
            return (str(self.args.loss),)
        return ()

    def stop(self) -> None:
        """Whatever happened: the podloads ended, the fault off and its proxy gone."""
        stop_procs(self.procs)
        try:
            self.lab("fault", "reset", check=False)
        except subprocess.TimeoutExpired:
            print("faultrun: hack/lab.sh fault reset timed out", file=sys.stderr)

    # -- the report ---------------------------------------------------------------------------------

    def report(self, pods: dict[str, Any], bounds: list[float], secs: dict[str, float]) -> dict[str, Any]:
        tagged = {s["tag"]: s for s in self.samples if s["tag"]}
        phases = []
        for k, ph in enumerate(PHASES):
            s0, s1 = tagged[ph], tagged[PHASES[k + 1] if k + 1 < len(PHASES) else "end"]
            agent: dict[str, Any] = {}
            for col, (name, want) in COUNTERS.items():
                v0, v1 = counter(s0["metrics"], name, want), counter(s1["metrics"], name, want)
                agent[col] = None if v0 is None or v1 is None else round(v1 - v0)
            agent["CoreDNS got"] = s1["coredns"] - s0["coredns"]
            seen = [healthy(s["metrics"]) for s in self.samples if s0["t"] <= s["t"] <= s1["t"]]
            agent["cluster healthy"] = transitions(seen)
            phases.append({
                "phase": ph, "start": round(bounds[k], 3), "seconds": secs[ph],
                "pods": {pod: rep["phases"][k] for pod, rep in pods.items()},
                "agent": agent,
            })
        a = self.args
        return {
            "kind": self.kind,
            "what": DESCRIBE[self.kind].format(delay=a.delay, loss=a.loss),
            "settings": {"rate": a.rate, "timeout": a.timeout, "max_outstanding": a.max_outstanding,
                         "delay": a.delay, "loss": a.loss, "fresh_agent": a.fresh_agent,
                         "pods": PODS, "pairs": next(iter(pods.values()))["pairs"]},
            "phases": phases,
            "events": self.events,
            "podload": {pod: {k: v for k, v in rep.items() if k != "phases"} for pod, rep in pods.items()},
            "samples": [{"t": s["t"], "tag": s["tag"], "coredns": s["coredns"],
                         "metrics": {metric_key(n, lb): v for n, lb, v in s["metrics"] if interesting(n)}}
                        for s in self.samples],
        }


def interesting(name: str) -> bool:
    return name.startswith(("coredns_cache_", "nodelocal_upstream_", "coredns_dns_responses", "nodelocal_fallthrough",
                            "coredns_forward_"))


def metric_key(name: str, labels: dict[str, str]) -> str:
    if not labels:
        return name
    return name + "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"


def transitions(vals: list[int | None]) -> str:
    out: list[str] = []
    for v in vals:
        s = "?" if v is None else str(v)
        if not out or out[-1] != s:
            out.append(s)
    return "→".join(out) if out else "?"


def fmt_ms(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.1f}" if v < 100 else f"{v:.0f}"


def table(rows: list[list[str]], right: set[int]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for n, r in enumerate(rows):
        cells = [c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(r)]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def render(rep: dict[str, Any]) -> str:
    s = rep["settings"]
    fault = next(p for p in rep["phases"] if p["phase"] == "fault")
    head = (f"== fault {rep['kind']} ({fault['seconds']:g} s): {rep['what']}\n"
            f"pods: {s['rate']:g} q/s each, a new socket per query, client timeout {s['timeout']:g} s; "
            f"pod-a -> {s['pods']['pod-a']}, pod-b -> {s['pods']['pod-b']}; "
            f"{len(s['pairs'])} (name, type) pairs in turn")
    rows = [["phase", "s", "pod", "sent", "answered", "share", "SERVFAIL", "REFUSED", "timeout", "other",
             "p50 ms", "p99 ms"]]
    dropped = 0
    for p in rep["phases"]:
        for pod, r in p["pods"].items():
            other = r["other"] + r["error"] + r["unfinished"]
            dropped += r["dropped"]
            share = "-" if r["answered_share"] is None else f"{100 * r['answered_share']:.1f}%"
            lat = r["latency_ms"]["answered"]
            rows.append([p["phase"], f"{p['seconds']:g}", pod, str(r["sent"]), str(r["answered"]), share,
                         str(r["SERVFAIL"]), str(r["REFUSED"]), str(r["timeout"]), str(other),
                         fmt_ms(lat["p50"]), fmt_ms(lat["p99"])])
    cols = ["misses", "stale", "prefetch", "to CoreDNS", "up timeout", "agent SERVFAIL", "CoreDNS got",
            "cluster healthy"]
    arows = [["phase", *cols]]
    for p in rep["phases"]:
        arows.append([p["phase"], *("-" if p["agent"][c] is None else str(p["agent"][c]) for c in cols)])
    notes = ("answered = NOERROR or NXDOMAIN; other = other rcodes, ICMP errors"
             + (f"; {dropped} queries not sent (outstanding cap)" if dropped else "")
             + "\nagent: counter deltas from its /metrics (misses, stale = coredns_cache_served_stale_total, "
             "prefetch, to CoreDNS = upstream\nrequests to the cluster group, up timeout = those that timed out, "
             "agent SERVFAIL = SERVFAIL answers it sent);\nCoreDNS got = queries its dnsmasq logged; "
             "cluster healthy = nodelocal_upstream_healthy{group=cluster} as sampled each second")
    return (f"{head}\n{table(rows, set(range(3, 12)))}\n\n{table(arows, set(range(1, 8)))}\n{notes}\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("kinds", nargs="+", choices=tuple(DESCRIBE))
    ap.add_argument("--lab", required=True, help="hack/lab.sh (its environment names the lab)")
    ap.add_argument("--prefix", required=True, help="the lab's namespace prefix")
    ap.add_argument("--state", required=True, help="the lab's state directory")
    ap.add_argument("--seconds", type=float, default=60.0, help="fault phase (default 60)")
    ap.add_argument("--warmup", type=float, default=10.0, help="warm-up phase (default 10)")
    ap.add_argument("--before", type=float, default=20.0, help="before phase (default 20)")
    ap.add_argument("--after", type=float, default=20.0, help="after (recovery) phase (default 20)")
    ap.add_argument("--rate", type=float, default=200.0, help="queries per second per pod (default 200)")
    ap.add_argument("--timeout", type=float, default=2.0, help="client timeout, s (default 2; glibc: 5)")
    ap.add_argument("--max-outstanding", type=int, default=2000, help="per pod (default 2000)")
    ap.add_argument("--delay", type=float, default=3.0, help="slow: seconds CoreDNS answers late (default 3)")
    ap.add_argument("--loss", type=int, default=10, help="loss: percent of packets dropped (default 10)")
    ap.add_argument("--fresh-agent", action="store_true", help="restart the agent before each kind (cold cache)")
    ap.add_argument("--json", help="write all runs here")
    ap.add_argument("--jsonl", action="store_true", help="keep one JSON line per query in the state directory")
    a = ap.parse_args(argv)
    for ph in ("seconds", "warmup", "before", "after"):
        if not 0 < getattr(a, ph) <= 900:
            ap.error(f"--{ph}: between 0 and 900 seconds")
    if not 0 <= a.loss <= 100:
        ap.error("--loss: 0..100")

    def interrupt(signum: int, frame: object) -> None:
        raise Interrupted(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)
    runs = []
    rc = 0
    for n, kind in enumerate(a.kinds):
        run = Run(a, kind, Path(a.state) / "fault" / f"{n}-{kind}")
        try:
            rep = run.run()
        except (Interrupted, RuntimeError, subprocess.TimeoutExpired) as e:
            print(f"faultrun: {kind}: {type(e).__name__}: {e}; the fault is reset", file=sys.stderr)
            rc = 130 if isinstance(e, Interrupted) else 1
            break
        finally:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # the clean-up itself is not cut short
            run.stop()
            signal.signal(signal.SIGINT, interrupt)
        runs.append(rep)
        print(render(rep), flush=True)
    if len(runs) > 1:
        print("== summary: answered share in the fault phase")
        for rep in runs:
            f = next(p for p in rep["phases"] if p["phase"] == "fault")
            print(f"  {rep['kind']:9s}" + "".join(
                f"  {pod}: {100 * (r['answered_share'] or 0):5.1f}%" for pod, r in f["pods"].items()))
    if a.json and runs:
        tmp = a.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"runs": runs}, f, indent=1)
        os.replace(tmp, a.json)
        print(f"faultrun: wrote {a.json}", file=sys.stderr)
    return rc


if __name__ == "__main__":
    sys.exit(main())
