#!/usr/bin/env python3
"""hack/handoverrun.py — what pods see while the lab's agent is replaced (run by `hack/lab.sh handover`).

For each KIND, hack/podload.py runs in pod-a (-> the kube-dns ClusterIP 10.96.0.10) and pod-b (-> 169.254.20.10),
over UDP and over TCP, a new source port (UDP socket or TCP connection) per query, at a steady rate for
--seconds; at --switch-at seconds the agent is replaced:
  rolling-update  hack/lab.sh rolling-update: a new agent beside the old one takes over, then the old one
                  gets SIGTERM (what kubelet does with maxSurge 1); the same build and config
  config-change   the same, the new agent with another config (cache.max_bytes, resolve.prefetch_rate and
                  a changed try_timeout of the cluster group: the zones' upstream chains are unchanged)
  kill-mid        the old agent is stopped (SIGSTOP), a new one started (it connects and waits for the
                  offer), then the old one is killed with -9 in the middle of the handover
  crash-restart   kill -9, then a new agent at once (no handover: the socket file is stale)
The agent's /metrics is scraped every 0.2 s (process_start_time_seconds tells the processes apart) and the
CoreDNS (dnsmasq) log is counted, so each run reports: queries sent and failed (not NOERROR/NXDOMAIN) per
pod and protocol; the cache hit ratio of the old process over the 5 s before the switch and of the new
one over its first second of metrics; CoreDNS queries per second before and in the 2 s after; and how many
queries each process received (the old one logs it when it stops, the new one's /metrics).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PY = str(ROOT / ".venv" / "bin" / "python")
KINDS = ("rolling-update", "config-change", "kill-mid", "crash-restart")
SERIES = ("process_start_time_seconds", "coredns_cache_hits_total", "coredns_cache_misses_total",
          "coredns_dns_requests_total")


class Run:
    def __init__(self, args: argparse.Namespace, kind: str) -> None:
        self.args = args
        self.kind = kind
        self.ns = f"{args.prefix}-node"
        self.samples: list[tuple[float, dict[str, float], int]] = []  # (time, series sums, CoreDNS log lines)
        self.stop = threading.Event()

    def lab(self, *argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", self.args.lab, *argv], capture_output=True, text=True, timeout=120,
                              env={**os.environ, "LAB_PREFIX": self.args.prefix, "LAB_STATE": self.args.state,
                                   **(env or {})})

    def coredns_lines(self) -> int:
        try:
            return Path(self.args.state, "coredns.log").read_text(errors="replace").count("query[")
        except OSError:
            return 0

    def scrape(self) -> None:
        deadline = time.monotonic() + self.args.seconds + 60  # bounded whatever happens
        while not self.stop.is_set() and time.monotonic() < deadline:
            t = time.time()
            out = subprocess.run(["ip", "netns", "exec", self.ns, "curl", "-s", "-m", "1",
                                  "http://127.0.0.1:9253/metrics"], capture_output=True, text=True).stdout
            sums: dict[str, float] = {}
            for line in out.splitlines():
                for s in SERIES:
                    if line.startswith(s + " ") or line.startswith(s + "{"):
                        sums[s] = sums.get(s, 0.0) + float(line.rsplit(" ", 1)[1])
            if "process_start_time_seconds" in sums:
                self.samples.append((t, sums, self.coredns_lines()))
            time.sleep(0.2)

    def switch(self) -> str:
        state = Path(self.args.state)
        if self.kind == "rolling-update":
            r = self.lab("rolling-update")
        elif self.kind == "config-change":
            base = (state / "agent.yaml").read_text()
            changed = state / "agent-changed.yaml"
            changed.write_text(base.replace('cluster: {servers: ["10.96.0.11"]}',
                                            'cluster: {servers: ["10.96.0.11"], try_timeout: 1.5}')
                               + "cache: {max_bytes: 16777216}\nresolve: {prefetch_rate: 50}\n")
            r = self.lab("rolling-update", "--config", str(changed))
        elif self.kind == "kill-mid":
            old = int((state / "agent.pid").read_text())
            os.kill(old, signal.SIGSTOP)
            proc = subprocess.Popen(["bash", self.args.lab, "rolling-update"], stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True,
                                    env={**os.environ, "LAB_PREFIX": self.args.prefix, "LAB_STATE": self.args.state})
            time.sleep(self.args.kill_after)  # the new agent has connected and waits for the offer
            os.kill(old, signal.SIGKILL)
            out, _ = proc.communicate(timeout=60)
            return out
        else:
            r = self.lab("crash-restart")
        return r.stdout + r.stderr

    def run(self) -> dict[str, Any]:
        a = self.args
        log_from = len(Path(a.state, "agent.log").read_text(errors="replace").splitlines())
        t0 = time.time() + 1.5
        phases = f"before={a.switch_at},after={a.seconds - a.switch_at}"
        loads: list[tuple[str, str, str, subprocess.Popen[bytes], str]] = []
        tmp = tempfile.mkdtemp(prefix="handoverrun-")
        for pod, server in (("pod-a", "10.96.0.10"), ("pod-b", "169.254.20.10")):
            for proto, rate in (("udp", a.udp_rate / 2), ("tcp", a.tcp_rate / 2)):
                if rate <= 0:
                    continue
                out = os.path.join(tmp, f"{pod}-{proto}.json")
                cmd = ["ip", "netns", "exec", f"{a.prefix}-{pod}", PY, str(ROOT / "hack" / "podload.py"),
                       "--server", server, "--rate", str(rate), "--timeout", str(a.timeout), "--phases", phases,
                       "--start-at", str(t0), "--out", out]
                if proto == "tcp":
                    cmd.append("--tcp")
                loads.append((pod, server, proto, subprocess.Popen(cmd), out))
        scraper = threading.Thread(target=self.scrape, daemon=True)
        scraper.start()
        time.sleep(max(0.0, t0 + a.switch_at - time.time()))
        t_switch = time.time()
        said = self.switch()
        t_done = time.time()
        for *_x, p, _o in loads:
            p.wait(timeout=a.seconds + 60)
        self.stop.set()
        scraper.join(5)
        pods = []
        for pod, server, proto, _p, out in loads:
            doc = json.loads(Path(out).read_text())
            sent = sum(ph["sent"] for ph in doc["phases"])
            answered = sum(ph["answered"] for ph in doc["phases"])
            after = doc["phases"][1]
            pods.append({"pod": pod, "server": server, "proto": proto, "sent": sent, "failed": sent - answered,
                         "timeouts": sum(ph["timeout"] for ph in doc["phases"]),
                         "errors": sum(ph["error"] for ph in doc["phases"]),
                         "p99_after_ms": after["latency_ms"]["answered"]["p99"],
                         "per_second_after": after["per_second"][:4]})
        log = Path(a.state, "agent.log").read_text(errors="replace").splitlines()[log_from:]
        received = [int(m.group(1)) for line in log if (m := re.search(r"this process received (\d+) queries", line))]
        return {"kind": self.kind, "switch_s": round(t_done - t_switch, 2), "pods": pods, **self.ratios(t_switch),
                "old_process_received": received, "new_process_received": self.final("coredns_dns_requests_total"),
                "lab_said": said.strip().splitlines()[-3:]}

    def final(self, series: str) -> int | None:
        return int(self.samples[-1][1].get(series, 0)) if self.samples else None

    def ratios(self, t_switch: float) -> dict[str, Any]:
        def ratio(a: dict[str, float], b: dict[str, float] | None) -> float | None:
            h = a.get("coredns_cache_hits_total", 0.0) - (b or {}).get("coredns_cache_hits_total", 0.0)
            m = a.get("coredns_cache_misses_total", 0.0) - (b or {}).get("coredns_cache_misses_total", 0.0)
            return round(h / (h + m), 4) if h + m > 0 else None

        s = self.samples
        if not s:
            return {}
        old_start = s[0][1]["process_start_time_seconds"]
        old = [x for x in s if x[1]["process_start_time_seconds"] == old_start]
        new = [x for x in s if x[1]["process_start_time_seconds"] != old_start]
        before = [x for x in old if t_switch - 5 <= x[0] <= t_switch]
        out: dict[str, Any] = {"hit_ratio_before": ratio(before[-1][1], before[0][1]) if len(before) > 1 else None}
        if new:
            first = new[0]
            later = next((x for x in new if x[0] >= first[0] + 1.0), new[-1])
            # From the new process's start (its counters begin at 0) to about a second after it first answered.
            out["hit_ratio_new_first_second"] = ratio(later[1], None)
            out["new_metrics_from_s_after_switch"] = round(first[0] - t_switch, 2)
        pre = [x for x in s if t_switch - 5 <= x[0] <= t_switch]
        post = [x for x in s if t_switch <= x[0] <= t_switch + 2.2]
        if len(pre) > 1:
            out["coredns_qps_before"] = round((pre[-1][2] - pre[0][2]) / (pre[-1][0] - pre[0][0]), 1)
        if pre and post:
            out["coredns_queries_2s_after"] = post[-1][2] - pre[-1][2]
        return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("kinds", nargs="+", choices=(*KINDS, "all"))
    ap.add_argument("--lab", required=True)
    ap.add_argument("--prefix", required=True)
    ap.add_argument("--state", required=True)
    ap.add_argument("--seconds", type=float, default=30.0, help="load per run (default 30)")
    ap.add_argument("--switch-at", type=float, default=10.0, help="seconds into the load (default 10)")
    ap.add_argument("--udp-rate", type=float, default=1600.0, help="UDP q/s over both pods (default 1600)")
    ap.add_argument("--tcp-rate", type=float, default=400.0, help="TCP q/s over both pods (default 400)")
    ap.add_argument("--timeout", type=float, default=2.0, help="client timeout (default 2 s)")
    ap.add_argument("--kill-after", type=float, default=0.8, help="kill-mid: seconds between the new agent's "
                                                                   "start and kill -9 of the stopped old one")
    ap.add_argument("--json", help="write every run's figures here")
    a = ap.parse_args()
    if a.seconds > 300 or a.udp_rate + a.tcp_rate > 5000 or not 0 < a.switch_at < a.seconds:
        ap.error("at most 300 s and 5000 q/s, and --switch-at inside the run")
    kinds = list(KINDS) if "all" in a.kinds else a.kinds
    results = []
    for kind in kinds:
        r = Run(a, kind).run()
        results.append(r)
        print(f"== {kind}: switch took {r['switch_s']} s")
        for p in r["pods"]:
            print(f"   {p['pod']} -> {p['server']:<13} {p['proto']}: sent {p['sent']:>6}, failed {p['failed']:>4} "
                  f"(timeouts {p['timeouts']}, errors {p['errors']}), p99 after {p['p99_after_ms']} ms")
        print(f"   hit ratio: before {r.get('hit_ratio_before')}, new process's first second "
              f"{r.get('hit_ratio_new_first_second')}; CoreDNS q/s before {r.get('coredns_qps_before')}, "
              f"queries in the 2 s after {r.get('coredns_queries_2s_after')}")
        print(f"   received: old process {r['old_process_received']}, new process {r['new_process_received']}")
        time.sleep(2)
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
