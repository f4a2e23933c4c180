"""A successor takes over a running agent on loopback while clients query: no query lost, cache warm.

Both agents run in this process (each in a thread with its own loop), on the same port, with a handover
socket in the test's directory; clients ask over UDP (a new socket, so a new source port, per query) and
TCP (a new connection per query) all along.
"""

from __future__ import annotations

import socket
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

from tests.fakedns import FakeDNS, free_port, wait_for
from tests.integration.conftest import RunningAgent, upstreams

NAMES = [f"n{i}.default.svc.cluster.local" for i in range(20)]


class Clients:
    """UDP and TCP clients querying NAMES in turn until stopped; every query's outcome kept."""

    def __init__(self, port: int, udp_rate: float = 300.0, tcp_rate: float = 50.0) -> None:
        self.port = port
        self.ok = 0
        self.failures: list[str] = []
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(tcp, rate), daemon=True)
                        for tcp, rate in ((False, udp_rate), (True, tcp_rate))]

    def _run(self, tcp: bool, rate: float) -> None:
        i = 0
        start = time.monotonic()
        while not self.stopping.is_set():
            name = NAMES[i % len(NAMES)]
            q = dns.message.make_query(name, "A")
            try:
                if tcp:
                    r = dns.query.tcp(q, "127.0.0.1", port=self.port, timeout=2)
                else:
                    r = dns.query.udp(q, "127.0.0.1", port=self.port, timeout=2)
                if r.rcode() == dns.rcode.NOERROR and r.answer:
                    self.ok += 1
                else:
                    self.failures.append(f"{'tcp' if tcp else 'udp'} {name}: {dns.rcode.to_text(r.rcode())}")
            except (OSError, dns.exception.DNSException) as e:
                self.failures.append(f"{'tcp' if tcp else 'udp'} {name}: {type(e).__name__} {e}")
            i += 1
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)

    def __enter__(self) -> Clients:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        for t in self.threads:
            t.join(10)


@pytest.fixture
def names() -> Iterator[FakeDNS]:
    with FakeDNS(zone="cluster.local.") as f:
        for i, n in enumerate(NAMES):
            f.add(n, "A", 300, f"10.0.1.{i}")
        yield f


def served(a: RunningAgent) -> int:
    s = a.stats
    return int(s.queries["udp"] + s.queries["tcp"])


def test_a_successor_takes_over_without_losing_a_query_and_with_a_warm_cache(
        names: FakeDNS, host: FakeDNS, tmp_path: Path) -> None:
    port, mport, hport = free_port(), free_port(), free_port()
    conf: dict[str, Any] = {**upstreams(names, host), "metrics_addr": f"127.0.0.1:{mport}",
                            "health_addr": f"127.0.0.1:{hport}",
                            "handover": {"socket": str(tmp_path / "handover.sock"), "timeout": 2.0}}
    old = RunningAgent(conf, port=port).start()
    new: RunningAgent | None = None
    try:
        for n in NAMES:
            assert old.query(n).answer
        asked = names.count(rdtype="A")
        ttl_before = old.query(NAMES[0]).answer[0].ttl
        with Clients(port) as clients:
            time.sleep(0.5)
            new = RunningAgent(conf, port=port).start()
            old.thread.join(10)
            assert not old.thread.is_alive() and old.error is None, "the old agent did not exit after handing over"
            time.sleep(0.5)
        assert clients.failures == [], f"{len(clients.failures)} of {clients.ok + len(clients.failures)} failed"
        assert clients.ok > 100
        assert served(old) > 0 and served(new) > 0  # both answered: before and after the switch
        # Warm: the successor answered every name from the cache it received, asking no upstream.
        assert names.count(rdtype="A") == asked
        assert new.metric("coredns_cache_hits_total") > 0
        # The HTTP endpoints moved with it, on the same ports; ready at once (it holds answers).
        with urllib.request.urlopen(f"http://127.0.0.1:{hport}/ready", timeout=5) as r:
            assert r.status == 200
        assert new.http_port == mport and new.metric("coredns_dns_requests_total") > 0
        # A TTL is never extended by the handover.
        assert new.query(NAMES[0]).answer[0].ttl <= ttl_before
        assert new.agent is not None and not new.agent.handed_over
        assert old.agent is not None and old.agent.handed_over
        assert (tmp_path / "handover.sock").exists()  # the successor's now: the next one can take over
    finally:
        if new is not None:
            new.stop()
        old.stop()


def test_with_no_predecessor_and_a_stale_socket_file_the_agent_binds_itself(
        names: FakeDNS, host: FakeDNS, tmp_path: Path) -> None:
    path = tmp_path / "handover.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.close()  # left behind by an agent killed with -9
    a = RunningAgent({**upstreams(names, host), "handover": {"socket": str(path), "bind_retry": 0.5}}).start()
    try:
        assert a.query(NAMES[1]).answer
        assert wait_for(lambda: a.agent is not None and a.agent.handover is not None and a.agent.handover.sock
                        is not None, 5)
    finally:
        a.stop()
    assert not path.exists()  # its own socket file, removed at exit


def test_a_second_agent_without_handover_waits_for_the_address_then_gives_up(
        names: FakeDNS, host: FakeDNS, tmp_path: Path) -> None:
    """A predecessor that holds the port but does not hand over (its socket file stale): bind_retry, then
    the usual bind error; the running agent is untouched."""
    port = free_port()
    path = tmp_path / "handover.sock"
    first = RunningAgent({**upstreams(names, host)}, port=port).start()  # handover off: does not answer
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.close()
    try:
        second = RunningAgent({**upstreams(names, host), "handover": {"socket": str(path), "bind_retry": 0.5}},
                              port=port)
        t0 = time.monotonic()
        with pytest.raises(Exception, match="Address already in use"):
            second.start()
        assert time.monotonic() - t0 >= 0.5
        assert first.query(NAMES[2]).answer
    finally:
        first.stop()


def test_after_a_crash_the_snapshot_starts_the_agent_warm(names: FakeDNS, host: FakeDNS, tmp_path: Path) -> None:
    """No predecessor to hand over (it crashed): the cache comes from the snapshot it wrote, TTLs counted on."""
    snap = tmp_path / "cache.snapshot"
    conf: dict[str, Any] = {**upstreams(names, host), "handover": {"socket": "", "snapshot": str(snap),
                                                                   "snapshot_interval": 1.0}}
    first = RunningAgent(conf).start()
    try:
        for n in NAMES[:5]:
            assert first.query(n).answer
        ttl = first.query(NAMES[0]).answer[0].ttl
        assert wait_for(snap.exists, 5)  # the periodic write (a kill -9 would leave this one)
        time.sleep(1.2)
    finally:
        first.stop()
    asked = names.count(rdtype="A")
    second = RunningAgent(conf).start()
    try:
        for n in NAMES[:5]:
            assert second.query(n).answer
        assert names.count(rdtype="A") == asked  # warm: not one of them asked upstream again
        assert second.query(NAMES[0]).answer[0].ttl < ttl  # the time in between counted, never extended
    finally:
        second.stop()
    # A snapshot that is not one: ignored, the agent starts cold and serves.
    snap.write_bytes(b"garbage")
    third = RunningAgent(conf).start()
    try:
        assert third.query(NAMES[0]).answer
        assert names.count(rdtype="A") == asked + 1
    finally:
        third.stop()
