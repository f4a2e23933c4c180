"""The agent on a real loopback socket against test upstreams it cannot tell from real ones."""

from __future__ import annotations

import socket
import struct
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import dns.flags
import dns.message
import dns.opcode
import dns.query
import dns.rcode
import dns.rdatatype

from tests.fakedns import DROP, NOSOA, REFUSED, SERVFAIL, SPOOF, TRUNCATE, FakeDNS, wait_for
from tests.integration.conftest import RunningAgent, upstreams


def a_records(m: dns.message.Message) -> list[str]:
    return sorted(rd.to_text() for rrset in m.answer for rd in rrset if rrset.rdtype == dns.rdatatype.A)


def test_miss_then_hit_asks_upstream_once(agent: RunningAgent, cluster: FakeDNS) -> None:
    first = agent.query("web.default.svc.cluster.local")
    second = agent.query("web.default.svc.cluster.local")
    assert a_records(first) == a_records(second) == ["10.0.0.10"]
    assert cluster.count("web.default.svc.cluster.local") == 1
    assert agent.metric("coredns_cache_hits_total", type="success") == 1
    assert agent.metric("coredns_cache_misses_total") == 1


def test_reply_keeps_client_id_and_name_case(agent: RunningAgent) -> None:
    agent.query("web.default.svc.cluster.local")  # fill the cache in lower case
    q = dns.message.make_query("WeB.DeFaUlT.svc.CLUSTER.local", "A")
    r = dns.query.udp(q, "127.0.0.1", port=agent.port, timeout=3)
    assert r.id == q.id
    assert r.question[0].name.to_text() == "WeB.DeFaUlT.svc.CLUSTER.local."
    assert a_records(r) == ["10.0.0.10"]


def test_ttl_is_capped_and_counts_down(agent: RunningAgent) -> None:
    first = agent.query("web.default.svc.cluster.local")
    assert first.answer[0].ttl == 30  # upstream said 100; success max TTL is 30
    time.sleep(2.1)
    later = agent.query("web.default.svc.cluster.local")
    assert later.answer[0].ttl in (27, 28)


def test_nxdomain_with_soa_is_cached_with_rfc2308_ttl(agent: RunningAgent, cluster: FakeDNS) -> None:
    cluster.soa_ttl, cluster.soa_minimum = 300, 3
    r1 = agent.query("nothere.default.svc.cluster.local")
    r2 = agent.query("nothere.default.svc.cluster.local")
    assert r1.rcode() == r2.rcode() == dns.rcode.NXDOMAIN
    assert cluster.count("nothere.default.svc.cluster.local") == 1
    # min(SOA TTL 300, MINIMUM 3) = 3, raised to the 5 s minimum, under the cluster zone's 5 s cap.
    assert r1.authority[0].ttl == 5  # the SOA (TTL 300) is served with the entry's TTL
    assert agent.metric("coredns_cache_hits_total", type="denial") == 1


def test_nodata_is_cached(agent: RunningAgent, cluster: FakeDNS) -> None:
    r1 = agent.query("web.default.svc.cluster.local", "AAAA")
    agent.query("web.default.svc.cluster.local", "AAAA")
    assert r1.rcode() == dns.rcode.NOERROR and not r1.answer
    assert cluster.count("web.default.svc.cluster.local", "AAAA") == 1


def test_negative_answer_without_soa_is_not_cached(agent: RunningAgent, cluster: FakeDNS) -> None:
    cluster.behaviour["gone.cluster.local."] = NOSOA
    for _ in range(2):
        assert agent.query("gone.cluster.local").rcode() == dns.rcode.NXDOMAIN
    assert cluster.count("gone.cluster.local") == 2


def test_servfail_is_cached_briefly(agent: RunningAgent, cluster: FakeDNS) -> None:
    cluster.behaviour["broken.cluster.local."] = SERVFAIL
    for _ in range(3):
        assert agent.query("broken.cluster.local").rcode() == dns.rcode.SERVFAIL
    assert cluster.count("broken.cluster.local") == 1


def test_refused_is_not_cached(agent: RunningAgent, cluster: FakeDNS) -> None:
    cluster.behaviour["no.cluster.local."] = REFUSED
    for _ in range(2):
        assert agent.query("no.cluster.local").rcode() == dns.rcode.REFUSED
    assert cluster.count("no.cluster.local") == 2


def test_truncated_upstream_udp_retried_over_tcp(cluster: FakeDNS, host: FakeDNS, make_agent: Any) -> None:
    cluster.behaviour["big.cluster.local."] = TRUNCATE
    cluster.add("big.cluster.local", "A", 60, *(f"10.1.0.{i}" for i in range(1, 61)))
    agent = make_agent(upstreams(cluster, host, transport="udp"))
    r = agent.query("big.cluster.local", use_edns=0, payload=4096)
    assert len(a_records(r)) == 60
    assert [s.proto for s in cluster.seen if s.name == "big.cluster.local."] == ["udp", "tcp"]


def test_answer_too_big_for_client_gets_tc_then_tcp_works(agent: RunningAgent, cluster: FakeDNS) -> None:
    cluster.add("many.cluster.local", "A", 60, *(f"10.2.0.{i}" for i in range(1, 61)))
    full = agent.query("many.cluster.local", use_edns=0, payload=4096)  # fits 4096: no TC
    assert not full.flags & dns.flags.TC and len(a_records(full)) == 60
    plain = agent.query("many.cluster.local", use_edns=False)  # 512 bytes for a client without EDNS
    assert plain.flags & dns.flags.TC and not plain.answer and plain.edns < 0
    small = agent.query("many.cluster.local", use_edns=0, payload=600)
    assert small.flags & dns.flags.TC and small.edns == 0
    over_tcp = agent.query("many.cluster.local", tcp=True)
    assert len(a_records(over_tcp)) == 60
    assert cluster.count("many.cluster.local") == 1


def test_edns_only_when_client_sent_it(agent: RunningAgent) -> None:
    assert agent.query("web.default.svc.cluster.local", use_edns=False).edns == -1
    with_edns = agent.query("web.default.svc.cluster.local", use_edns=0, payload=1400)
    assert with_edns.edns == 0
    do = agent.query("web.default.svc.cluster.local", use_edns=0, want_dnssec=True)
    assert do.ednsflags & dns.flags.DO


def test_tcp_pipelining_answers_every_query_on_one_connection(agent: RunningAgent) -> None:
    names = [f"n{i}.default.svc.cluster.local" for i in range(5)] + ["web.default.svc.cluster.local"] * 5
    queries = [dns.message.make_query(n, "A") for n in names]
    with socket.create_connection(("127.0.0.1", agent.port), timeout=5) as s:
        s.sendall(b"".join(struct.pack(">H", len(w)) + w for w in (q.to_wire() for q in queries)))
        got = {}
        buf = b""
        while len(got) < len(queries):
            chunk = s.recv(65535)
            assert chunk, "connection closed early"
            buf += chunk
            while len(buf) >= 2 and len(buf) >= 2 + struct.unpack(">H", buf[:2])[0]:
                n = struct.unpack(">H", buf[:2])[0]
                m = dns.message.from_wire(buf[2 : 2 + n])
                buf = buf[2 + n :]
                got[m.id] = m
    for q in queries:
        assert got[q.id].question[0].name == q.question[0].name


def test_dead_cluster_dns_falls_through_to_host_nameservers(agent: RunningAgent, cluster: FakeDNS) -> None:
    cluster.down = True
    r = agent.query("www.example.test", timeout=6)
    assert a_records(r) == ["192.0.2.1"]
    assert agent.metric("nodelocal_fallthrough_total") == 1
    # The cluster zone has no fallback: a dead cluster DNS means SERVFAIL there.
    assert agent.query("web.default.svc.cluster.local", timeout=6).rcode() == dns.rcode.SERVFAIL


def test_servfail_and_refused_from_cluster_fall_through(agent: RunningAgent, cluster: FakeDNS) -> None:
    cluster.behaviour["www.example.test."] = SERVFAIL
    assert a_records(agent.query("www.example.test")) == ["192.0.2.1"]
    cluster.behaviour["example.test."] = REFUSED
    assert a_records(agent.query("example.test")) == ["192.0.2.20"]


def test_nxdomain_from_cluster_is_an_answer_not_a_failure(agent: RunningAgent, host: FakeDNS) -> None:
    assert agent.query("unknown.test").rcode() == dns.rcode.NXDOMAIN
    assert host.count() == 0


def test_connection_refused_upstream_falls_through_fast(host: FakeDNS, make_agent: Any) -> None:
    dead = FakeDNS()
    dead.port = 1  # nothing listens there: ICMP port unreachable / RST
    agent = make_agent({"upstreams": {"cluster": {"servers": ["127.0.0.1:1"], "transport": "udp"},
                                      "host": {"servers": [f"127.0.0.1:{host.port}"]}}})
    t0 = time.monotonic()
    assert a_records(agent.query("www.example.test")) == ["192.0.2.1"]
    assert time.monotonic() - t0 < 1.5  # the refusal is seen at once, not after the 2 s try timeout


def test_concurrent_identical_misses_are_coalesced(agent: RunningAgent, cluster: FakeDNS) -> None:
    cluster.delay["web.default.svc.cluster.local."] = 0.3
    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(lambda _i: agent.query("web.default.svc.cluster.local"), range(20)))
    assert [a_records(a) for a in answers] == [["10.0.0.10"]] * 20
    assert cluster.count("web.default.svc.cluster.local") == 1
    assert agent.metric("nodelocal_coalesced_queries_total") >= 1


def test_too_many_upstream_queries_in_flight_are_refused(cluster: FakeDNS, host: FakeDNS, make_agent: Any) -> None:
    agent = make_agent({**upstreams(cluster, host), "resolve": {"max_concurrent": 2}})
    for i in range(6):
        cluster.delay[f"slow{i}.cluster.local."] = 0.3
    with ThreadPoolExecutor(6) as pool:
        rcodes = list(pool.map(lambda i: agent.query(f"slow{i}.cluster.local").rcode(), range(6)))
    assert rcodes.count(dns.rcode.REFUSED) >= 1
    assert rcodes.count(dns.rcode.NXDOMAIN) >= 2
    assert agent.metric("coredns_forward_max_concurrent_rejects_total") == rcodes.count(dns.rcode.REFUSED)


def test_spoofed_upstream_replies_are_dropped(cluster: FakeDNS, host: FakeDNS, make_agent: Any) -> None:
    cluster.behaviour["web.default.svc.cluster.local."] = SPOOF
    for transport in ("udp", "tcp"):
        agent = make_agent(upstreams(cluster, host, transport=transport))
        r = agent.query("web.default.svc.cluster.local")
        assert a_records(r) == ["10.0.0.10"]
        assert agent.metric("nodelocal_spoofed_replies_dropped_total") == 2
        agent.stop()


def test_upstream_timeout_gives_servfail_within_the_query_deadline(cluster: FakeDNS, host: FakeDNS,
                                                                    make_agent: Any) -> None:
    cluster.behaviour["slow.cluster.local."] = DROP
    agent = make_agent({**upstreams(cluster, host, try_timeout=0.3), "resolve": {"query_timeout": 1.0}})
    t0 = time.monotonic()
    assert agent.query("slow.cluster.local").rcode() == dns.rcode.SERVFAIL
    assert time.monotonic() - t0 < 2.0


def test_malformed_input_gets_formerr_or_silence_never_a_crash(agent: RunningAgent) -> None:
    good = dns.message.make_query("web.default.svc.cluster.local", "A")
    wire = good.to_wire()
    assert agent.send_raw(b"\x12\x34\x01") is None  # unreadable header: dropped
    reply = agent.send_raw(wire[:12] + b"\x07garbage")
    assert reply is not None and dns.message.from_wire(reply).rcode() == dns.rcode.FORMERR
    two = bytearray(wire)
    two[5] = 2  # QDCOUNT 2 with one question
    assert dns.message.from_wire(agent.send_raw(bytes(two)) or b"").rcode() == dns.rcode.FORMERR
    response = bytearray(wire)
    response[2] |= 0x80  # QR set: never answer a response
    assert agent.send_raw(bytes(response)) is None
    notify = dns.message.make_query("cluster.local", "SOA")
    notify.set_opcode(dns.opcode.NOTIFY)
    assert dns.message.from_wire(agent.send_raw(notify.to_wire()) or b"").rcode() == dns.rcode.NOTIMP
    v1 = dns.message.make_query("web.default.svc.cluster.local", "A", use_edns=1)
    assert dns.message.from_wire(agent.send_raw(v1.to_wire()) or b"").rcode() == dns.rcode.BADVERS
    axfr = dns.message.make_query("cluster.local", "AXFR")
    assert dns.message.from_wire(agent.send_raw(axfr.to_wire()) or b"").rcode() == dns.rcode.REFUSED
    import random
    rnd = random.Random(7)
    for _ in range(300):
        agent.send_raw(bytes(rnd.getrandbits(8) for _ in range(rnd.randrange(0, 80))), timeout=0.01)
    assert a_records(agent.query("web.default.svc.cluster.local")) == ["10.0.0.10"]


def test_health_ready_and_metrics_endpoints(agent: RunningAgent) -> None:
    assert agent.http("/health") == (200, "OK\n")
    assert agent.query("web.default.svc.cluster.local").rcode() == dns.rcode.NOERROR
    assert agent.http("/ready")[0] == 200
    status, body = agent.http("/metrics")
    assert status == 200 and "coredns_dns_requests_total" in body and "process_resident_memory_bytes" in body
    assert agent.http("/nope")[0] == 404


def test_health_fails_when_a_listener_is_wedged_and_ready_says_why(agent: RunningAgent) -> None:
    assert agent.http("/health") == (200, "OK\n") and agent.http("/ready") == (200, "ready\n")
    assert agent.agent is not None and agent.loop is not None
    proto = agent.agent.udp_protocols[0]
    # The socket is still bound and read, but nothing answers any more: the process lives, DNS does not.
    agent.loop.call_soon_threadsafe(setattr, proto, "datagram_received", lambda data, addr: None)
    time.sleep(1.1)  # past the reuse of the last self-check's result
    status, body = agent.http("/health")
    assert status == 503 and f"udp 127.0.0.1:{agent.port}: no answer to a self-query" in body
    assert agent.http("/ready")[0] == 503
    agent.loop.call_soon_threadsafe(proto.__dict__.pop, "datagram_received")
    assert wait_for(lambda: agent.http("/health")[0] == 200, 5)


def test_ready_goes_503_as_soon_as_the_agent_is_leaving(agent: RunningAgent) -> None:
    # Ready once the cluster group has answered (a probe or a query): on a busy machine not at the first ask.
    assert wait_for(lambda: agent.http("/ready")[0] == 200)
    assert agent.agent is not None
    agent.agent.leaving = "handing over to a successor"
    assert agent.http("/ready") == (503, "handing over to a successor\n")
    assert agent.http("/health")[0] == 200  # alive still: liveness must not restart it meanwhile


def test_not_ready_while_no_upstream_answers(make_agent: Any) -> None:
    down = FakeDNS(down=True).start()
    try:
        agent = make_agent({"upstreams": {"cluster": {"servers": [f"127.0.0.1:{down.port}"]},
                                          "host": {"servers": [f"127.0.0.1:{down.port}"]}}})
        assert agent.http("/health")[0] == 200
        assert agent.http("/ready")[0] == 503
    finally:
        down.stop()


def test_tcp_idle_connections_are_closed_and_capped(cluster: FakeDNS, host: FakeDNS, make_agent: Any) -> None:
    agent = make_agent({**upstreams(cluster, host),
                        "listen": {"tcp_idle_timeout": 0.3, "tcp_max_connections": 2}})
    a = socket.create_connection(("127.0.0.1", agent.port), timeout=3)
    b = socket.create_connection(("127.0.0.1", agent.port), timeout=3)
    assert wait_for(lambda: agent.stats.tcp_connections == 2)
    c = socket.create_connection(("127.0.0.1", agent.port), timeout=3)
    assert c.recv(1) == b""  # past the cap: closed at once
    assert agent.metric("nodelocal_tcp_rejected_total") == 1
    assert a.recv(1) == b"" and b.recv(1) == b""  # idle for 0.3 s: closed by the agent
    for s in (a, b, c):
        s.close()


def test_udp_receive_buffer_holds_a_burst_not_a_queue(make_agent: Any, cluster: FakeDNS, host: FakeDNS) -> None:
    small = make_agent({**upstreams(cluster, host), "listen": {"udp_rcvbuf": 65536}})
    assert small.agent is not None
    sock = small.agent.udp_transports[0].get_extra_info("socket")
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) == 2 * 65536  # the kernel doubles it
    assert small.query("web.default.svc.cluster.local").answer
