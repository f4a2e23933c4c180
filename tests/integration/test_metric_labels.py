"""coredns_dns_* series carry the zone that answered and the listener as CoreDNS writes it (dns://IP:PORT),
for hits answered on the UDP hot path (and its reply memo), misses, TCP, and queries no zone took."""

from __future__ import annotations

import dns.rcode

from tests.integration.conftest import RunningAgent

WEB = "web.default.svc.cluster.local"


def test_requests_and_responses_are_labelled_by_zone_and_listener(agent: RunningAgent) -> None:
    srv = f"dns://127.0.0.1:{agent.port}"
    for _ in range(4):
        agent.query(WEB)  # a miss, then hits (the hot path, then its reply memo)
    agent.query("nope.cluster.local")  # NXDOMAIN from the cluster DNS
    agent.query("www.example.test")  # the '.' zone
    agent.query(WEB, tcp=True)

    def req(**labels: str) -> float:
        return agent.metric("coredns_dns_requests_total", **labels)

    def resp(**labels: str) -> float:
        return agent.metric("coredns_dns_responses_total", **labels)

    assert req(server=srv, zone="cluster.local", proto="udp", family="1") == 5
    assert req(server=srv, zone=".", proto="udp") == 1
    assert req(server=srv, zone="cluster.local", proto="tcp") == 1
    assert req(zone="dropped") == 0
    assert req() == 7
    dns_lines = [ln for ln in agent.http("/metrics")[1].splitlines() if ln.startswith("coredns_dns_")]
    assert not [ln for ln in dns_lines if 'server="dns://:53"' in ln]  # none under the old fixed label
    assert resp(server=srv, zone="cluster.local", rcode="NOERROR") == 5
    assert resp(server=srv, zone="cluster.local", rcode="NXDOMAIN") == 1
    assert resp(server=srv, zone=".") == 1
    # Every configured zone has its series from the start (a first error shows in rate()).
    body = agent.http("/metrics")[1]
    assert f'coredns_dns_responses_total{{plugin="",rcode="SERVFAIL",server="{srv}",view="",zone="in-addr.arpa"}} 0.0' \
        in body
    dur = agent.metric("coredns_dns_request_duration_seconds_count", server=srv, zone="cluster.local")
    assert dur >= 2  # the miss over UDP and the TCP query at least (hits are sampled)


def test_a_query_no_zone_takes_is_labelled_dropped(agent: RunningAgent) -> None:
    srv = f"dns://127.0.0.1:{agent.port}"
    # A header alone has no question: FORMERR, and no zone took it.
    assert agent.send_raw(b"\x12\x34\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00") is not None
    assert agent.metric("coredns_dns_requests_total", server=srv, zone="dropped") == 1
    r = agent.query(WEB)
    assert r.rcode() == dns.rcode.NOERROR
    assert agent.metric("coredns_dns_responses_total", server=srv, zone="dropped", rcode="FORMERR") == 1
