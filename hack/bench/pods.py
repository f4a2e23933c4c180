#!/usr/bin/env python3
"""Helpers for hack/bench_pods.sh: the pod-shaped workload (zones and query files), the agent's config,
a readiness probe, process CPU, and the final report.

Standard library only, except `agentconf`, which needs PyYAML (the agent's virtualenv has it).

  pods.py gen DIR [--seed N ...]              zone files, nsd zone stanzas, warm.txt, queries.txt and
                                              workload.json (the parameters, expected rcodes, a model)
  pods.py agentconf FILE --auth H:P ...       the agent's YAML config, with --extra YAML merged in
  pods.py probe PORT NAME [SECONDS]           wait until 127.0.0.1:PORT answers NAME/A (bounded)
  pods.py portfree PORT...                    exit 1 (naming it) if a 127.0.0.1 UDP or TCP port is taken
  pods.py metrics URL FILE                    save a /metrics scrape (bounded)
  pods.py treeticks PID                       utime+stime (clock ticks) of PID and all its descendants
  pods.py report DIR [--json F]               read DIR/facts and the saved outputs, print the table

The workload is what a node's pods send through kubelet's resolv.conf (`search <ns>.svc.cluster.local
svc.cluster.local cluster.local`, `options ndots:5`): every name with fewer than 5 dots is tried with
each search domain in turn, then as written, A and AAAA for each candidate, until a candidate exists.
So `web` (from a pod in `default`) costs 2 queries, `web.other` (another namespace) 4, and
`api.example.com` 8: 6 NXDOMAINs, then the real ones. Which lookups are made is drawn from a seeded
random generator (Zipf-like popularity), so the same arguments always give the same files.
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import random
import re
import socket
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report as base  # hack/bench/report.py: dnsperf parsing, port check, scrapes

SERVERS = ("agent", "unbound", "dnsmasq")
CLUSTER_DOMAIN = "cluster.local"
OUTSIDE_ZONES = ("example.com", "example.net", "example.org")
# The agent's caps for these zones (config/nodelocal.yaml defaults; cluster zone: denial 5): the model
# below and the peers' settings in bench_pods.sh use the same figures.
SUCCESS_MAX_TTL = 30
DENIAL_MAX_TTL = 30
CLUSTER_DENIAL_MAX_TTL = 5

SERVICE_WORDS = (
    "kubernetes", "web", "api", "auth", "cart", "redis", "postgres", "mysql", "kafka", "zookeeper",
    "elasticsearch", "grafana", "prometheus", "payments", "orders", "users", "search", "frontend", "backend",
    "gateway", "checkout", "inventory", "catalog", "email", "notifications", "ledger", "billing", "session",
    "memcached", "queue", "worker", "metrics", "logging", "config", "vault", "consul", "minio", "rabbitmq",
    "nginx", "envoy",
)
OUTSIDE_LABELS = (
    "api", "www", "cdn", "auth", "login", "storage", "s3", "registry", "static", "img", "pkg", "mirror",
    "update", "telemetry", "events", "ingest", "graph", "oauth2", "sso", "mail", "smtp", "hooks", "queue",
    "db", "logs", "vault", "ntp", "sts", "dl", "assets",
)
REGIONS = ("eu-west-1", "us-east-1", "ap-south-1")


# ---------------------------------------------------------------------------------------------------
# the workload

class Zipf:
    """Rank i (0-based) drawn with probability proportional to 1 / (i + 1) ** s."""

    def __init__(self, n: int, s: float) -> None:
        acc = 0.0
        self.cum: list[float] = []
        for i in range(n):
            acc += 1.0 / (i + 1) ** s
            self.cum.append(acc)
        self.total = acc

    def draw(self, rng: random.Random) -> int:
        return min(bisect.bisect_left(self.cum, rng.random() * self.total), len(self.cum) - 1)


def _namespaces(n: int) -> list[str]:
    base_ns = ["default", "kube-system", "monitoring", "ingress", "payments", "shop", "data", "auth"]
    return [base_ns[i] if i < len(base_ns) else f"team{i - len(base_ns) + 1}" for i in range(n)]


def gen(a: argparse.Namespace) -> int:
    if not (1 <= a.services <= 5000 and 1 <= a.outside <= 5000 and 1 <= a.namespaces <= 100):
        raise SystemExit("need 1 <= services, outside <= 5000 and 1 <= namespaces <= 100")
    if not (0 <= a.cluster_share <= 1 and 0 <= a.cross_ns <= 1 and 0 <= a.aaaa_share <= 1
            and 0 <= a.cname_share <= 1 and a.zipf >= 0):
        raise SystemExit("shares must be 0..1, zipf >= 0")
    total_queries = a.qps * (a.duration + a.warmup)
    if total_queries > 20_000_000:
        raise SystemExit("qps * (duration + warmup) must be at most 20,000,000 queries")
    rng = random.Random(a.seed)
    out = Path(a.dir)
    (out / "zones").mkdir(parents=True, exist_ok=True)

    # --- the cluster: services spread over namespaces (busier namespaces first, Zipf-like)
    nss = _namespaces(a.namespaces)
    ns_pick = Zipf(len(nss), 1.0)
    services: list[tuple[str, str]] = []  # (name, namespace), popularity rank = index
    for i in range(a.services):
        word = SERVICE_WORDS[i % len(SERVICE_WORDS)]
        name = word if i < len(SERVICE_WORDS) else f"{word}-{i // len(SERVICE_WORDS)}"
        ns = "default" if name == "kubernetes" else nss[ns_pick.draw(rng)]
        services.append((name, ns))
    rng.shuffle(services)  # popularity independent of the name
    lines = [
        f"$ORIGIN {CLUSTER_DOMAIN}.",
        f"$TTL {a.cluster_ttl}",
        # CoreDNS's kubernetes plugin: SOA minimum = its ttl (5), so NXDOMAIN/NODATA are cached 5 s
        f"@ IN SOA ns.dns.{CLUSTER_DOMAIN}. hostmaster.{CLUSTER_DOMAIN}. 1 7200 1800 86400 {a.cluster_ttl}",
        "@ IN NS ns.dns",
        "ns.dns IN A 10.96.0.10",
    ]
    # for bench_pods.sh --overload (hack/bench/overload.py names): every name under miss.<zone> exists (a
    # miss each time when each is asked once), and hit.cluster.local's names live long (the caps cut
    # them to 30 s); no lookup of the workload ends under them
    lines += ["*.miss IN A 10.99.0.1", "*.hit 300 IN A 10.98.0.1"]
    cluster_fqdns: set[str] = set()
    for i, (name, ns) in enumerate(services):
        lines.append(f"{name}.{ns}.svc IN A 10.96.{i // 250}.{i % 250 + 1}")
        cluster_fqdns.add(f"{name}.{ns}.svc.{CLUSTER_DOMAIN}")
    (out / "zones" / f"{CLUSTER_DOMAIN}.zone").write_text("\n".join(lines) + "\n")

    # --- outside names: leaves only (none is an ancestor of another), some CNAMEs to an in-zone target,
    # some with AAAA
    candidates = [f"{label}.{zone}" for zone in OUTSIDE_ZONES for label in OUTSIDE_LABELS]
    candidates += [f"{label}.{region}.{zone}" for zone in OUTSIDE_ZONES for region in REGIONS
                   for label in OUTSIDE_LABELS]
    candidates += [f"{label}-{k}.{zone}" for k in range(2, 60) for zone in OUTSIDE_ZONES for label in OUTSIDE_LABELS]
    if a.outside > len(candidates):
        raise SystemExit(f"at most {len(candidates)} outside names")
    rng.shuffle(candidates)
    outside = candidates[: a.outside]
    zone_lines: dict[str, list[str]] = {
        z: [f"$ORIGIN {z}.", f"$TTL {a.outside_ttl}",
            f"@ IN SOA ns1.{z}. hostmaster.{z}. 1 7200 1800 1209600 {a.outside_ttl}",
            f"@ IN NS ns1.{z}.", "ns1 IN A 192.0.2.53"]
        for z in OUTSIDE_ZONES
    }
    exists: dict[str, tuple[bool, bool]] = {}  # name -> (has A data, has AAAA data)
    for i, name in enumerate(outside):
        zone = next(z for z in OUTSIDE_ZONES if name.endswith("." + z))
        rel = name[: -len(zone) - 1]
        has6 = rng.random() < a.aaaa_share
        owner = rel
        if rng.random() < a.cname_share:
            owner = f"edge-{i}"
            zone_lines[zone].append(f"{rel} IN CNAME {owner}")
        zone_lines[zone].append(f"{owner} IN A 203.0.{113 if i < 250 else 114}.{i % 250 + 1}")
        if has6:
            zone_lines[zone].append(f"{owner} IN AAAA 2001:db8::{i + 1:x}")
        exists[name] = (True, has6)
    zone_lines["example.net"].append("*.miss IN A 198.51.100.1")  # --overload --miss-zone outside
    for z in OUTSIDE_ZONES:
        (out / "zones" / f"{z}.zone").write_text("\n".join(zone_lines[z]) + "\n")
    stanzas = [f'zone:\n    name: "{z}"\n    zonefile: "{(out / "zones" / f"{z}.zone").resolve()}"\n'
               for z in (CLUSTER_DOMAIN, *OUTSIDE_ZONES)]
    (out / "nsd.zones.conf").write_text("\n".join(stanzas))

    # --- lookups, expanded through the search path; warm.txt then queries.txt from one stream
    svc_pick = Zipf(len(services), a.zipf)
    out_pick = Zipf(len(outside), a.zipf)
    stats = {"lookups": 0, "cluster_lookups": 0, "cross_ns_lookups": 0, "outside_lookups": 0}
    rcodes = {"NOERROR": 0, "NODATA": 0, "NXDOMAIN": 0}
    ttl_of: dict[tuple[str, str], int] = {}

    def answer(qname: str, qtype: str) -> str:
        if qname in cluster_fqdns:
            return "NOERROR" if qtype == "A" else "NODATA"
        if qname in exists:
            return "NOERROR" if (qtype == "A" or exists[qname][1]) else "NODATA"
        return "NXDOMAIN"

    def effective_ttl(qname: str, code: str) -> int:
        if qname.endswith("." + CLUSTER_DOMAIN):
            return min(a.cluster_ttl, SUCCESS_MAX_TTL if code == "NOERROR" else CLUSTER_DENIAL_MAX_TTL)
        return min(a.outside_ttl, SUCCESS_MAX_TTL if code == "NOERROR" else DENIAL_MAX_TTL)

    def lookup(emit: Callable[[str, str], None], r: random.Random) -> int:
        stats["lookups"] += 1
        if r.random() < a.cluster_share:
            stats["cluster_lookups"] += 1
            name, svc_ns = services[svc_pick.draw(r)]
            pod_ns, typed = svc_ns, name
            if len(nss) > 1 and r.random() < a.cross_ns:
                stats["cross_ns_lookups"] += 1
                while pod_ns == svc_ns:
                    pod_ns = nss[ns_pick.draw(r)]
                typed = f"{name}.{svc_ns}"
        else:
            stats["outside_lookups"] += 1
            typed = outside[out_pick.draw(r)]
            pod_ns = nss[ns_pick.draw(r)]
        n = 0
        search = [f"{pod_ns}.svc.{CLUSTER_DOMAIN}", f"svc.{CLUSTER_DOMAIN}", CLUSTER_DOMAIN]
        cands = [f"{typed}.{s}" for s in search] if typed.count(".") < 5 else []
        for cand in [*cands, typed]:
            found = False
            for qtype in ("A", "AAAA"):
                code = answer(cand, qtype)
                rcodes[code] += 1
                found = found or code == "NOERROR"
                ttl_of[(cand, qtype)] = effective_ttl(cand, code)
                emit(cand, qtype)
                n += 1
            if found:
                break
        return n

    # The model: an ideal cache with the agent's TTL caps (no prefetch, no size limit, no upstream
    # latency) fed the same stream at the offered rate; its miss count is the least upstream traffic.
    expiry: dict[tuple[str, str], float] = {}
    model = {"warm_queries": 0, "queries": 0, "misses": 0}
    clock = [0]

    def writer(f: Any, measured: bool) -> Callable[[str, str], None]:
        def emit(qname: str, qtype: str) -> None:
            f.write(f"{qname} {qtype}\n")
            t = clock[0] / a.qps
            clock[0] += 1
            key = (qname, qtype)
            hit = expiry.get(key, -1.0) > t
            if not hit:
                expiry[key] = t + ttl_of[key]
            if measured:
                if model["queries"] < expected_sent:  # what dnsperf sends in the window
                    model["queries"] += 1
                    model["misses"] += 0 if hit else 1
            else:
                model["warm_queries"] += 1
        return emit

    warm_n = a.qps * a.warmup
    expected_sent = a.qps * a.duration
    # The measured file runs a little past duration * qps so that dnsperf never loops over it.
    meas_n = int(a.qps * a.duration * 1.05) + 100
    # the two files from streams of their own, so that the measured queries do not depend on --warmup
    warm_rng, measure_rng = random.Random(a.seed * 3 + 1), random.Random(a.seed * 3 + 2)
    with open(out / "warm.txt", "w") as f:
        emit = writer(f, False)
        n = 0
        while n < max(warm_n, 1):
            n += lookup(emit, warm_rng)
    for k in stats:
        stats[k] = 0
    for k in rcodes:
        rcodes[k] = 0
    with open(out / "queries.txt", "w") as f:
        emit = writer(f, True)
        n = 0
        while n < meas_n:
            n += lookup(emit, measure_rng)
        distinct = len(expiry)
    info = {
        "seed": a.seed, "services": a.services, "outside": a.outside, "namespaces": nss,
        "cluster_share": a.cluster_share, "cross_ns": a.cross_ns, "zipf": a.zipf, "aaaa_share": a.aaaa_share,
        "cname_share": a.cname_share, "cluster_ttl": a.cluster_ttl, "outside_ttl": a.outside_ttl,
        "qps": a.qps, "duration": a.duration, "warmup": a.warmup,
        "probe_name": f"kubernetes.default.svc.{CLUSTER_DOMAIN}",
        "zones": [CLUSTER_DOMAIN, *OUTSIDE_ZONES],
        "measured_file_queries": n, "model_queries": model["queries"], "measured_file": stats,
        "measured_rcodes": rcodes, "queries_per_lookup": n / stats["lookups"] if stats["lookups"] else None,
        "distinct_qname_qtype": distinct, "expected_sent": expected_sent,
        "model_miss_ratio": model["misses"] / model["queries"] if model["queries"] else None,
    }
    (out / "workload.json").write_text(json.dumps(info, indent=2) + "\n")
    return 0


# ---------------------------------------------------------------------------------------------------
# the agent's config

def _merge(into: dict[str, Any], extra: dict[str, Any]) -> None:
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            _merge(into[k], v)
        else:
            into[k] = v


def agentconf(a: argparse.Namespace) -> int:
    import yaml  # only here: the rest runs under any python3

    # node-local-dns's default zones (nodelocal/config/model.py default_zones), written out so that an
    # --extra touching one zone merges into them instead of replacing the set
    zones: dict[str, Any] = {
        CLUSTER_DOMAIN: {"forward": ["cluster"], "cache": {"denial_max_ttl": 5, "serve_stale": 600}},
        "in-addr.arpa": {"forward": ["cluster"]},
        "ip6.arpa": {"forward": ["cluster"]},
        ".": {"forward": ["cluster", "host"]},
    }
    if a.prefetch is not None:
        hits, _, pct = a.prefetch.partition(":")
        for z in zones.values():
            z.setdefault("cache", {})["prefetch_hits"] = int(hits)
            if pct:
                z["cache"]["prefetch_percent"] = int(pct)
    conf: dict[str, Any] = {
        "log_level": "warning",
        "listen": {"localip": ["127.0.0.1"], "port": a.port},
        "cluster_domain": CLUSTER_DOMAIN,
        # both groups at the authoritative server; the cluster group over TCP as deployed (force_tcp)
        "upstreams": {"cluster": {"servers": [a.auth]}, "host": {"servers": [a.auth]}},
        "zones": zones,
        "setup": False,
        "metrics_addr": f"127.0.0.1:{a.metrics}",
        "health_addr": f"127.0.0.1:{a.health}",
    }
    for text in a.extra or []:
        extra = yaml.safe_load(text)
        if extra is None:
            continue
        if not isinstance(extra, dict):
            raise SystemExit(f"--agent-config-extra must be a YAML mapping, got: {text!r}")
        _merge(conf, extra)
    Path(a.file).write_text("# hack/bench_pods.sh: the agent under test\n" + yaml.safe_dump(conf, sort_keys=False))
    return 0


# ---------------------------------------------------------------------------------------------------
# small commands used while the benchmark runs

def probe(port: int, name: str, seconds: float) -> int:
    """Bounded: one query every 0.2 s until an answer (any rcode) with our ID comes back or time is up."""
    deadline = time.monotonic() + seconds
    qid = 0x4243
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        while time.monotonic() < deadline:
            try:
                s.sendto(base._query(qid, name), ("127.0.0.1", port))
                data, _ = s.recvfrom(4096)
                if len(data) >= 12 and data[:2] == struct.pack(">H", qid) and data[2] & 0x80:
                    return 0
            except OSError:  # timeout, or ECONNREFUSED before the server binds
                time.sleep(0.1)
    print(f"no DNS answer from 127.0.0.1:{port} within {seconds:g}s", file=sys.stderr)
    return 1


def _ticks(pid: int) -> tuple[int, int]:
    """(ppid, utime+stime) of one process."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    f = stat[stat.rindex(")") + 2:].split()
    return int(f[1]), int(f[11]) + int(f[12])


def treeticks(root: int) -> int:
    procs: dict[int, tuple[int, int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                procs[int(d)] = _ticks(int(d))
            except (OSError, ValueError):
                pass
    total, todo = 0, [root]
    while todo:
        p = todo.pop()
        if p in procs:
            total += procs[p][1]
        todo.extend(c for c, (pp, _) in procs.items() if pp == p)
    print(total)
    return 0


# ---------------------------------------------------------------------------------------------------
# parsing the counters

def parse_kv(path: Path) -> dict[str, float]:
    """`key=value` lines (nsd-control and unbound-control stats)."""
    out: dict[str, float] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            k, sep, v = line.partition("=")
            if sep:
                try:
                    out[k.strip()] = float(v)
                except ValueError:
                    pass
    return out


def parse_prom(path: Path) -> dict[str, float]:
    """Every series of a /metrics scrape, keyed `name` (summed over labels) and `name{labels}` (sorted)."""
    out: dict[str, float] = {}
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            continue
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)", line)
        if not m:
            continue
        try:
            v = float(m.group(3))
        except ValueError:
            continue
        out[m.group(1)] = out.get(m.group(1), 0.0) + v
        if m.group(2):  # labels in name order, whatever order the exporter wrote them in
            labels = sorted(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', m.group(2)))
            out[m.group(1) + "{" + ",".join(f'{k}="{x}"' for k, x in labels) + "}"] = v
    return out


def parse_dnsmasq(path: Path) -> dict[str, float]:
    """dnsmasq's SIGUSR1 line: `queries forwarded N, queries answered locally M`."""
    text = path.read_text() if path.exists() else ""
    m = re.search(r"queries forwarded (\d+), queries answered locally (\d+)", text)
    return {"forwarded": float(m.group(1)), "local": float(m.group(2))} if m else {}


def _delta(a: dict[str, float], b: dict[str, float], key: str) -> float | None:
    return b[key] - a[key] if key in a and key in b else None


# ---------------------------------------------------------------------------------------------------
# the report

def _num(d: dict[str, str], key: str) -> float | None:
    v = d.get(key)
    try:
        return float(v) if v is not None else None
    except ValueError:
        return None


def _ratio(a: object, b: object) -> float | None:
    return a / b if isinstance(a, float | int) and isinstance(b, float | int) and b else None


def _cpu_lines(f: dict[str, str], key: str) -> list[int] | None:
    a, b = f.get(key + "0"), f.get(key + "1")
    if not a or not b:
        return None
    return [int(y) - int(x) for x, y in zip(a.split(), b.split(), strict=False)]


def build(workdir: Path) -> dict[str, Any]:
    facts = base.read_facts(workdir / "facts")
    run = facts.get("run", {})
    hz = float(run.get("clk_tck", "100"))
    wl = json.loads((workdir / "workload.json").read_text()) if (workdir / "workload.json").exists() else {}
    results: dict[str, dict[str, Any]] = {}
    for srv in SERVERS:
        f = facts.get(srv)
        if f is None:
            continue
        r: dict[str, Any] = {"version": f.get("version", "")}
        dp = base.parse_dnsperf(workdir / f"{srv}.measure.out")
        r.update({k: v for k, v in dp.items()})
        sent, done = dp.get("sent"), dp.get("completed")
        r["answered_share"] = _ratio(done, sent)
        w0, w1 = _num(f, "wall0"), _num(f, "wall1")
        wall = w1 - w0 if w0 is not None and w1 is not None else None
        r["wall_s"] = wall
        t0, t1 = _num(f, "ticks0"), _num(f, "ticks1")
        cpu_s = (t1 - t0) / hz if t0 is not None and t1 is not None else None
        r["server_cpu_s"] = cpu_s
        r["cpu_us_per_query"] = cpu_s * 1e6 / done if cpu_s is not None and done else None
        r["server_cpu_util"] = cpu_s / wall if cpu_s is not None and wall else None
        n0, n1 = _num(f, "auth_ticks0"), _num(f, "auth_ticks1")
        auth_cpu = (n1 - n0) / hz if n0 is not None and n1 is not None else None
        r["auth_cpu_util"] = auth_cpu / wall if auth_cpu is not None and wall else None
        r["udp_rcvbuf_errors"] = _num(f, "rcvbuf_errors")
        # other programs on the two cores (the machine may be shared): process time there that neither
        # the server, nor dnsperf and the authoritative server (both on the client core) account for
        d = _cpu_lines(f, "core")
        r["core_softirq_s"] = d[6] / hz if d else None
        r["server_core_foreign_s"] = max(0.0, (d[0] + d[1] + d[2]) / hz - cpu_s) if d and cpu_s is not None else None
        r["server_core_steal_s"] = d[7] / hz if d and len(d) >= 8 else None  # the hypervisor's (a shared host)
        e = _cpu_lines(f, "ccore")
        c0, c1 = _num(f, "client0"), _num(f, "client1")
        r["client_cpu_s"] = c1 - c0 if c0 is not None and c1 is not None else None
        r["client_cpu_util"] = _ratio(r["client_cpu_s"], wall)
        r["client_core_foreign_s"] = (max(0.0, (e[0] + e[1] + e[2]) / hz - r["client_cpu_s"] - (auth_cpu or 0.0))
                                      if e and r["client_cpu_s"] is not None else None)
        # the authoritative server's count: every query that left the cache, whoever sent it
        a0, a1 = parse_kv(workdir / f"{srv}.auth.0"), parse_kv(workdir / f"{srv}.auth.1")
        up = _delta(a0, a1, "num.queries")
        r["upstream_queries"] = up
        r["upstream_udp"] = _delta(a0, a1, "num.udp")
        r["upstream_tcp"] = _delta(a0, a1, "num.tcp")
        r["upstream_per_1000"] = up * 1000 / sent if up is not None and sent else None
        r["upstream_hit_ratio"] = 1 - up / sent if up is not None and sent else None
        # the server's own count of queries answered from its cache (client-visible hits)
        srv_hits = srv_reqs = None
        if srv == "agent":
            m0, m1 = parse_prom(workdir / "agent.metrics.0"), parse_prom(workdir / "agent.metrics.1")
            srv_hits = _delta(m0, m1, "coredns_cache_hits_total")
            srv_reqs = _delta(m0, m1, "coredns_cache_requests_total")
            r["agent"] = {
                k: _delta(m0, m1, m) for k, m in (
                    ("hits", "coredns_cache_hits_total"), ("misses", "coredns_cache_misses_total"),
                    ("requests", "coredns_cache_requests_total"), ("dns_requests", "coredns_dns_requests_total"),
                    ("prefetch", "coredns_cache_prefetch_total"),
                    ("served_stale", "coredns_cache_served_stale_total"),
                    ("coalesced", "nodelocal_coalesced_queries_total"),
                    ("upstream_requests", "nodelocal_upstream_requests_total"),
                    ("dropped", "nodelocal_dropped_queries_total"),
                )
            }
            zones: dict[str, float | None] = {}
            zone_re = re.compile(r'nodelocal_cache_zone_misses_total\{zone="([^"]*)"')
            for key in sorted({z.group(1) for z in map(zone_re.match, m1) if z}):
                h = _delta(m0, m1, f'nodelocal_cache_zone_hits_total{{type="success",zone="{key}"}}') or 0.0
                h += _delta(m0, m1, f'nodelocal_cache_zone_hits_total{{type="denial",zone="{key}"}}') or 0.0
                mi = _delta(m0, m1, f'nodelocal_cache_zone_misses_total{{zone="{key}"}}')
                if mi is not None and h + mi > 0:
                    zones[key] = _ratio(h, h + mi)
            r["agent_zone_hit_ratio"] = zones
            log = workdir / "agent.log"
            if log.exists():
                bad = [ln for ln in log.read_text(errors="replace").splitlines()
                       if re.search(r"ERROR|Traceback|CRITICAL|WARNING", ln)]
                r["log_problems"] = bad[:10]
                r["log_problem_count"] = len(bad)
        elif srv == "unbound":
            s0, s1 = parse_kv(workdir / "unbound.stats.0"), parse_kv(workdir / "unbound.stats.1")
            srv_hits = _delta(s0, s1, "total.num.cachehits")
            srv_reqs = _delta(s0, s1, "total.num.queries")
            r["unbound"] = {k: _delta(s0, s1, f"total.num.{k}") for k in
                            ("queries", "cachehits", "cachemiss", "prefetch", "expired")}
        elif srv == "dnsmasq":
            s0, s1 = parse_dnsmasq(workdir / "dnsmasq.stats.0"), parse_dnsmasq(workdir / "dnsmasq.stats.1")
            srv_hits = _delta(s0, s1, "local")
            fw = _delta(s0, s1, "forwarded")
            srv_reqs = srv_hits + fw if srv_hits is not None and fw is not None else None
            r["dnsmasq"] = {"answered_locally": srv_hits, "forwarded": fw}
        r["server_hits"] = srv_hits
        r["server_requests"] = srv_reqs
        r["server_hit_ratio"] = _ratio(srv_hits, srv_reqs)
        # cgroup (--cpu-quota)
        q0, q1 = parse_kv(workdir / f"{srv}.cpustat.0"), parse_kv(workdir / f"{srv}.cpustat.1")
        if q0 and q1:
            r["cgroup"] = {k: _delta(q0, q1, k) for k in ("nr_periods", "nr_throttled", "throttled_time")}
            r["cgroup"]["quota_millicores"] = _num(run, "cpu_quota")
            r["cgroup"]["threads_outside"] = _num(f, "cgroup_threads_outside")
        # checks
        problems = []
        codes = dp.get("rcodes") or {}
        if not done:
            problems.append("no completed queries")
        for bad_code in ("SERVFAIL", "REFUSED", "FORMERR"):
            if codes.get(bad_code):
                problems.append(f"{codes[bad_code]} {bad_code} answers")
        exp = wl.get("measured_rcodes") or {}
        if done and exp and codes:
            exp_nx = exp.get("NXDOMAIN", 0) / max(1, sum(exp.values()))
            got_nx = codes.get("NXDOMAIN", 0) / done
            r["nxdomain_share"] = got_nx
            if abs(exp_nx - got_nx) > 0.02:
                problems.append(f"NXDOMAIN share {got_nx:.1%}, the query file's {exp_nx:.1%}")
        for k in ("num.dropped", "num.truncated"):
            x = _delta(a0, a1, k)
            if x:
                problems.append(f"the authoritative server's {k} rose by {x:.0f} (rate limiting?)")
        if isinstance(up, float) and up < 0:
            problems.append("authoritative query count went down")
        r["invalid"] = problems
        noisy = []
        for side in ("server", "client"):
            x = r.get(f"{side}_core_foreign_s")
            if isinstance(x, float) and wall and x > 0.05 * wall:
                noisy.append(f"{x:.1f}s of other programs' CPU on the {side} core ({x / wall:.0%} of the run)")
        st = r.get("server_core_steal_s")
        if isinstance(st, float) and wall and st > 0.05 * wall:
            noisy.append(f"{st:.1f}s stolen by the hypervisor from the server core ({st / wall:.0%} of the run)")
        r["noisy"] = noisy
        results[srv] = r
    return {"run": run, "workload": wl, "servers": results}


def _fmt(v: object, spec: str, scale: float = 1.0, none: str = "-") -> str:
    if not isinstance(v, float | int):
        return none
    return format(v if scale == 1.0 else v * scale, spec)


def render(data: dict[str, Any]) -> str:
    run: dict[str, str] = data["run"]
    wl: dict[str, Any] = data["workload"]
    res: dict[str, dict[str, Any]] = data["servers"]
    names = [s for s in SERVERS if s in res]
    mf = wl.get("measured_file", {})
    lk = mf.get("lookups") or 1
    lines = [
        f"pod-shaped workload (seed {wl.get('seed')}): {wl.get('services')} services in "
        f"{len(wl.get('namespaces', []))} namespaces, {wl.get('outside')} outside names, Zipf s={wl.get('zipf')}; "
        f"lookups {mf.get('cluster_lookups', 0) / lk:.0%} cluster "
        f"({mf.get('cross_ns_lookups', 0) / max(1, mf.get('cluster_lookups', 0)):.0%} of them to another namespace), "
        f"{mf.get('outside_lookups', 0) / lk:.0%} outside; "
        f"ndots:5 search path: {_fmt(wl.get('queries_per_lookup'), '.2f')} queries per lookup; "
        f"TTL cluster {wl.get('cluster_ttl')} s, outside {wl.get('outside_ttl')} s",
        f"offered {int(run.get('qps', '0')):,} QPS for {run.get('duration')} s after a {run.get('warmup')} s warm-up; "
        f"dnsperf {run.get('dnsperf', '')} -c {run.get('clients')} -q {run.get('outstanding')} -t 1 on CPU "
        f"{run.get('client_cpu')} with the authoritative server ({run.get('auth', 'nsd')}); servers on CPU "
        f"{run.get('server_cpu')}" + (f", in a cgroup of {run.get('cpu_quota')} millicores"
                                       if run.get("cpu_quota", "0") != "0" else ", no CPU quota")
        + (f"; agent: {run['agent_variant']}" if run.get("agent_variant") else ""),
    ]
    rows: list[tuple[str, ...]] = []

    def row(label: str, fn: Callable[[dict[str, Any]], str]) -> None:
        rows.append((label, *(fn(res[s]) for s in names)))

    def col(key: str, spec: str, scale: float = 1.0) -> Callable[[dict[str, Any]], str]:
        return lambda r: _fmt(r.get(key), spec, scale)

    row("achieved QPS", col("qps", ",.0f"))
    row("answered within 1 s", col("answered_share", ".3%"))
    row("sent / completed / lost", lambda r: "/".join(_fmt(r.get(k), ",.0f") for k in ("sent", "completed", "lost")))
    row("CPU us/query", col("cpu_us_per_query", ".2f"))
    row("server CPU util (of its core)", col("server_cpu_util", ".1%"))
    row("latency p50 / p99 us", lambda r: "/".join(_fmt(r.get(k), ".0f", 1e6) for k in ("lat_p50", "lat_p99")))
    row("latency p99.9 / max us", lambda r: "/".join(_fmt(r.get(k), ".0f", 1e6) for k in ("lat_p999", "lat_max")))
    row("hit ratio, server's own counters", col("server_hit_ratio", ".2%"))
    row("upstream queries (nsd count)", col("upstream_queries", ",.0f"))
    row("  of them over TCP", col("upstream_tcp", ",.0f"))
    row("upstream per 1000 client queries", col("upstream_per_1000", ".1f"))
    row("1 - upstream/client (comparable)", col("upstream_hit_ratio", ".2%"))
    row("NXDOMAIN share of answers", col("nxdomain_share", ".1%"))
    row("UDP rcvbuf drops (machine)", col("udp_rcvbuf_errors", ",.0f"))
    row("nsd CPU util", col("auth_cpu_util", ".1%"))
    row("dnsperf CPU util", col("client_cpu_util", ".1%"))
    if any("cgroup" in res[s] for s in names):
        row("cgroup periods throttled", lambda r: "/".join(_fmt((r.get("cgroup") or {}).get(k), ",.0f")
                                                           for k in ("nr_throttled", "nr_periods")))
        row("cgroup throttled s", lambda r: _fmt((r.get("cgroup") or {}).get("throttled_time"), ".2f", 1e-9))
    row("valid", lambda r: "no" if r.get("invalid") else "yes")
    w0 = max(len(r[0]) for r in rows)
    w = [max(len(s), *(len(r[i + 1]) for r in rows)) for i, s in enumerate(names)]
    lines.append("")
    lines.append(" " * w0 + "  " + "  ".join(n.rjust(w[i]) for i, n in enumerate(names)))
    for r in rows:
        lines.append(r[0].ljust(w0) + "  " + "  ".join(v.rjust(w[i]) for i, v in enumerate(r[1:])))
    lines.append("")
    mr = wl.get("model_miss_ratio")
    if isinstance(mr, float):
        lines.append(f"model: an ideal TTL cache (caps 30 s, cluster 5 s; no prefetch) would send {mr * 1000:.1f} "
                     f"upstream queries per 1000 (1 - upstream/client {1 - mr:.2%}); "
                     f"{wl.get('distinct_qname_qtype', '?')} distinct name/type pairs")
    a = res.get("agent")
    if a is not None and a.get("agent"):
        m = a["agent"]
        zh = a.get("agent_zone_hit_ratio") or {}
        lines.append(
            "agent /metrics over the window: "
            + ", ".join(f"{k} {_fmt(v, ',.0f')}" for k, v in m.items())
            + "; hit ratio per zone: " + ", ".join(f"{z} {_fmt(v, '.2%')}" for z, v in zh.items()))
        if a.get("log_problem_count"):
            lines.append(f"agent log: {a['log_problem_count']} warning/error lines, first: "
                         + " | ".join(a.get("log_problems", [])[:3]))
    u = res.get("unbound")
    if u is not None and u.get("unbound"):
        lines.append("unbound stats over the window: "
                     + ", ".join(f"{k} {_fmt(v, ',.0f')}" for k, v in u["unbound"].items()))
    d = res.get("dnsmasq")
    if d is not None and d.get("dnsmasq"):
        lines.append("dnsmasq stats over the window: "
                     + ", ".join(f"{k} {_fmt(v, ',.0f')}" for k, v in d["dnsmasq"].items()))
    for s in names:
        cg = res[s].get("cgroup")
        if cg and cg.get("threads_outside"):
            lines.append(f"WARNING: {s}: {cg['threads_outside']:.0f} threads were outside the cgroup at the end")
        for p in res[s].get("noisy", []):
            lines.append(f"NOISE: {s}: {p}: latency and QPS are suspect (CPU us/query much less so)")
        for p in res[s].get("invalid", []):
            lines.append(f"WARNING: {s}: {p}")
    lines.append("versions: " + "; ".join(f"{res[s]['version']}" for s in names if res[s].get("version"))
                 + f"; {run.get('auth_version', '')}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("gen")
    s.add_argument("dir")
    s.add_argument("--seed", type=int, default=1)
    s.add_argument("--services", type=int, default=200)
    s.add_argument("--outside", type=int, default=200)
    s.add_argument("--namespaces", type=int, default=8)
    s.add_argument("--cluster-share", type=float, default=0.7, help="share of lookups for cluster services")
    s.add_argument("--cross-ns", type=float, default=0.1,
                   help="share of cluster lookups naming another namespace (`web.other`)")
    s.add_argument("--zipf", type=float, default=1.0, help="popularity exponent")
    s.add_argument("--aaaa-share", type=float, default=0.5, help="share of outside names with AAAA")
    s.add_argument("--cname-share", type=float, default=0.2, help="share of outside names that are CNAMEs")
    s.add_argument("--cluster-ttl", type=int, default=5)
    s.add_argument("--outside-ttl", type=int, default=300)
    s.add_argument("--qps", type=int, required=True)
    s.add_argument("--duration", type=int, required=True)
    s.add_argument("--warmup", type=int, default=10)
    s = sub.add_parser("agentconf")
    s.add_argument("file")
    s.add_argument("--auth", required=True)
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--metrics", type=int, required=True)
    s.add_argument("--health", type=int, required=True)
    s.add_argument("--prefetch", help="HITS[:PERCENT] for every zone")
    s.add_argument("--extra", action="append", help="YAML mapping merged over the config (repeatable)")
    s = sub.add_parser("probe")
    s.add_argument("port", type=int)
    s.add_argument("name")
    s.add_argument("seconds", type=float, nargs="?", default=15.0)
    s = sub.add_parser("portfree")
    s.add_argument("ports", type=int, nargs="+")
    s = sub.add_parser("metrics")
    s.add_argument("url")
    s.add_argument("file")
    s = sub.add_parser("treeticks")
    s.add_argument("pid", type=int)
    s = sub.add_parser("report")
    s.add_argument("dir")
    s.add_argument("--json")
    a = p.parse_args(argv)
    if a.cmd == "gen":
        return gen(a)
    if a.cmd == "agentconf":
        return agentconf(a)
    if a.cmd == "probe":
        return probe(a.port, a.name, a.seconds)
    if a.cmd == "portfree":
        return base.cmd_portfree(a.ports)
    if a.cmd == "metrics":
        return base.cmd_metrics(a.url, a.file)
    if a.cmd == "treeticks":
        return treeticks(a.pid)
    return base.cmd_report(a.dir, a.json, build, render)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
