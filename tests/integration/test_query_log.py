"""The query log against the real agent: off, the plain listener is bound; on, every answer (UDP hits from
the hot path and its memo, misses, TCP) becomes one line in CoreDNS log's format, written off the loop."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from nodelocal.observe.querylog import QueryLoggingUDP
from nodelocal.server.udp import UDPServer
from tests.fakedns import FakeDNS, wait_for
from tests.integration.conftest import RunningAgent, upstreams

WEB = "web.default.svc.cluster.local"
LINE = re.compile(r'^\[INFO\] 127\.0\.0\.1:(\d+) - (\d+) "(\w+) IN (\S+) (udp|tcp) (\d+) (true|false) (\d+)" '
                  r"(\w+) ([a-z,]+) (\d+) (\d+\.\d+)s$")


def test_off_by_default_binds_the_plain_listener(agent: RunningAgent) -> None:
    assert agent.agent is not None and agent.agent.qlog is None
    assert all(type(p) is UDPServer for p in agent.agent.udp_protocols)
    assert agent.metric("nodelocal_query_log_lines_total") == 0


def test_every_answer_is_one_line(cluster: FakeDNS, host: FakeDNS, make_agent: Any, tmp_path: Path) -> None:
    path = tmp_path / "queries.log"
    agent: RunningAgent = make_agent({**upstreams(cluster, host), "log": {"queries": True, "output": str(path)}})
    assert agent.agent is not None
    assert all(type(p) is QueryLoggingUDP for p in agent.agent.udp_protocols)
    for _ in range(3):
        agent.query(WEB)  # a miss, a hit inline, a hit from the reply memo
    agent.query("nope.cluster.local")
    agent.query(WEB, tcp=True)
    assert wait_for(lambda: path.exists() and len(path.read_text().splitlines()) == 5, 5), \
        path.read_text() if path.exists() else "no file"
    lines = [LINE.match(ln) for ln in path.read_text().splitlines()]
    assert all(lines), path.read_text()
    got = [(m.group(3), m.group(4), m.group(5), m.group(9)) for m in lines if m]
    assert got == [("A", WEB + ".", "udp", "NOERROR")] * 3 + [("A", "nope.cluster.local.", "udp", "NXDOMAIN"),
                                                              ("A", WEB + ".", "tcp", "NOERROR")]
    assert agent.metric("nodelocal_query_log_lines_total", result="written") == 5


def test_json_and_sampling(cluster: FakeDNS, host: FakeDNS, make_agent: Any, tmp_path: Path) -> None:
    path = tmp_path / "queries.json"
    agent: RunningAgent = make_agent({**upstreams(cluster, host),
                                      "log": {"queries": True, "output": str(path), "format": "json", "sample": 2}})
    for _ in range(6):
        agent.query(WEB)
    assert wait_for(lambda: path.exists() and len(path.read_text().splitlines()) == 3, 5)
    docs = [json.loads(ln) for ln in path.read_text().splitlines()]
    assert {d["name"] for d in docs} == {WEB + "."} and {d["rcode"] for d in docs} == {"NOERROR"}
    assert agent.metric("nodelocal_query_log_lines_total", result="sampled_out") == 3
