"""Fixtures that start the real agent on a loopback port, in a thread with its own uvloop loop."""

from __future__ import annotations

import asyncio
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import dns.message
import dns.query
import pytest
import uvloop

from nodelocal.agent.lifecycle import Agent
from nodelocal.config.model import _merge, load
from tests.fakedns import FakeDNS, free_port, wait_for


class RunningAgent:
    """An Agent serving on 127.0.0.1:<free port>; queries and HTTP helpers for tests."""

    def __init__(self, overrides: dict[str, Any], port: int | None = None) -> None:
        self.port = port or free_port()
        base = {
            "listen": {"localip": ["127.0.0.1"], "port": self.port},
            "setup": False,
            "metrics_addr": "127.0.0.1:0",
            "health_addr": "127.0.0.1:0",
            "control": {"socket": ""},  # tests that use it name their own (never the host's /run/nodelocal)
            "handover": {"socket": ""},  # tests that hand over name a socket of their own
        }
        self.cfg = load(None, _merge(base, overrides), env={}, resolv_conf="/nonexistent")
        self.agent: Agent | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.error: BaseException | None = None

    def start(self) -> RunningAgent:
        def run() -> None:
            self.loop = uvloop.new_event_loop()
            asyncio.set_event_loop(self.loop)
            self.agent = Agent(self.cfg)
            try:
                self.loop.run_until_complete(self.agent.run(drain_timeout=1.0))
            except BaseException as e:  # surfaced by the test that started it
                self.error = e
            finally:
                self.loop.close()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert wait_for(lambda: self.error is not None or (self.agent is not None and any(
            k == "http" for k, _a in self.agent.bound))), "agent did not start"
        if self.error:
            raise self.error
        return self

    def stop(self) -> None:
        if self.loop is not None and self.agent is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.agent.stop)
        self.thread.join(10)

    @property
    def stats(self) -> Any:
        assert self.agent is not None
        return self.agent.meters.server

    @property
    def http_port(self) -> int:
        assert self.agent is not None
        return next(a[1] for k, a in self.agent.bound if k == "http")

    def query(self, name: str, rdtype: str = "A", tcp: bool = False, timeout: float = 6.0,
              **make: Any) -> dns.message.Message:
        q = dns.message.make_query(name, rdtype, **make)
        if tcp:
            return dns.query.tcp(q, "127.0.0.1", port=self.port, timeout=timeout)
        return dns.query.udp(q, "127.0.0.1", port=self.port, timeout=timeout, ignore_trailing=False)

    def send_raw(self, wire: bytes, timeout: float = 1.0) -> bytes | None:
        import socket
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(timeout)
            s.sendto(wire, ("127.0.0.1", self.port))
            try:
                return s.recv(65535)
            except TimeoutError:
                return None

    def http(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of `name` whose labels include `labels`, read from /metrics."""
        from prometheus_client.parser import text_string_to_metric_families
        _s, body = self.http("/metrics")
        total = 0.0
        for fam in text_string_to_metric_families(body):
            for s in fam.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    total += s.value
        return total


@pytest.fixture
def cluster() -> Iterator[FakeDNS]:
    """The 'CoreDNS' upstream: authoritative for cluster.local."""
    with FakeDNS(zone="cluster.local.") as f:
        f.add("web.default.svc.cluster.local", "A", 100, "10.0.0.10")
        f.add("example.test", "A", 100, "192.0.2.10")
        yield f


@pytest.fixture
def host() -> Iterator[FakeDNS]:
    """The node's own nameserver."""
    with FakeDNS(zone="example.test.") as f:
        f.add("www.example.test", "A", 100, "192.0.2.1")
        f.add("example.test", "A", 100, "192.0.2.20")
        yield f


def upstreams(cluster: FakeDNS, host: FakeDNS, **group: Any) -> dict[str, Any]:
    return {
        "upstreams": {
            "cluster": {"servers": [f"127.0.0.1:{cluster.port}"], **group},
            "host": {"servers": [f"127.0.0.1:{host.port}"], **group},
        }
    }


@pytest.fixture
def make_agent() -> Iterator[Any]:
    started: list[RunningAgent] = []

    def make(overrides: dict[str, Any]) -> RunningAgent:
        a = RunningAgent(overrides).start()
        started.append(a)
        return a

    yield make
    for a in started:
        a.stop()


@pytest.fixture
def agent(cluster: FakeDNS, host: FakeDNS, make_agent: Any) -> RunningAgent:
    """The agent with the default zones: cluster.local -> cluster; '.' -> cluster, then host."""
    return make_agent(upstreams(cluster, host, try_timeout=0.5))

