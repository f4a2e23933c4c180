"""Loop detection on loopback: an upstream at the agent's own address, and a resolver that forwards back to
the agent, are both found at start (and after a reload) and no longer forwarded to; the probe itself is
answered by the agent, never forwarded again, so nothing amplifies."""

from __future__ import annotations

import contextlib
import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from nodelocal.config.source import Source
from tests.fakedns import FakeDNS, free_port, wait_for
from tests.integration.test_reload import WEB, ReloadingAgent, agent_yaml


class Forwarder:
    """A resolver that relays every UDP query to `target` and the reply back: a loop when target is the agent."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.relayed = 0
        self.probes = 0  # relayed HINFO queries: loop probes (the readiness probe asks SOA)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                data, client = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            self.relayed += 1
            with contextlib.suppress(Exception):
                if dns.message.from_wire(data).question[0].rdtype == dns.rdatatype.HINFO:
                    self.probes += 1
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as up:
                up.settimeout(1.0)
                up.sendto(data, self.target)
                try:
                    self.sock.sendto(up.recv(4096), client)
                except TimeoutError:
                    pass

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(2)
        self.sock.close()


@pytest.fixture
def cluster() -> Iterator[FakeDNS]:
    with FakeDNS(zone="cluster.local.") as f:
        f.add(WEB, "A", 300, "10.0.0.10")
        f.add("www.example.test", "A", 300, "192.0.2.1")
        yield f


def test_upstream_at_our_own_address_is_dropped_at_start(tmp_path: Path, cluster: FakeDNS) -> None:
    port = free_port()
    f = tmp_path / "agent.yaml"
    # The node's resolv.conf names the agent itself: the classic node-local-dns loop.
    f.write_text(agent_yaml(port, cluster, cluster, upstreams={
        "cluster": {"servers": [f"127.0.0.1:{cluster.port}"]}, "host": {"servers": [f"127.0.0.1:{port}"]}},
        zones={".": {"forward": ["host"]}, "cluster.local": {"forward": ["cluster"]}}))
    agent = ReloadingAgent(Source(file=str(f), env={}, resolv_conf="/nonexistent")).start()
    try:
        assert agent.metric("nodelocal_upstream_loop", group="host", to=f"127.0.0.1:{port}") == 1
        assert agent.query(WEB).answer
        # '.' has no upstream left: SERVFAIL at once instead of a query chasing its own tail.
        assert agent.query("www.example.test").rcode() == dns.rcode.SERVFAIL
        assert agent.metric("coredns_dns_requests_total") == 2  # no query came back to us
    finally:
        agent.stop()


def test_a_resolver_forwarding_back_is_found_by_the_probe(tmp_path: Path, cluster: FakeDNS) -> None:
    port = free_port()
    fwd = Forwarder(("127.0.0.1", port))
    f = tmp_path / "agent.yaml"
    f.write_text(agent_yaml(port, cluster, cluster, resolve={"loop_detect": True}, upstreams={
        "cluster": {"servers": [f"127.0.0.1:{cluster.port}"]}, "host": {"servers": [f"127.0.0.1:{fwd.port}"]}}))
    try:
        agent = ReloadingAgent(Source(file=str(f), env={}, resolv_conf="/nonexistent")).start()
        try:
            assert wait_for(lambda: agent.metric("nodelocal_upstream_loop", group="host",
                                                 to=f"127.0.0.1:{fwd.port}") == 1, 5)
            assert agent.metric("nodelocal_upstream_loop", group="cluster") == 0  # the real one is fine
            assert fwd.probes == 1  # the probe went round once and was answered REFUSED: no amplification
            relayed = fwd.relayed
            cluster.down = True  # '.' would now fall through to the host group, which is out
            assert agent.query("www.example.test", timeout=8).rcode() == dns.rcode.SERVFAIL
            assert fwd.relayed == relayed
            # The loop is fixed (the host group points elsewhere): a reload probes again and clears it.
            cluster.down = False
            f.write_text(agent_yaml(port, cluster, cluster, resolve={"loop_detect": True}))
            assert wait_for(lambda: agent.metric("nodelocal_config_reloads_total", result="success") == 1, 5)
            assert agent.metric("nodelocal_upstream_loop") == 0
        finally:
            agent.stop()
    finally:
        fwd.close()


def test_probes_reach_every_upstream_once_and_are_not_cached(tmp_path: Path, cluster: FakeDNS) -> None:
    port = free_port()
    f = tmp_path / "agent.yaml"
    f.write_text(agent_yaml(port, cluster, cluster, resolve={"loop_detect": True}))
    agent = ReloadingAgent(Source(file=str(f), env={}, resolv_conf="/nonexistent")).start()
    try:
        probes = [s for s in cluster.seen if s.rdtype == "HINFO"]
        # cluster and host are the same fake here: one probe for each group it serves.
        assert len(probes) == 2 and all(re.match(r"^[0-9a-f]{8}\.[0-9a-f]{8}\.", p.name) for p in probes)
        assert agent.metric("nodelocal_upstream_loop") == 0
        assert agent.metric("coredns_dns_requests_total") == 0  # probes are not client queries
    finally:
        agent.stop()
