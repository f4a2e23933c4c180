"""Every capability's counters for one agent, bundled for those that read them all: the registry behind
/metrics and the live page. Each capability declares its own counters and collector in its metrics.py
(server/, cache/, resolve/, netsetup/, agent/); this module only gathers them."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, ProcessCollector

from nodelocal.agent.metrics import AgentCollector, AgentStats
from nodelocal.cache.metrics import CacheCollector, CacheStats
from nodelocal.cache.store import Store
from nodelocal.netsetup.metrics import SetupCollector, SetupStats
from nodelocal.observe.querylog import QueryLogCollector, QueryLogStats
from nodelocal.resolve.metrics import ResolveCollector, ResolveStats
from nodelocal.server.metrics import SERVER_LABEL, ServerCollector, ServerStats


@dataclass
class Meters:
    """The plain counter objects the code bumps; collectors read them at scrape time."""

    server: ServerStats = field(default_factory=ServerStats)
    cache: CacheStats = field(default_factory=CacheStats)
    resolve: ResolveStats = field(default_factory=ResolveStats)
    setup: SetupStats = field(default_factory=SetupStats)
    agent: AgentStats = field(default_factory=AgentStats)
    querylog: QueryLogStats = field(default_factory=QueryLogStats)

    def registry(self, store: Store, process: bool = True) -> CollectorRegistry:
        """A registry with every capability's collector (and the process's CPU and memory when `process`)."""
        reg = CollectorRegistry()
        for collector in (ServerCollector(self.server, SERVER_LABEL), CacheCollector(self.cache, store, SERVER_LABEL),
                          ResolveCollector(self.resolve), SetupCollector(self.setup), AgentCollector(self.agent),
                          QueryLogCollector(self.querylog)):
            reg.register(collector)
        if process:
            ProcessCollector(registry=reg)
        return reg
