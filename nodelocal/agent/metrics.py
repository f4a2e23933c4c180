"""The agent's own series: config reloads by result, failures of its periodic tasks, the build info."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from nodelocal import __version__


class AgentStats:
    """What the lifecycle and live reload count."""

    def __init__(self) -> None:
        self.reloads = {"success": 0, "failure": 0}  # config reloads by result
        self.listening = False  # every listener is bound
        self.task_failures: dict[str, int] = {}  # periodic task -> rounds that raised (periodic.py)


class AgentCollector(Collector):
    def __init__(self, stats: AgentStats) -> None:
        self.stats = stats

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        rl = CounterMetricFamily("nodelocal_config_reloads", "Config reloads by result.", labels=["result"])
        for result, n in self.stats.reloads.items():
            rl.add_metric([result], n)
        yield rl
        tf = CounterMetricFamily("nodelocal_task_failures", "Rounds of a periodic task that raised (it goes on).",
                                 labels=["task"])
        for task, n in self.stats.task_failures.items():
            tf.add_metric([task], n)
        yield tf
        info = GaugeMetricFamily("nodelocal_build_info", "Always 1; the agent's version in a label.",
                                 labels=["version"])
        info.add_metric([__version__], 1)
        yield info
