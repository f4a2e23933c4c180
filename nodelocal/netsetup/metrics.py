"""Network setup's counters and series: node-cache's setup-error counter under its own name (dashboards
and alerts select on its errortype values), the rest as nodelocal_setup_*."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from nodelocal.netsetup.runner import (
    ERR_CONFIGMAP,
    ERR_INTERFACE_ADD,
    ERR_INTERFACE_CHECK,
    ERR_IPTABLES,
    ERR_IPTABLES_LOCK,
)

# Every errortype exported from the start, so a first failure shows in rate().
SETUP_ERRORTYPES = (ERR_IPTABLES, ERR_IPTABLES_LOCK, ERR_INTERFACE_ADD, ERR_INTERFACE_CHECK, ERR_CONFIGMAP)


class SetupStats:
    """Failures by node-cache's error type, reconcile rounds, repairs, and each local IP's fail-open path."""

    def __init__(self) -> None:
        self.setup_errors = dict.fromkeys(SETUP_ERRORTYPES, 0)
        self.setup_reconciles = 0
        self.setup_repairs = {"interface": 0, "rules": 0}
        self.setup_failopen: dict[str, str] = {}  # local IP -> path (kube-proxy, rewrite, dnat-*, none)

    def error(self, errortype: str) -> None:
        self.setup_errors[errortype] = self.setup_errors.get(errortype, 0) + 1


def setup_families(s: SetupStats) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
    """Network setup's series."""
    errs = CounterMetricFamily("coredns_nodecache_setup_errors", "Network setup failures by type.",
                               labels=["errortype"])
    for etype, n in s.setup_errors.items():
        errs.add_metric([etype], n)
    yield errs
    yield CounterMetricFamily("nodelocal_setup_reconciles", "Reconcile rounds of interface and rules.",
                              value=s.setup_reconciles)
    rep = CounterMetricFamily("nodelocal_setup_repairs", "Reconcile rounds that put something back.",
                              labels=["what"])
    for what, n in s.setup_repairs.items():
        rep.add_metric([what], n)
    yield rep
    fo = GaugeMetricFamily("nodelocal_setup_failopen",
                           "1 per local IP, labelled with where its DNS goes while the agent is down.",
                           labels=["localip", "path"])
    for ip, path in s.setup_failopen.items():
        fo.add_metric([ip, path], 1)
    yield fo


class SetupCollector(Collector):
    def __init__(self, stats: SetupStats) -> None:
        self.stats = stats

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        yield from setup_families(self.stats)
