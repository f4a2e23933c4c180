"""Live reload on loopback: a ConfigMap-style directory swapped (good, then broken) while queries run; the
cache of unchanged zones kept; a broken config counted and ignored. The reload plan by itself is in
tests/unit/agent/test_reload.py."""

from __future__ import annotations

import asyncio
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import dns.rcode
import pytest
import uvloop
import yaml
from prometheus_client.parser import text_string_to_metric_families

from nodelocal.agent.lifecycle import Agent
from nodelocal.config.source import Source
from tests.fakedns import FakeDNS, free_port, wait_for
from tests.k8s.kubelet import ConfigMapVolume

WEB = "web.default.svc.cluster.local"


class ReloadingAgent:
    """The agent in a thread of its own, its config read through a Source (as `nodelocal serve` does)."""

    def __init__(self, src: Source) -> None:
        self.src = src
        self.loaded = src.load()
        self.port = self.loaded.config.listen.port
        self.agent: Agent | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.error: BaseException | None = None

    def start(self) -> ReloadingAgent:
        def run() -> None:
            self.loop = uvloop.new_event_loop()
            asyncio.set_event_loop(self.loop)
            self.agent = Agent(self.loaded.config, source=self.src, loaded=self.loaded)
            try:
                self.loop.run_until_complete(self.agent.run(drain_timeout=1.0))
            except BaseException as e:
                self.error = e
            finally:
                self.loop.close()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        # Started = past step 3a (loop check, watching), not only bound: tests look at what 3a did.
        assert wait_for(lambda: self.error is not None or (self.agent is not None and self.agent.reloader.started),
                        10), "agent did not start"
        assert self.error is None, self.error
        return self

    def stop(self) -> None:
        if self.loop is not None and self.agent is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.agent.stop)
        self.thread.join(10)

    def sighup(self) -> None:
        assert self.loop is not None and self.agent is not None
        self.loop.call_soon_threadsafe(self.agent.reloader.trigger, "SIGHUP")

    def query(self, name: str, timeout: float = 3.0) -> dns.message.Message:
        return dns.query.udp(dns.message.make_query(name, "A"), "127.0.0.1", port=self.port, timeout=timeout)

    def metric(self, name: str, **labels: str) -> float:
        assert self.agent is not None
        port = next(a[1] for k, a in self.agent.bound if k == "http")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            body = r.read().decode()
        return sum(s.value for fam in text_string_to_metric_families(body) for s in fam.samples
                   if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


@pytest.fixture
def upstreams() -> Iterator[tuple[FakeDNS, FakeDNS, FakeDNS]]:
    with FakeDNS(zone="cluster.local.") as cluster, FakeDNS(zone="example.test.") as host, \
            FakeDNS(zone="corp.test.") as corp:
        cluster.add(WEB, "A", 300, "10.0.0.10")
        cluster.add("www.example.test", "A", 300, "192.0.2.1")
        host.add("www.example.test", "A", 300, "192.0.2.2")
        corp.add("www.corp.test", "A", 300, "10.9.0.1")
        corp.add("www.example.test", "A", 300, "192.0.2.3")
        yield cluster, host, corp


def agent_yaml(port: int, cluster: FakeDNS, host: FakeDNS, **extra: Any) -> str:
    data: dict[str, Any] = {
        "listen": {"localip": ["127.0.0.1"], "port": port},
        "setup": False,
        "metrics_addr": "127.0.0.1:0",
        "health_addr": "127.0.0.1:0",
        "reload_interval": 0.1,
        "control": {"socket": ""},
        "upstreams": {"cluster": {"servers": [f"127.0.0.1:{cluster.port}"], "try_timeout": 0.5},
                      "host": {"servers": [f"127.0.0.1:{host.port}"], "try_timeout": 0.5}},
    }
    data.update(extra)
    return yaml.safe_dump(data)


class Load:
    """Queries in a loop from a thread of its own until stopped; every failure is kept."""

    def __init__(self, agent: ReloadingAgent, names: list[str]) -> None:
        self.agent, self.names = agent, names
        self.sent = 0
        self.failures: list[str] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        deadline = time.monotonic() + 60  # bounded whatever happens
        while not self.stopping.is_set() and time.monotonic() < deadline:
            name = self.names[self.sent % len(self.names)]
            self.sent += 1
            try:
                r = self.agent.query(name, timeout=2.0)
                if r.rcode() != dns.rcode.NOERROR or not r.answer:
                    self.failures.append(f"{name}: {dns.rcode.to_text(r.rcode())}")
            except Exception as e:
                self.failures.append(f"{name}: {e!r}")
            time.sleep(0.002)

    def __enter__(self) -> Load:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join(5)


def test_configmap_swap_good_then_broken_while_queries_run(tmp_path: Path,
                                                           upstreams: tuple[FakeDNS, FakeDNS, FakeDNS]) -> None:
    cluster, host, corp = upstreams
    port = free_port()
    vol = ConfigMapVolume(tmp_path / "config")
    vol.write({"config.yaml": agent_yaml(port, cluster, host)})
    agent = ReloadingAgent(Source(file=str(vol.root / "config.yaml"), env={}, resolv_conf="/nonexistent")).start()
    try:
        assert agent.query(WEB).answer and agent.query("www.example.test").answer  # both cached now
        cluster_seen = cluster.count(WEB)
        with Load(agent, [WEB, "www.example.test"]) as load:
            time.sleep(0.3)
            # 1. A good change: the host group moves to another server and a zone is added. The cluster
            #    zone's upstreams did not change: its cache stays; '.' (its chain changed) is emptied.
            zones = {"cluster.local": {"forward": ["cluster"]}, "corp.test": {"forward": ["corp"]},
                     ".": {"forward": ["cluster", "host"]}}
            vol.write({"config.yaml": agent_yaml(port, cluster, corp, zones=zones, upstreams={
                "cluster": {"servers": [f"127.0.0.1:{cluster.port}"], "try_timeout": 0.5},
                "host": {"servers": [f"127.0.0.1:{corp.port}"], "try_timeout": 0.5},
                "corp": {"servers": [f"127.0.0.1:{corp.port}"]}})})
            assert wait_for(lambda: agent.metric("nodelocal_config_reloads_total", result="success") == 1, 5)
            assert agent.query("www.corp.test").answer[0][0].address == "10.9.0.1"  # the new zone answers
            time.sleep(0.3)
            # 2. A broken change: counted, logged, and the config in use stays.
            vol.write({"config.yaml": "listen: [oops\n"})
            assert wait_for(lambda: agent.metric("nodelocal_config_reloads_total", result="failure") == 1, 5)
            assert agent.metric("coredns_nodecache_setup_errors_total", errortype="configmap") == 1
            time.sleep(0.3)
            # 3. A valid file with an invalid value: the same.
            vol.write({"config.yaml": agent_yaml(port, cluster, host, cache={"max_bytes": 12})})
            assert wait_for(lambda: agent.metric("nodelocal_config_reloads_total", result="failure") == 2, 5)
            time.sleep(0.3)
        assert load.sent > 50 and load.failures == [], load.failures[:5]
        assert agent.query("www.corp.test").answer  # still the config of step 1
        assert cluster.count(WEB) == cluster_seen, "the cluster zone's cache was emptied by the reload"
        assert agent.metric("coredns_nodecache_setup_errors_total", errortype="configmap") == 2
        # SIGHUP reloads at once, even with unchanged files (still the broken one: a third failure).
        agent.sighup()
        assert wait_for(lambda: agent.metric("nodelocal_config_reloads_total", result="failure") == 3, 5)
        vol.write({"config.yaml": agent_yaml(port, cluster, host)})  # back to the start: corp.test gone
        assert wait_for(lambda: agent.metric("nodelocal_config_reloads_total", result="success") == 2, 5)
        assert agent.query("www.corp.test").rcode() == dns.rcode.NXDOMAIN  # now '.' -> the cluster DNS
        assert agent.metric("nodelocal_cache_zone_misses_total", zone="corp.test") == 0  # its series are gone
    finally:
        agent.stop()
    assert agent.error is None


def test_a_change_that_needs_a_restart_is_logged_and_the_rest_applied(
        tmp_path: Path, upstreams: tuple[FakeDNS, FakeDNS, FakeDNS], caplog: pytest.LogCaptureFixture) -> None:
    cluster, host, _corp = upstreams
    port = free_port()
    cfg_file = tmp_path / "agent.yaml"
    cfg_file.write_text(agent_yaml(port, cluster, host))
    agent = ReloadingAgent(Source(file=str(cfg_file), env={}, resolv_conf="/nonexistent")).start()
    try:
        with caplog.at_level("INFO", logger="nodelocal.reload"):
            cfg_file.write_text(agent_yaml(port + 1, cluster, host, log_level="debug", cache={"max_bytes": 65536}))
            assert wait_for(lambda: agent.metric("nodelocal_config_reloads_total", result="success") == 1, 5)
        assert "needs a restart to change listen" in caplog.text
        assert agent.query(WEB).answer  # still on the old port
        assert agent.agent is not None and agent.agent.store.max_bytes == 65536
    finally:
        agent.stop()


def test_zones_without_upstream_servers_are_warned_about_and_an_empty_cluster_zone_is_refused(
        tmp_path: Path, upstreams: tuple[FakeDNS, FakeDNS, FakeDNS], caplog: pytest.LogCaptureFixture) -> None:
    cluster, host, _corp = upstreams
    port = free_port()
    cfg_file = tmp_path / "agent.yaml"
    no_corp = {"corp": {"servers": []}, "cluster": {"servers": [f"127.0.0.1:{cluster.port}"]},
               "host": {"servers": [f"127.0.0.1:{host.port}"]}}
    zones = {"corp.test": {"forward": ["corp"]}, ".": {"forward": ["cluster", "host"]}}
    cfg_file.write_text(agent_yaml(port, cluster, host, upstreams=no_corp, zones=zones))
    with caplog.at_level("INFO"):
        agent = ReloadingAgent(Source(file=str(cfg_file), env={}, resolv_conf="/nonexistent")).start()
    try:
        warned = [r for r in caplog.records if r.levelname == "WARNING" and "zone corp.test" in r.getMessage()]
        assert [r.getMessage() for r in warned] == [
            "zone corp.test has no upstream server (groups corp: none): every name in it gets SERVFAIL"]
        caplog.clear()
        with caplog.at_level("INFO"):
            # A reload that leaves the cluster zone without a server: refused, the old config stays.
            empty = {**no_corp, "cluster": {"servers": []}}
            cfg_file.write_text(agent_yaml(port, cluster, host, upstreams=empty,
                                           zones={"cluster.local": {"forward": ["cluster"]}, **zones}))
            assert wait_for(lambda: agent.metric("nodelocal_config_reloads_total", result="failure") == 1, 5)
            assert agent.query(WEB).answer  # the old config answers
            assert "upstreams.cluster.servers" in caplog.text and "Traceback" not in caplog.text
            # Told otherwise: applied, with a warning for the cluster zone.
            cfg_file.write_text(agent_yaml(port, cluster, host, upstreams=empty, require_cluster_dns=False,
                                           zones={"cluster.local": {"forward": ["cluster"]}, **zones}))
            assert wait_for(lambda: agent.metric("nodelocal_config_reloads_total", result="success") == 1, 5)
        assert "zone cluster.local has no upstream server" in caplog.text
        assert agent.query(WEB).rcode() == dns.rcode.SERVFAIL
    finally:
        agent.stop()


def test_an_access_list_change_applies_on_reload(tmp_path: Path, upstreams: tuple[FakeDNS, FakeDNS, FakeDNS]) -> None:
    from tests.integration.test_clients import OUTSIDE, ask_from

    cluster, host, _corp = upstreams
    port = free_port()
    cfg_file = tmp_path / "agent.yaml"
    closed = {"node_ranges": False, "allow": ["127.0.0.1/32"]}
    cfg_file.write_text(agent_yaml(port, cluster, host, acl=closed))
    agent = ReloadingAgent(Source(file=str(cfg_file), env={}, resolv_conf="/nonexistent")).start()
    try:
        r = ask_from(OUTSIDE, port, dns.message.make_query(WEB, "A"))
        assert r is not None and r.rcode() == dns.rcode.REFUSED
        cfg_file.write_text(agent_yaml(port, cluster, host, acl={**closed, "allow": ["127.0.0.0/30"]}))
        assert wait_for(lambda: agent.metric("nodelocal_config_reloads_total", result="success") == 1, 5)
        r = ask_from(OUTSIDE, port, dns.message.make_query(WEB, "A"))
        assert r is not None and r.rcode() == dns.rcode.NOERROR and r.answer
        cfg_file.write_text(agent_yaml(port, cluster, host, acl={**closed, "action": "drop"}))
        assert wait_for(lambda: agent.metric("nodelocal_config_reloads_total", result="success") == 2, 5)
        assert ask_from(OUTSIDE, port, dns.message.make_query(WEB, "A")) is None
    finally:
        agent.stop()
