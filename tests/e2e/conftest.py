"""One real scenario for the e2e tests: upstreams, the agent, a real Prometheus scraping it, a known workload.

Started once per session (Prometheus and the workload take a while) and shared by test_prometheus.py
and test_page.py. Every expected figure is computed from the workload below, not read back from the agent.
"""

from __future__ import annotations

import random
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import dns.rcode
import pytest
import yaml

from tests.fakedns import SERVFAIL, FakeDNS, free_port, wait_for
from tests.integration.conftest import RunningAgent

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "artifacts"
RULES = REPO / "config" / "prometheus" / "nodelocal-rules.yaml"

CLIENTS = ["127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"]
CLIENT_WEIGHTS = [8, 4, 2, 1, 1]


@dataclass(frozen=True)
class Name:
    """A question of the workload: how often it is asked and how the cache treats it."""

    qname: str
    rdtype: str
    times: int
    zone: str  # the agent's zone for it
    kind: str  # success or denial


# cluster.local names (A, some AAAA), names forwarded to the cluster DNS in the root zone, NXDOMAIN
# answers (cached as denial), and names the cluster DNS SERVFAILs (falling through to the host group).
WORKLOAD = (
    [Name(f"svc{i}.default.svc.cluster.local", "A", t, "cluster.local", "success")
     for i, t in enumerate([60, 30, 20, 15, 12, 10, 8, 6, 5, 4])]
    + [Name(f"svc{i}.default.svc.cluster.local", "AAAA", t, "cluster.local", "success")
       for i, t in enumerate([24, 10, 6])]
    + [Name(f"www{i}.example.test", "A", t, ".", "success") for i, t in enumerate([25, 12, 8, 4])]
    + [Name(f"nx{i}.example.test", "A", t, ".", "denial") for i, t in enumerate([20, 9, 5])]
    + [Name(f"flaky{i}.example.test", "A", t, ".", "success") for i, t in enumerate([6, 3])]
)


@dataclass
class Expected:
    """What the workload must have caused, counted from WORKLOAD alone."""

    queries: int = 0
    hits: dict[str, int] = field(default_factory=lambda: {"success": 0, "denial": 0})
    misses: int = 0
    zone_hits: dict[str, int] = field(default_factory=dict)
    zone_misses: dict[str, int] = field(default_factory=dict)
    entries: dict[str, int] = field(default_factory=lambda: {"success": 0, "denial": 0})
    client_queries: dict[str, int] = field(default_factory=dict)

    @property
    def hit_rate(self) -> float:
        h = sum(self.hits.values())
        return h / (h + self.misses)


def plan(seed: int = 7) -> tuple[list[tuple[str, Name]], Expected]:
    """The queries in the order they are sent, (client, name), and what they must add up to.

    Every answer is cached for far longer than the workload runs (30 s caps, the workload ~8 s), so each
    name's first query is the one miss and the others are hits; queries go one at a time (no coalescing)."""
    rng = random.Random(seed)
    queries = [n for n in WORKLOAD for _ in range(n.times)]
    rng.shuffle(queries)
    exp = Expected()
    seen = set()
    out = []
    for n in queries:
        client = rng.choices(CLIENTS, weights=CLIENT_WEIGHTS)[0]
        out.append((client, n))
        exp.queries += 1
        exp.client_queries[client] = exp.client_queries.get(client, 0) + 1
        if (n.qname, n.rdtype) in seen:
            exp.hits[n.kind] += 1
            exp.zone_hits[n.zone] = exp.zone_hits.get(n.zone, 0) + 1
        else:
            seen.add((n.qname, n.rdtype))
            exp.misses += 1
            exp.zone_misses[n.zone] = exp.zone_misses.get(n.zone, 0) + 1
            exp.entries[n.kind] += 1
    return out, exp


class Prometheus:
    """A real Prometheus (Debian's package) scraping the agent every second, with our alert rules loaded."""

    def __init__(self, tmp: Path, target: str) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            pytest.fail("prometheus is not installed: run hack/setup.sh")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cfg = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "900ms", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [{"job_name": "nodelocal", "static_configs": [{"targets": [target]}]}],
        }
        (tmp / "prometheus.yml").write_text(yaml.safe_dump(cfg))
        self.log = (tmp / "prometheus.log").open("w")
        self.proc = subprocess.Popen(
            [binary, f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=self.log, stderr=subprocess.STDOUT)
        if not wait_for(lambda: self.proc.poll() is not None or self._ready(), 30):
            self.stop()
            pytest.fail("prometheus did not become ready within 30 s")
        if self.proc.poll() is not None:
            pytest.fail(f"prometheus exited: see {tmp / 'prometheus.log'}")

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/-/ready", timeout=1) as r:
                return int(r.status) == 200
        except OSError:
            return False

    def api(self, path: str, **params: str) -> Any:
        import json

        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                return json.load(r)
        except urllib.error.HTTPError as e:  # 400/422 carry the error as JSON
            return json.load(e)

    def query(self, expr: str) -> Any:
        return self.api("query", query=expr, time=f"{time.time():.3f}")

    def value(self, expr: str) -> float | None:
        res = self.query(expr)
        if res.get("status") != "success" or not res["data"]["result"]:
            return None
        return float(res["data"]["result"][0]["value"][1])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


@dataclass
class Scenario:
    agent: RunningAgent
    prometheus: Prometheus
    expected: Expected
    cluster: FakeDNS
    host: FakeDNS
    dead: str  # the host-group server that refuses every query

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.agent.http_port}"


def send(agent_port: int, client: str, n: Name) -> None:
    q = dns.message.make_query(n.qname, n.rdtype)
    r = dns.query.udp(q, "127.0.0.1", port=agent_port, timeout=5, source=client)
    want = dns.rcode.NXDOMAIN if n.kind == "denial" else dns.rcode.NOERROR
    assert r.rcode() == want, (n, dns.rcode.to_text(r.rcode()))


@pytest.fixture(scope="session")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    tmp = tmp_path_factory.mktemp("e2e")
    queries, expected = plan()
    # The cluster DNS: authoritative for test. (NXDOMAIN with an SOA, so denials are cached), knows the
    # cluster names and www*.example.test, SERVFAILs flaky*; the host nameserver knows flaky*.
    cluster = FakeDNS(zone="test.").start()
    host = FakeDNS(zone="example.test.").start()
    dead = f"127.0.0.1:{free_port()}"  # nothing listens: every try is refused at once
    for i in range(10):
        cluster.add(f"svc{i}.default.svc.cluster.local", "A", 100, f"10.96.1.{i}")
        cluster.add(f"svc{i}.default.svc.cluster.local", "AAAA", 100, f"fd00::1:{i}")
    for i in range(4):
        cluster.add(f"www{i}.example.test", "A", 300, f"192.0.2.{i}")
    for i in range(2):
        cluster.behaviour[f"flaky{i}.example.test."] = SERVFAIL
        host.add(f"flaky{i}.example.test", "A", 300, f"198.51.100.{i}")
    agent = RunningAgent({"upstreams": {
        "cluster": {"servers": [f"127.0.0.1:{cluster.port}"], "try_timeout": 1.0},
        "host": {"servers": [dead, f"127.0.0.1:{host.port}"], "try_timeout": 1.0},
    }}).start()
    prom: Prometheus | None = None
    try:
        assert agent.agent is not None and agent.agent.live is not None
        prom = Prometheus(tmp, f"127.0.0.1:{agent.http_port}")
        # Prometheus must hold a sample from before the workload (all counters 0): rate() then sees
        # exactly what the workload added.
        assert wait_for(lambda: prom is not None and prom.value('up{job="nodelocal"}') == 1.0, 20), \
            "prometheus never scraped the agent"
        assert agent.metric("coredns_dns_requests_total") == 0
        t0 = time.monotonic()
        for i, (client, n) in enumerate(queries):
            send(agent.port, client, n)
            # ~8 s in all: long enough for the live page's history, well inside every cache TTL
            time.sleep(max(0.0, t0 + 8.0 * (i + 1) / len(queries) - time.monotonic()))
        # Wait until Prometheus has scraped the final counts (bounded).
        total = float(expected.queries)
        assert wait_for(lambda: prom is not None and prom.value("sum(coredns_dns_requests_total)") == total, 20), \
            "prometheus never saw the whole workload"
        ARTIFACTS.mkdir(exist_ok=True)
        yield Scenario(agent, prom, expected, cluster, host, dead)
    finally:
        if prom is not None:
            prom.stop()
        agent.stop()
        cluster.stop()
        host.stop()
