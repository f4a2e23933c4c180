#!/usr/bin/env python3
"""hack/floodrun.py — one pod floods the agent while another asks as usual (run it as `hack/lab.sh flood`).

In a lab that is up with its agent running:
  1. hack/podload.py in pod-b (-> 169.254.20.10): the usual names (services, a headless one, NODATA, a
     search-path NXDOMAIN, an outside name) at --normal-rate q/s, over three phases on one clock:
     before (--before s), flood (--seconds s), after (--after s);
  2. hack/podload.py in pod-a (-> the kube-dns ClusterIP 10.96.0.10) during the flood phase only: a new
     random name under --zone for every query (a random-subdomain attack through the cache), --rate q/s;
  3. the agent's RSS (VmRSS of /proc/PID/status) every --rss-every s, and its /metrics at each phase edge;
     with --fault stop, CoreDNS answers nothing during the flood (`hack/lab.sh fault on stop`): every miss
     waits its whole timeout, so the flood's misses pile up and the per-client cap is what holds them;
  4. then a query from an address outside the allowed ranges: the `outside` namespace gets a second
     address (198.51.100.7, reached by the node through a default route via `outside`, as the internet
     is) and asks 169.254.20.10 for a cluster name from it: the answer must be REFUSED. The address and
     routes are removed afterwards, also on failure.
Report: per phase and pod, queries sent, answered (NOERROR/NXDOMAIN) and their share, REFUSED, timeouts,
p50/p99 of the answered; the agent's RSS (start, peak, end, and per second); counter deltas (limited
clients by reason, cache misses, entries, bytes, drops); the outside check. --json FILE keeps it all.
Stdlib only, plus the lab's scripts; bounded: --seconds <= 300, --rate <= 5000 (podload's own bound).
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

# hack/ is not a package: imported from its folder
from faultrun import collect_pods, counter, parse_metrics, stop_procs, table

REPO = Path(__file__).resolve().parents[1]
LINK_LOCAL = "169.254.20.10"
KUBE_DNS = "10.96.0.10"
OUTSIDE = "10.250.0.53"  # the outside namespace's address (hack/lab.sh)
NODE_OUTSIDE = "10.250.0.1"  # the node's address towards it
STRANGER = "198.51.100.7"  # RFC 5737: not the node's, not a pod's, reached only through a default route
PHASES = ("before", "flood", "after")
COUNTERS = {
    "limited acl": ("nodelocal_client_limited_total", {"reason": "acl"}),
    "limited pending": ("nodelocal_client_limited_total", {"reason": "pending"}),
    "misses": ("coredns_cache_misses_total", {}),
    "dropped busy": ("nodelocal_dropped_queries_total", {"reason": "busy"}),
    "dropped late": ("nodelocal_dropped_queries_total", {"reason": "late"}),
    "concurrency refused": ("coredns_forward_max_concurrent_rejects_total", {}),
}
GAUGES = {"cache entries": ("coredns_cache_entries", {}), "cache bytes": ("nodelocal_cache_bytes", {})}


class Flood:
    def __init__(self, args: argparse.Namespace, outdir: Path) -> None:
        self.args = args
        self.outdir = outdir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.rss: list[tuple[float, int]] = []  # (time, VmRSS KiB)
        self.samples: dict[str, list[tuple[str, dict[str, str], float]]] = {}
        self.stop_rss = threading.Event()
        self.pid = int((Path(args.state) / "agent.pid").read_text().split()[0])
        self.cleanups: list[list[str]] = []

    def ns(self, pod: str) -> list[str]:
        return ["ip", "netns", "exec", f"{self.args.prefix}-{pod}"]

    def scrape(self) -> list[tuple[str, dict[str, str], float]]:
        p = subprocess.run([*self.ns("node"), "curl", "-s", "-m", "2", "http://127.0.0.1:9253/metrics"],
                           capture_output=True, text=True, timeout=10, check=False)
        return parse_metrics(p.stdout) if p.returncode == 0 else []

    def rss_kib(self) -> int | None:
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        except OSError:
            return None
        return None

    def sample_rss(self) -> None:
        while not self.stop_rss.is_set():
            kib = self.rss_kib()
            if kib is not None:
                self.rss.append((time.time(), kib))
            self.stop_rss.wait(self.args.rss_every)

    def podload(self, pod: str, server: str, extra: list[str]) -> None:
        argv = [*self.ns(pod), str(REPO / ".venv" / "bin" / "python"), str(REPO / "hack" / "podload.py"),
                "--server", server, "--timeout", f"{self.args.timeout:g}", "--out", str(self.outdir / f"{pod}.json"),
                *extra]
        with open(self.outdir / f"{pod}.err", "wb") as err:
            self.procs[pod] = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stderr=err)

    def run(self) -> dict[str, Any]:
        a = self.args
        self.outdir.mkdir(parents=True, exist_ok=True)
        secs = {"before": a.before, "flood": a.seconds, "after": a.after}
        t0 = time.time() + 1.5  # podload's start-up (dnspython import) well inside this
        bounds = [t0]
        for ph in PHASES:
            bounds.append(bounds[-1] + secs[ph])
        threading.Thread(target=self.sample_rss, daemon=True).start()
        self.podload("pod-b", LINK_LOCAL, ["--rate", f"{a.normal_rate:g}", "--start-at", f"{t0:.6f}", "--phases",
                                           ",".join(f"{ph}={secs[ph]:g}" for ph in PHASES)])
        self.podload("pod-a", KUBE_DNS, ["--rate", f"{a.rate:g}", "--start-at", f"{bounds[1]:.6f}", "--phases",
                                         f"flood={a.seconds:g}", "--random-under", a.zone, "--types", "A",
                                         "--max-outstanding", str(a.max_outstanding)])
        for k, at in enumerate(bounds):
            time.sleep(max(0.0, at - time.time()))
            self.samples[PHASES[k] if k < len(PHASES) else "end"] = self.scrape()
            if a.fault and k in (1, 2):
                self.lab("fault", *(("on", a.fault) if k == 1 else ("off",)))
            if k < len(PHASES):
                print(f"floodrun: {PHASES[k]} ({secs[PHASES[k]]:g} s)", file=sys.stderr, flush=True)
        pods = collect_pods(self.procs, self.outdir, a.timeout + 20)
        time.sleep(1.0)  # one more RSS sample after the flood's last answers
        self.stop_rss.set()
        outside = self.outside_check()
        return self.report(pods, bounds, outside)

    def lab(self, *argv: str) -> None:
        self.sh([self.args.lab, *argv])

    def sh(self, argv: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
        if check and p.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({p.returncode}): {p.stderr.strip()}")
        return p

    def outside_check(self) -> dict[str, Any]:
        """A query from STRANGER (outside the node's and pods' ranges) to 169.254.20.10: REFUSED expected."""
        node, out = self.ns("node"), self.ns("outside")
        had_default = "default" in self.sh([*node, "ip", "-4", "route", "show", "default"]).stdout
        try:
            self.sh([*out, "ip", "addr", "add", f"{STRANGER}/32", "dev", "eth0"])
            self.cleanups.append([*out, "ip", "addr", "del", f"{STRANGER}/32", "dev", "eth0"])
            self.sh([*out, "ip", "route", "add", f"{LINK_LOCAL}/32", "via", NODE_OUTSIDE])
            self.cleanups.append([*out, "ip", "route", "del", f"{LINK_LOCAL}/32", "via", NODE_OUTSIDE])
            if not had_default:  # the internet is behind the node's default route: not an allowed range
                self.sh([*node, "ip", "route", "add", "default", "via", OUTSIDE])
                self.cleanups.append([*node, "ip", "route", "del", "default", "via", OUTSIDE])
            before = counter(self.scrape(), "nodelocal_client_limited_total", {"reason": "acl"})
            dig = self.sh([*out, "dig", "+time=2", "+tries=1", "-b", STRANGER, f"@{LINK_LOCAL}",
                           "web.default.svc.cluster.local", "A"], check=False).stdout
            after = counter(self.scrape(), "nodelocal_client_limited_total", {"reason": "acl"})
        finally:
            self.cleanup()
        status = next((ln.split("status: ")[1].split(",")[0] for ln in dig.splitlines() if "status: " in ln),
                      "no reply")
        answers = next((ln for ln in dig.splitlines() if "ANSWER: " in ln), "")
        return {"from": STRANGER, "to": LINK_LOCAL, "status": status, "header": answers.strip(),
                "acl_counted": None if before is None or after is None else round(after - before)}

    def cleanup(self) -> None:
        while self.cleanups:
            self.sh(self.cleanups.pop(), check=False)

    def stop(self) -> None:
        self.stop_rss.set()
        stop_procs(self.procs)
        if self.args.fault:
            self.sh([self.args.lab, "fault", "reset"], check=False)
        self.cleanup()

    def report(self, pods: dict[str, Any], bounds: list[float], outside: dict[str, Any]) -> dict[str, Any]:
        phases = []
        for k, ph in enumerate(PHASES):
            s0, s1 = self.samples[ph], self.samples[PHASES[k + 1] if k + 1 < len(PHASES) else "end"]
            agent: dict[str, Any] = {}
            for col, (name, want) in COUNTERS.items():
                v0, v1 = counter(s0, name, want), counter(s1, name, want)
                agent[col] = None if v0 is None or v1 is None else round(v1 - v0)
            for col, (name, want) in GAUGES.items():
                v = counter(s1, name, want)
                agent[f"{col} at end"] = None if v is None else round(v)
            rss = [kib for t, kib in self.rss if bounds[k] <= t < bounds[k + 1]]
            agent["rss MiB max"] = round(max(rss) / 1024, 1) if rss else None
            rows = {}
            for pod, rep in pods.items():
                for p in rep["phases"]:
                    if p["phase"] == ph:
                        rows[pod] = p
            phases.append({"phase": ph, "seconds": bounds[k + 1] - bounds[k], "pods": rows, "agent": agent})
        rss = [kib for _t, kib in self.rss]
        return {
            "args": {k: v for k, v in vars(self.args).items() if k not in ("lab",)},
            "phases": phases,
            "rss_kib": [[round(t - bounds[0], 2), kib] for t, kib in self.rss],
            "rss_mib": {"start": round(rss[0] / 1024, 1), "peak": round(max(rss) / 1024, 1),
                        "end": round(rss[-1] / 1024, 1)} if rss else {},
            "outside": outside,
        }


def fmt_ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def render(rep: dict[str, Any]) -> str:
    a = rep["args"]
    out = [f"flood: pod-a sends a new random name under {a['zone']} at {a['rate']:g} q/s for {a['seconds']:g} s; "
           f"pod-b asks the usual names at {a['normal_rate']:g} q/s throughout"
           + (f"; CoreDNS fault '{a['fault']}' during the flood" if a["fault"] else "")]
    rows = [["phase", "pod", "sent", "answered", "share", "REFUSED", "timeout", "p50 ms", "p99 ms"]]
    for ph in rep["phases"]:
        for pod, p in sorted(ph["pods"].items()):
            sent = p["sent"]
            ans = p["answered"]
            lat = p["latency_ms"]["answered"]
            rows.append([ph["phase"], pod, str(sent), str(ans), f"{100.0 * ans / sent:.2f}%" if sent else "-",
                         str(p["REFUSED"]), str(p["timeout"]), fmt_ms(lat["p50"]), fmt_ms(lat["p99"])])
    out.append(table(rows, {2, 3, 4, 5, 6, 7, 8}))
    cols = list(rep["phases"][0]["agent"])
    rows = [["phase", *cols]]
    for ph in rep["phases"]:
        rows.append([ph["phase"], *("-" if ph["agent"][c] is None else str(ph["agent"][c]) for c in cols)])
    out.append("agent, per phase (counter deltas; gauges at the phase's end):")
    out.append(table(rows, set(range(1, len(cols) + 1))))
    r = rep["rss_mib"]
    if r:
        series = " ".join(f"{kib / 1024:.0f}" for _t, kib in rep["rss_kib"][:: max(1, len(rep["rss_kib"]) // 40)])
        out.append(f"agent RSS MiB: start {r['start']}, peak {r['peak']}, end {r['end']}; over time: {series}")
    o = rep["outside"]
    out.append(f"outside: {o['from']} -> {o['to']} web.default.svc.cluster.local A: {o['status']} ({o['header']}); "
               f"counted as acl: {o['acl_counted']}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lab", required=True, help="hack/lab.sh (passed by it)")
    ap.add_argument("--prefix", required=True)
    ap.add_argument("--state", required=True)
    ap.add_argument("--seconds", type=float, default=30.0, help="the flood's length (default 30)")
    ap.add_argument("--rate", type=float, default=1000.0, help="flood q/s from pod-a (default 1000)")
    ap.add_argument("--normal-rate", type=float, default=100.0, help="pod-b's q/s (default 100)")
    ap.add_argument("--before", type=float, default=5.0)
    ap.add_argument("--after", type=float, default=5.0)
    ap.add_argument("--timeout", type=float, default=2.0, help="the pods' client timeout (default 2)")
    ap.add_argument("--max-outstanding", type=int, default=4000, help="flood queries waiting at once")
    ap.add_argument("--zone", default="svc.cluster.local",
                    help="the flood's names are random labels under it (default svc.cluster.local: NXDOMAIN, cached)")
    ap.add_argument("--fault", choices=("stop",), help="CoreDNS answers nothing during the flood")
    ap.add_argument("--rss-every", type=float, default=0.5)
    ap.add_argument("--json", help="write the whole report here")
    ap.add_argument("--outdir", help="the podloads' files (default STATE/flood)")
    a = ap.parse_args(argv)
    if not 0 < a.seconds <= 300 or not 0 < a.rate <= 5000 or not 0 < a.normal_rate <= 5000:
        ap.error("bounds: 0 < --seconds <= 300, 0 < --rate and --normal-rate <= 5000")
    run = Flood(a, Path(a.outdir or Path(a.state) / "flood"))

    def interrupted(_sig: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    try:
        rep = run.run()
    except (KeyboardInterrupt, RuntimeError, subprocess.TimeoutExpired) as e:
        print(f"floodrun: stopped: {e or 'interrupted'}", file=sys.stderr)
        return 1
    finally:
        run.stop()
    print(render(rep))
    if a.json:
        Path(a.json).write_text(json.dumps(rep, indent=1) + "\n")
    return 0 if rep["outside"]["status"] == "REFUSED" else 1


if __name__ == "__main__":
    sys.exit(main())
