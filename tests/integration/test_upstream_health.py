"""Upstream health that steers, against the real agent: a group of two servers, one of which goes silent."""

from __future__ import annotations

import json
import time
from typing import Any

import dns.rcode

from tests.fakedns import DROP, FakeDNS, wait_for

TRY_TIMEOUT = 1.0


def test_after_the_first_failures_queries_no_longer_wait_for_a_silent_server(make_agent: Any, host: FakeDNS) -> None:
    with FakeDNS(zone="cluster.local.") as dead, FakeDNS(zone="cluster.local.") as alive:
        agent = make_agent({"upstreams": {
            "cluster": {"servers": [f"127.0.0.1:{dead.port}", f"127.0.0.1:{alive.port}"], "transport": "udp",
                        "policy": "sequential", "try_timeout": TRY_TIMEOUT, "health_check": 0.1},
            "host": {"servers": [f"127.0.0.1:{host.port}"]},
        }})
        to = f"127.0.0.1:{dead.port}"
        names = [f"q{i}.default.svc.cluster.local" for i in range(6)]
        for key in [n + "." for n in names] + ["."]:
            dead.behaviour[key] = DROP  # silent to the queries and to the health probes (`. IN NS`)
        for n in names[:2]:  # the first two each wait out a try on the dead server, then get alive's answer
            assert agent.query(n).rcode() == dns.rcode.NXDOMAIN
            assert dead.count(n) >= 1 and alive.count(n) == 1  # (the dead one also got a UDP retransmit)
        assert agent.metric("nodelocal_upstream_healthy", to=to) == 0
        assert agent.metric("nodelocal_upstream_health_changes_total", to=to, state="down") == 1
        _status, body = agent.http("/api/stats")
        assert {u["to"]: u["healthy"] for u in json.loads(body)["upstreams"]}[to] is False

        for n in names[2:5]:  # now the dead server is skipped: answered without waiting for it
            t0 = time.monotonic()
            assert agent.query(n).rcode() == dns.rcode.NXDOMAIN
            assert time.monotonic() - t0 < TRY_TIMEOUT
            assert (dead.count(n), alive.count(n)) == (0, 1)
        assert agent.metric("nodelocal_upstream_requests_total", to=to, outcome="timeout") == 2

        assert wait_for(lambda: dead.count(".", "NS") >= 2)  # probed meanwhile, `. IN NS`
        del dead.behaviour["."]  # it answers again: the next probe brings it back
        assert wait_for(lambda: agent.metric("nodelocal_upstream_healthy", to=to) == 1)
        assert agent.metric("nodelocal_upstream_health_changes_total", to=to, state="up") == 1
        del dead.behaviour[names[5] + "."]
        assert agent.query(names[5]).rcode() == dns.rcode.NXDOMAIN
        assert (dead.count(names[5]), alive.count(names[5])) == (1, 0)  # first in order again
