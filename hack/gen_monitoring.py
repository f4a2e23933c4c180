#!/usr/bin/env python3
"""Generates the monitoring files from one description each, so that they cannot drift apart:

  config/grafana/nodelocal.json          the Grafana dashboard, from PANELS below
  config/prometheus/prometheusrule.yaml  the PrometheusRule, from config/prometheus/nodelocal-rules.yaml

  hack/gen_monitoring.py            write both
  hack/gen_monitoring.py --check    exit 1 if a written file differs from what would be generated (a unit test)
  hack/gen_monitoring.py --readme   print the README's table of dashboard panels and their queries

PromQL here uses Grafana's $__rate_interval and the dashboard variables $job, $instance and $node;
tests/e2e/test_prometheus.py evaluates every expression against a real Prometheus.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "config" / "grafana" / "nodelocal.json"
RULES = ROOT / "config" / "prometheus" / "nodelocal-rules.yaml"
PROMETHEUSRULE = ROOT / "config" / "prometheus" / "prometheusrule.yaml"

# Ratios divide by `(... > 0)`: no traffic gives no point rather than NaN.
# Every query carries the dashboard's filters. A missing `node` label matches node=~".*" (the All value),
# so the dashboard works whether or not the scrape config adds one.
F = 'job=~"$job", instance=~"$instance", node=~"$node"'
R = "$__rate_interval"


def rate(metric: str, extra: str = "") -> str:
    sel = F + (", " + extra if extra else "")
    return f"rate({metric}{{{sel}}}[{R}])"


@dataclass
class Target:
    expr: str
    legend: str = ""


@dataclass
class Panel:
    title: str
    targets: list[Target]
    kind: str = "timeseries"  # timeseries, stat
    unit: str = "short"
    width: int = 8
    height: int = 8
    description: str = ""
    max: float | None = None
    # how tests/e2e/test_prometheus.py checks it: "hit_rate" panels must equal the workload's ratios
    check: str = ""
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class Row:
    title: str
    panels: list[Panel]


FAILED = 'outcome!~"NOERROR|NXDOMAIN"'  # upstream tries without a usable answer
FAILED_RCODES = 'rcode=~"SERVFAIL|REFUSED"'  # answers that tell a client nothing
HIT = "coredns_cache_hits_total"
QRY = "coredns_dns_requests_total"
DUR = "coredns_dns_request_duration_seconds_bucket"
UP = "nodelocal_upstream_requests_total"
REQ = "coredns_cache_requests_total"

ROWS = [
    Row("Hit rate", [
        Panel("Hit rate", [Target(f"sum({rate(HIT)}) / (sum({rate(REQ)}) > 0)", "hit rate")],
              kind="stat", unit="percentunit", width=4, max=1, check="hit_rate",
              description="Cache hits over cache lookups, every selected node together."),
        Panel("Hit rate per node", [Target(f"sum by (instance, node) ({rate(HIT)}) / "
                                           f"(sum by (instance, node) ({rate(REQ)}) > 0)", "{{instance}} {{node}}")],
              unit="percentunit", width=7, max=1, check="hit_rate",
              description="Cache hits over cache lookups on each node."),
        Panel("Hit rate per zone", [Target(f"sum by (zones) ({rate(HIT)}) / (sum by (zones) ({rate(REQ)}) > 0)",
                                           "{{zones}}")],
              unit="percentunit", width=7, max=1, check="hit_rate",
              description="Per configured zone (node-local-dns: per server block)."),
        Panel("Hits: success vs denial", [Target(f"sum by (type) ({rate(HIT)}) / ignoring (type) group_left () "
                                                 f"(sum({rate(REQ)}) > 0)", "{{type}}")],
              unit="percentunit", width=6, max=1, check="hit_rate",
              description="Share of all lookups answered from cached positive (success) and negative (denial: "
                          "NXDOMAIN, NODATA) answers. A large denial share is often ndots:5 search-path expansion."),
    ]),
    Row("Traffic", [
        Panel("Queries per second", [Target(f"sum({rate(QRY)})", "queries/s")],
              kind="stat", unit="reqps", width=4),
        Panel("Queries per second per node", [Target(f"sum by (instance, node) ({rate(QRY)})",
                                                     "{{instance}} {{node}}")], unit="reqps", width=7),
        Panel("Queries by protocol and family", [Target(f"sum by (proto, family) ({rate(QRY)})",
                                                        "{{proto}} family {{family}}")], unit="reqps", width=6,
              description="family 1 = IPv4, 2 = IPv6 (CoreDNS's labels)."),
        Panel("Responses by rcode", [Target(f"sum by (rcode) ({rate('coredns_dns_responses_total')})", "{{rcode}}")],
              unit="reqps", width=7),
        Panel("Queries per second by zone", [Target(f"sum by (zone) ({rate(QRY)})", "{{zone}}")],
              unit="reqps", width=12,
              description="The zone that took each query (`dropped`: refused, dropped or shed before any zone "
                          "took it, as CoreDNS labels it)."),
        Panel("Failures by zone (SERVFAIL, REFUSED)", [Target(
            f"sum by (zone, rcode) ({rate('coredns_dns_responses_total', FAILED_RCODES)})",
            "{{zone}} {{rcode}}")], unit="reqps", width=12,
              description="Which zone's upstreams fail: SERVFAIL after every upstream failed (or as they said), "
                          "REFUSED from upstreams or client limits (zone `dropped`)."),
    ]),
    Row("Latency", [
        Panel("Request latency (all queries)", [
            Target(f"histogram_quantile({q}, sum by (le) ({rate(DUR)}))",
                   f"p{int(q * 100)}") for q in (0.5, 0.9, 0.99)],
              unit="s", width=12,
              description="From receiving a query to replying; cache hits on the UDP fast path are timed one in "
                          "N (N keeps the sampling near 500/s) and weighted by N."),
        Panel("p99 latency per node", [Target(
            f"histogram_quantile(0.99, sum by (le, instance, node) ({rate(DUR)}))",
            "{{instance}} {{node}}")], unit="s", width=12),
    ]),
    Row("Upstreams", [
        Panel("Upstream latency p99 by server", [Target(
            f"histogram_quantile(0.99, sum by (le, to) ({rate('coredns_proxy_request_duration_seconds_bucket')}))",
            "{{to}}")], unit="s", width=8,
              description="Round trips to each upstream that got a reply (coredns_proxy_request_duration_seconds)."),
        Panel("Upstream tries by outcome", [Target(f"sum by (to, outcome) ({rate(UP)})",
                                                   "{{to}} {{outcome}}")], unit="reqps", width=8,
              description="outcome: the reply's rcode, or timeout / error (connection refused, reset) / malformed."),
        Panel("Upstream error ratio", [Target(
            f"sum by (to) ({rate(UP, FAILED)}) / "
            f"(sum by (to) ({rate(UP)}) > 0)", "{{to}}")],
              unit="percentunit", width=8, max=1,
              description="Tries that failed (timeout, error, malformed, SERVFAIL, REFUSED) over all tries."),
        Panel("Upstream health", [Target(f"min by (group, to) (nodelocal_upstream_healthy{{{F}}})",
                                         "{{group}} {{to}}")],
              unit="bool_yes_no", width=8, max=1,
              description="0 while a server is marked down and skipped (max_fails tries in a row without a reply); "
                          "a probe's reply brings it back."),
        Panel("Fallthrough, coalescing, failures", [
            Target(f"sum({rate('nodelocal_fallthrough_total')})", "fallthrough to the next group"),
            Target(f"sum({rate('nodelocal_coalesced_queries_total')})", "coalesced into a query in flight"),
            Target(f"sum({rate('coredns_forward_healthcheck_broken_total')})", "no upstream replied"),
            Target(f"sum({rate('coredns_forward_max_concurrent_rejects_total')})", "refused: too many in flight"),
        ], unit="reqps", width=16,
              description="Fallthrough: a query passed from the cluster DNS to the node's own nameservers."),
    ]),
    Row("Cache", [
        Panel("Cache entries", [Target(f"sum by (type) (coredns_cache_entries{{{F}}})", "{{type}}")], width=8),
        Panel("Cache fill", [
            Target(f"sum by (instance, node) (coredns_cache_entries{{{F}}}) / "
                   f"sum by (instance, node) (nodelocal_cache_capacity{{{F}}})", "entries {{instance}} {{node}}"),
            Target(f"sum by (instance, node) (nodelocal_cache_bytes{{{F}}}) / "
                   f"sum by (instance, node) (nodelocal_cache_max_bytes{{{F}}})", "bytes {{instance}} {{node}}"),
        ], unit="percentunit", width=8, max=1,
              description="Entries over the zones' entry caps, and bytes over cache.max_bytes."),
        Panel("Evictions and expiry", [
            Target(f"sum by (type) ({rate('coredns_cache_evictions_total')})", "evicted {{type}}"),
            Target(f"sum({rate('nodelocal_cache_expired_reclaimed_total')})", "expired, reclaimed"),
        ], unit="ops", width=8,
              description="Evictions make room before entries expire: a cap or the byte budget is too small."),
    ]),
    Row("Agent", [
        Panel("Setup errors by type", [Target(
            f"sum by (errortype) (increase(coredns_nodecache_setup_errors_total{{{F}}}[{R}]))", "{{errortype}}")],
              unit="short", width=6,
              description="Failed interface or conntrack-rule checks, by node-cache's error types."),
        Panel("Config reloads", [Target(f"sum by (result) (increase(nodelocal_config_reloads_total{{{F}}}[{R}]))",
                                        "{{result}}")], unit="short", width=6),
        Panel("Dropped and refused", [
            Target(f"sum({rate('nodelocal_dropped_queries_total')})", "dropped queries"),
            Target(f"sum({rate('nodelocal_spoofed_replies_dropped_total')})", "spoofed replies"),
            Target(f"sum({rate('nodelocal_tcp_rejected_total')})", "TCP connections over the cap"),
        ], unit="ops", width=6),
        Panel("Agents ready", [
            Target(f"sum(nodelocal_ready{{{F}}})", "ready"),
            Target(f"count(nodelocal_build_info{{{F}}})", "running"),
        ], kind="stat", width=6),
        Panel("CPU per node", [Target(f"sum by (instance, node) ({rate('process_cpu_seconds_total')})",
                                      "{{instance}} {{node}}")], unit="percentunit", width=12),
        Panel("Memory per node", [Target(f"sum by (instance, node) (process_resident_memory_bytes{{{F}}})",
                                         "{{instance}} {{node}}")], unit="bytes", width=12),
    ]),
]


def all_panels() -> list[Panel]:
    return [p for row in ROWS for p in row.panels]


# --------------------------------------------------------------------------------------------------
# Grafana JSON

DS = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}


def _variable(name: str, label: str, query: str) -> dict[str, Any]:
    return {
        "name": name, "label": label, "type": "query", "datasource": DS,
        "query": {"query": query, "refId": f"var-{name}"}, "definition": query,
        "refresh": 2, "includeAll": True, "multi": True, "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]}, "sort": 1, "hide": 0,
        "options": [], "regex": "",
    }


def _panel_json(p: Panel, pid: int, x: int, y: int) -> dict[str, Any]:
    defaults: dict[str, Any] = {"unit": p.unit}
    if p.max is not None:
        defaults["min"] = 0
        defaults["max"] = p.max
    out: dict[str, Any] = {
        "id": pid, "type": p.kind, "title": p.title, "description": p.description, "datasource": DS,
        "gridPos": {"h": p.height, "w": p.width, "x": x, "y": y},
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "targets": [{"datasource": DS, "expr": t.expr, "legendFormat": t.legend, "refId": chr(ord("A") + i),
                     "range": True, "instant": False} for i, t in enumerate(p.targets)],
    }
    if p.kind == "stat":
        out["options"] = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                          "colorMode": "value", "graphMode": "area", "textMode": "auto"}
    else:
        out["options"] = {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                          "tooltip": {"mode": "multi", "sort": "desc"}}
    return out


def dashboard() -> dict[str, Any]:
    panels: list[dict[str, Any]] = []
    pid, y = 1, 0
    for row in ROWS:
        panels.append({"id": pid, "type": "row", "title": row.title, "collapsed": False,
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
        pid += 1
        y += 1
        x, line_h = 0, 0
        for p in row.panels:
            if x + p.width > 24:
                x, y, line_h = 0, y + line_h, 0
            panels.append(_panel_json(p, pid, x, y))
            pid += 1
            x += p.width
            line_h = max(line_h, p.height)
        y += line_h
    return {
        "__inputs": [{"name": "DS_PROMETHEUS", "label": "Prometheus", "description": "", "type": "datasource",
                      "pluginId": "prometheus", "pluginName": "Prometheus"}],
        "__requires": [
            {"type": "grafana", "id": "grafana", "name": "Grafana", "version": "9.0.0"},
            {"type": "datasource", "id": "prometheus", "name": "Prometheus", "version": "1.0.0"},
            {"type": "panel", "id": "timeseries", "name": "Time series", "version": ""},
            {"type": "panel", "id": "stat", "name": "Stat", "version": ""},
        ],
        "title": "nodelocal: NodeLocal DNS cache",
        "uid": "nodelocal-dns",
        "description": "Hit rate first, then traffic, latency, upstreams, cache and agent health of the nodelocal "
                       "DaemonSet. The coredns_* panels also work for node-local-dns (k8s-dns-node-cache).",
        "tags": ["dns", "kubernetes", "nodelocal", "coredns"],
        "editable": True, "graphTooltip": 1, "schemaVersion": 39, "version": 1,
        "time": {"from": "now-3h", "to": "now"}, "refresh": "30s", "timezone": "",
        "links": [], "annotations": {"list": []},
        "templating": {"list": [
            _variable("job", "job", "label_values(coredns_dns_requests_total, job)"),
            _variable("instance", "instance", 'label_values(coredns_dns_requests_total{job=~"$job"}, instance)'),
            _variable("node", "node", 'label_values(coredns_dns_requests_total{job=~"$job"}, node)'),
        ]},
        "panels": panels,
    }


# --------------------------------------------------------------------------------------------------
# PrometheusRule

PROMETHEUSRULE_HEADER = """\
# Generated by hack/gen_monitoring.py from nodelocal-rules.yaml (edit that file, then run the script).
# The alerting rules as a Prometheus Operator PrometheusRule. The labels match kube-prometheus's default
# ruleSelector; change them to what your Prometheus selects.
"""


def prometheusrule() -> str:
    rules = yaml.safe_load(RULES.read_text())
    doc = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "nodelocal", "namespace": "kube-system",
                     "labels": {"app.kubernetes.io/name": "nodelocal", "prometheus": "k8s", "role": "alert-rules"}},
        "spec": {"groups": rules["groups"]},
    }

    class Dumper(yaml.SafeDumper):
        pass

    def text(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
        style = "|" if "\n" in data else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)

    Dumper.add_representer(str, text)
    return PROMETHEUSRULE_HEADER + yaml.dump(doc, Dumper=Dumper, sort_keys=False, width=120)


# --------------------------------------------------------------------------------------------------

def readme_table() -> str:
    """The panels and their queries; the filters every query carries are shortened to `F`."""
    lines = ["| row | panel | query |", "|---|---|---|"]
    for row in ROWS:
        for p in row.panels:
            for i, t in enumerate(p.targets):
                expr = t.expr.replace(F, "F").replace("|", "\\|")
                lines.append(f"| {row.title if i == 0 and p is row.panels[0] else ''} | "
                             f"{p.title if i == 0 else ''} | `{expr}` |")
    return "\n".join(lines)


def outputs() -> dict[Path, str]:
    return {DASHBOARD: json.dumps(dashboard(), indent=2) + "\n", PROMETHEUSRULE: prometheusrule()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true")
    p.add_argument("--readme", action="store_true")
    a = p.parse_args()
    if a.readme:
        print(readme_table())
        return 0
    stale = []
    for path, text in outputs().items():
        if a.check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path.relative_to(ROOT)))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if stale:
        print(f"gen_monitoring: out of date: {', '.join(stale)} (run hack/gen_monitoring.py)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
