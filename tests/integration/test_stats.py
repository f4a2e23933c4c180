"""The live page's data (/api/stats), the page's files, and `nodelocal stats`, against the real agent."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import urllib.request
from typing import Any

import pytest

from nodelocal.cli import stats as statscli
from nodelocal.cli.commands import main
from tests.fakedns import FakeDNS
from tests.integration.conftest import RunningAgent, upstreams


def test_api_stats_counts_what_metrics_count(agent: RunningAgent) -> None:
    for _ in range(3):
        agent.query("web.default.svc.cluster.local")
    agent.query("nope.cluster.local")
    agent.query("web.default.svc.cluster.local", tcp=True)
    status, body = agent.http("/api/stats")
    assert status == 200
    s = json.loads(body)
    t = s["totals"]
    assert t["queries"] == agent.metric("coredns_dns_requests_total") == 5
    assert t["tcp"] == agent.metric("coredns_dns_requests_total", proto="tcp") == 1
    assert t["hits"] == agent.metric("coredns_cache_hits_total") == 3
    assert t["misses"] == agent.metric("coredns_cache_misses_total") == 2
    assert t["responses"] == {"NOERROR": 4, "NXDOMAIN": 1}
    assert {u["group"] for u in s["upstreams"]} == {"cluster", "host"}
    assert all(u["healthy"] for u in s["upstreams"])


def test_page_files_and_their_headers(agent: RunningAgent) -> None:
    base = f"http://127.0.0.1:{agent.http_port}"
    with urllib.request.urlopen(base + "/", timeout=5) as r:
        html = r.read().decode()
        assert r.headers["Content-Type"].startswith("text/html")
        csp = r.headers["Content-Security-Policy"]
        assert "default-src 'none'" in csp and "script-src 'self'" in csp
    assert "/page.js" in html and "/page.css" in html and "http" not in html.split("<body>")[0].replace(
        "http-equiv", "")
    for path, ctype in (("/page.js", "text/javascript"), ("/page.css", "text/css")):
        with urllib.request.urlopen(base + path, timeout=5) as r:
            assert r.headers["Content-Type"].startswith(ctype)
            assert r.headers["X-Content-Type-Options"] == "nosniff"


def test_page_off_means_no_page_and_no_sampling(cluster: FakeDNS, host: FakeDNS, make_agent: Any) -> None:
    agent = make_agent({**upstreams(cluster, host), "page": False})
    assert agent.http("/")[0] == 404 and agent.http("/api/stats")[0] == 404
    assert agent.http("/metrics")[0] == 200
    assert agent.agent.live is None
    assert all(p.countdown > 1 << 60 for p in agent.agent.udp_protocols)


def test_stats_command_once_and_watching(agent: RunningAgent, capsys: pytest.CaptureFixture[str]) -> None:
    agent.query("web.default.svc.cluster.local")
    agent.query("web.default.svc.cluster.local")
    addr = f"127.0.0.1:{agent.http_port}"
    assert main(["stats", "--addr", addr]) == 0
    out = capsys.readouterr().out
    assert "hit rate" in out and "total 2 (udp 2, tcp 0)" in out and "hits 1 (success 1, denial 0)" in out
    assert "top names" in out and "cluster" in out
    slept: list[float] = []
    buf = io.StringIO()
    assert statscli.run(addr, watch=True, interval=0.5, count=3, out=buf, sleep=slept.append) == 0
    assert buf.getvalue().count("nodelocal on ") == 3 and slept == [0.5, 0.5]
    # Into a pipe or file, frames follow one another with a rule between them (no screen clearing).
    assert buf.getvalue().count(statscli.FRAME_RULE) == 2 * 2 and statscli.CLEAR not in buf.getvalue()
    lines = io.StringIO()
    assert statscli.run(addr, watch=True, interval=0.5, count=2, as_json=True, out=lines, sleep=slept.append) == 0
    docs = [json.loads(line) for line in lines.getvalue().splitlines()]  # JSON Lines: one document a line
    assert [d["schema"] for d in docs] == [1, 1]
    assert main(["stats", "--addr", addr, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["totals"]["queries"] == 2


def test_stats_watch_into_a_pipe_closed_early_ends_without_a_traceback(agent: RunningAgent) -> None:
    # `nodelocal stats --watch | head -2`: the reader closes the pipe; the command ends as a program killed by
    # SIGPIPE would (141), or 0, and says nothing on stderr.
    proc = subprocess.Popen([sys.executable, "-m", "nodelocal", "stats", "--watch", "--interval", "0.05",
                             "--addr", f"127.0.0.1:{agent.http_port}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    head = [proc.stdout.readline() for _ in range(2)]
    proc.stdout.close()
    try:
        rc = proc.wait(timeout=30)
    finally:
        proc.kill()
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert head[0].startswith(b"nodelocal on ")
    assert rc in (0, statscli.EXIT_SIGPIPE), err
    assert "Traceback" not in err and "BrokenPipe" not in err, err


def test_stats_command_errors(capsys: pytest.CaptureFixture[str]) -> None:
    from tests.fakedns import free_port

    assert main(["stats", "--addr", f"127.0.0.1:{free_port()}"]) == 1
    assert "/api/stats" in capsys.readouterr().err
    assert main(["stats", "--addr", "not-an-address"]) == 2
    assert "--addr" in capsys.readouterr().err
    assert main(["stats", "--interval", "0"]) == 2
