"""The agent as a user runs it (the `nodelocal` command), in front of a real DNS server (dnsmasq)."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

import dns.message
import dns.query
import dns.rcode
import pytest

from tests.fakedns import free_port, wait_for

pytestmark = pytest.mark.peer


@pytest.fixture
def dnsmasq() -> Iterator[int]:
    """dnsmasq answering for web.default.svc.cluster.local and *.example.test, UDP and TCP."""
    binary = shutil.which("dnsmasq")
    if binary is None:
        pytest.fail("dnsmasq is not installed: run hack/setup.sh")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--no-daemon", "--no-resolv", "--no-hosts", "--conf-file=/dev/null", f"--port={port}",
         "--listen-address=127.0.0.1", "--bind-interfaces", "--log-queries", "--log-facility=-",
         "--host-record=web.default.svc.cluster.local,10.0.0.5", "--address=/example.test/192.0.2.1",
         "--local=/cluster.local/", "--local-ttl=60"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        assert wait_for(lambda: _answers(port), 5), "dnsmasq did not start"
        yield port
    finally:
        proc.terminate()
        proc.wait(5)


def _answers(port: int) -> bool:
    try:
        dns.query.udp(dns.message.make_query("example.test", "A"), "127.0.0.1", port=port, timeout=0.2)
        return True
    except Exception:
        return False


def _http(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            return int(r.status)
    except Exception:
        return 0


def test_cli_serve_against_dnsmasq_then_sigterm(dnsmasq: int) -> None:
    port, mport = free_port(), free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "nodelocal", "serve", "--dev", "--port", str(port),
         "--metrics-addr", f"127.0.0.1:{mport}", "--health-addr", f"127.0.0.1:{mport}",
         "--cluster-dns", f"127.0.0.1:{dnsmasq}", "--upstream", f"127.0.0.1:{dnsmasq}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        assert wait_for(lambda: _http(mport, "/health") == 200, 10), "agent did not come up"
        assert wait_for(lambda: _http(mport, "/ready") == 200, 10), "agent never saw dnsmasq answer"
        # Cluster names go to dnsmasq over TCP (the cluster group's default), others likewise first.
        for _ in range(3):
            r = dns.query.udp(dns.message.make_query("web.default.svc.cluster.local", "A"), "127.0.0.1",
                              port=port, timeout=3)
            assert [rd.to_text() for rd in r.answer[0]] == ["10.0.0.5"]
        nx = dns.query.udp(dns.message.make_query("nope.cluster.local", "A"), "127.0.0.1", port=port, timeout=3)
        assert nx.rcode() == dns.rcode.NXDOMAIN
        r = dns.query.tcp(dns.message.make_query("a.b.example.test", "A"), "127.0.0.1", port=port, timeout=3)
        assert [rd.to_text() for rd in r.answer[0]] == ["192.0.2.1"]
        with urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=2) as m:
            body = m.read().decode()
        assert 'coredns_cache_hits_total{server="dns://:53",type="success",view="",zones="cluster.local."} 2.0' in body
        proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        assert proc.wait(10) == 0
        assert time.monotonic() - t0 < 8
    finally:
        if proc.poll() is None:
            proc.kill()
        out = proc.communicate()[0]
    assert "serving on" in out and "stopped" in out


def test_cli_bad_flag_and_bad_config_exit_nonzero(tmp_path: object) -> None:
    bad = subprocess.run([sys.executable, "-m", "nodelocal", "serve", "--no-such-flag"],
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    cfg = subprocess.run([sys.executable, "-m", "nodelocal", "serve", "--dev", "--cluster-dns", "not-an-ip"],
                         capture_output=True, text=True, timeout=30)
    assert cfg.returncode == 2
    assert "upstreams.cluster.servers[0]" in cfg.stderr and "not-an-ip" in cfg.stderr
