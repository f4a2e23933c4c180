"""Access control and per-client limits through the real agent on loopback: a client outside the allowed
ranges (a second loopback source address) gets REFUSED over UDP and TCP, is counted, and causes no upstream
query and no cache entry; an allowed client is answered as usual."""

from __future__ import annotations

import socket
import struct
from typing import Any

import dns.message
import dns.name
import dns.rcode
import dns.rdatatype

from tests.integration.conftest import upstreams

OUTSIDE = "127.0.0.2"  # a source address outside acl.allow (the listen address 127.0.0.1 is always allowed)


def ask_from(src: str, port: int, q: dns.message.Message, tcp: bool = False) -> dns.message.Message | None:
    wire = q.to_wire()
    if tcp:
        with socket.create_connection(("127.0.0.1", port), timeout=3, source_address=(src, 0)) as s:
            s.sendall(struct.pack(">H", len(wire)) + wire)
            n = struct.unpack(">H", s.recv(2))[0]
            data = b""
            while len(data) < n:
                data += s.recv(n - len(data))
            return dns.message.from_wire(data)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((src, 0))
        s.settimeout(1.0)
        s.sendto(wire, ("127.0.0.1", port))
        try:
            return dns.message.from_wire(s.recv(65535))
        except TimeoutError:
            return None


def test_outside_clients_are_refused_counted_never_forwarded(cluster: Any, host: Any, make_agent: Any) -> None:
    a = make_agent({**upstreams(cluster, host, try_timeout=0.5),
                    "acl": {"node_ranges": False, "allow": ["127.0.0.1/32"]}})
    name = "web.default.svc.cluster.local"
    for tcp in (False, True):
        r = ask_from(OUTSIDE, a.port, dns.message.make_query(name, "A"), tcp=tcp)
        assert r is not None and r.rcode() == dns.rcode.REFUSED and not r.answer
    assert cluster.count(name) == 0 and host.count() == 0  # nothing forwarded
    assert a.agent.store.index == {}  # nothing cached
    # The allowed client fills the cache; the outside one still learns nothing from it (hit path, memo).
    ok = a.query(name)
    assert ok.rcode() == dns.rcode.NOERROR and ok.answer
    for _ in range(3):
        r = ask_from(OUTSIDE, a.port, dns.message.make_query(name, "A"))
        assert r is not None and r.rcode() == dns.rcode.REFUSED and not r.answer
    assert a.metric("nodelocal_client_limited_total", reason="acl", action="refused") == 5
    assert a.metric("nodelocal_acl_networks") == 1


def test_drop_action_sends_nothing(cluster: Any, host: Any, make_agent: Any) -> None:
    a = make_agent({**upstreams(cluster, host, try_timeout=0.5),
                    "acl": {"node_ranges": False, "allow": ["127.0.0.1/32"], "action": "drop"}})
    assert ask_from(OUTSIDE, a.port, dns.message.make_query("example.test", "A")) is None
    assert a.query("example.test").answer
    assert a.metric("nodelocal_client_limited_total", reason="acl", action="dropped") == 1


def test_default_answers_loopback_clients(agent: Any) -> None:
    # node_ranges on (the default): loopback is the node's own; both sources are answered.
    r = ask_from(OUTSIDE, agent.port, dns.message.make_query("example.test", "A"))
    assert r is not None and r.rcode() == dns.rcode.NOERROR and r.answer
    assert agent.metric("nodelocal_acl_networks") >= 2


def test_any_over_udp_is_one_hinfo_and_over_tcp_the_whole_answer(cluster: Any, host: Any, agent: Any) -> None:
    name = "web.default.svc.cluster.local"
    r = agent.query(name, "ANY", use_edns=0)
    assert r.rcode() == dns.rcode.NOERROR and len(r.answer) == 1 and r.edns == 0
    rr = r.answer[0]
    assert rr.rdtype == dns.rdatatype.HINFO and rr.ttl <= 30 and rr.name == dns.name.from_text(name)
    assert rr[0].cpu == b"RFC8482" and rr[0].os == b""
    assert cluster.count(name, "ANY") == 0  # never forwarded
    # Over TCP, the client gets what the upstream has (here: the name exists, no ANY data in the fake).
    t = agent.query(name, "ANY", tcp=True)
    assert cluster.count(name, "ANY") == 1 and not any(a.rdtype == dns.rdatatype.HINFO for a in t.answer)
    # The TCP answer was not cached: UDP still gets the HINFO, from the agent, not from the cache.
    again = agent.query(name, "ANY")
    assert again.answer[0].rdtype == dns.rdatatype.HINFO and cluster.count(name, "ANY") == 1
    assert agent.metric("nodelocal_minimal_any_total") == 2


def test_any_forwarded_when_minimal_any_is_off(cluster: Any, host: Any, make_agent: Any) -> None:
    a = make_agent({**upstreams(cluster, host, try_timeout=0.5), "resolve": {"minimal_any": False}})
    r = a.query("web.default.svc.cluster.local", "ANY")
    assert cluster.count("web.default.svc.cluster.local", "ANY") == 1
    assert not any(x.rdtype == dns.rdatatype.HINFO for x in r.answer)


def test_one_flooding_client_cannot_take_the_miss_budget(cluster: Any, host: Any, make_agent: Any) -> None:
    # The flooder's names are never answered upstream: each holds a slot until its query times out.
    flood = [f"flood{i}.example.test" for i in range(40)]
    for n in flood:
        cluster.behaviour[n + "."] = "drop"
        host.behaviour[n + "."] = "drop"
    a = make_agent({**upstreams(cluster, host, try_timeout=1.0), "clients": {"max_pending": 8},
                    "resolve": {"query_timeout": 2.0}})
    assert a.query("web.default.svc.cluster.local").answer  # cached for the well-behaved client
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((OUTSIDE, 0))  # the flooder (loopback is within the node's ranges: allowed)
        s.settimeout(2.0)
        for n in flood:
            s.sendto(dns.message.make_query(n, "A").to_wire(), ("127.0.0.1", a.port))
        refused = 0
        for _ in range(len(flood) - 8):
            r = dns.message.from_wire(s.recv(512))
            refused += r.rcode() == dns.rcode.REFUSED
        assert refused == len(flood) - 8
        # Meanwhile the other client's hits and misses are answered as usual.
        assert a.query("web.default.svc.cluster.local").answer
        assert a.query("example.test", timeout=3.0).answer
    assert a.metric("nodelocal_client_limited_total", reason="pending", action="refused") == len(flood) - 8
    assert sum(cluster.count(n) for n in flood) <= 8 * 2  # at most its cap went upstream (each one retransmit)


def test_tcp_queries_count_against_the_client_cap(cluster: Any, host: Any, make_agent: Any) -> None:
    for i in range(6):
        cluster.behaviour[f"slow{i}.example.test."] = "drop"
        host.behaviour[f"slow{i}.example.test."] = "drop"
    a = make_agent({**upstreams(cluster, host, try_timeout=0.5), "clients": {"max_pending": 2},
                    "resolve": {"query_timeout": 1.0}})
    with socket.create_connection(("127.0.0.1", a.port), timeout=5, source_address=(OUTSIDE, 0)) as s:
        for i in range(6):
            w = dns.message.make_query(f"slow{i}.example.test", "A").to_wire()
            s.sendall(struct.pack(">H", len(w)) + w)
        rcodes = []
        for _ in range(6):
            n = struct.unpack(">H", s.recv(2))[0]
            data = b""
            while len(data) < n:
                data += s.recv(n - len(data))
            rcodes.append(dns.message.from_wire(data).rcode())
    assert rcodes.count(dns.rcode.REFUSED) == 4 and rcodes.count(dns.rcode.SERVFAIL) == 2
    assert a.metric("nodelocal_client_limited_total", reason="pending") == 4
    assert a.metric("nodelocal_client_state_entries", kind="pending") == 0  # released when answered


def test_tcp_hits_flow_for_a_client_at_its_cap(cluster: Any, host: Any, make_agent: Any) -> None:
    """The cap is on the slow path: a client whose misses fill it still gets its cache hits over TCP (a pod's
    resolver pipelining on one connection), as it does over UDP; only its further misses are REFUSED."""
    for i in range(2):
        cluster.behaviour[f"slow{i}.example.test."] = "drop"
        host.behaviour[f"slow{i}.example.test."] = "drop"
    a = make_agent({**upstreams(cluster, host, try_timeout=0.5), "clients": {"max_pending": 2},
                    "resolve": {"query_timeout": 1.0}})
    assert ask_from(OUTSIDE, a.port, dns.message.make_query("web.default.svc.cluster.local", "A"), tcp=True)
    names = ["slow0.example.test", "slow1.example.test", "web.default.svc.cluster.local", "fresh.example.test"]
    with socket.create_connection(("127.0.0.1", a.port), timeout=5, source_address=(OUTSIDE, 0)) as s:
        for n in names:
            w = dns.message.make_query(n, "A").to_wire()
            s.sendall(struct.pack(">H", len(w)) + w)
        got = {}
        for _ in names:
            size = struct.unpack(">H", s.recv(2))[0]
            data = b""
            while len(data) < size:
                data += s.recv(size - len(data))
            m = dns.message.from_wire(data)
            got[m.question[0].name.to_text().rstrip(".")] = m
    hit = got["web.default.svc.cluster.local"]
    assert hit.rcode() == dns.rcode.NOERROR and hit.answer  # answered from the cache while at the cap
    assert got["fresh.example.test"].rcode() == dns.rcode.REFUSED  # a miss past the cap
    assert a.metric("nodelocal_client_limited_total", reason="pending") == 1


def test_metrics_bind_the_node_address_and_loopback_only(cluster: Any, host: Any, make_agent: Any,
                                                          monkeypatch: Any) -> None:
    from tests.fakedns import free_port

    port = free_port()
    monkeypatch.setenv("NODELOCAL_NODE_IP", "127.0.0.2")  # stands in for the node's own address
    a = make_agent({**upstreams(cluster, host), "metrics_addr": f":{port}"})
    http = sorted(addr for kind, addr in a.agent.bound if kind == "http")
    assert ("127.0.0.1", port) in http and ("127.0.0.2", port) in http
    assert not any(h == "0.0.0.0" for h, _p in http)
    for ip in ("127.0.0.1", "127.0.0.2"):
        with socket.create_connection((ip, port), timeout=2):
            pass
    try:
        socket.create_connection(("127.0.0.3", port), timeout=2).close()
    except ConnectionRefusedError:
        pass
    else:
        raise AssertionError("metrics reachable on an address that is not the node's")


def test_the_node_ranges_are_read_again_and_new_ones_answered(cluster: Any, host: Any, make_agent: Any,
                                                               monkeypatch: Any) -> None:
    import ipaddress

    from nodelocal.agent import lifecycle

    # The kernel's view, as the periodic re-read gets it: first without 127.0.0.2, then a new route adds it.
    ranges = [[ipaddress.ip_network("127.0.0.1/32")]]
    monkeypatch.setattr(lifecycle, "read_node_networks", lambda: list(ranges[0]))
    a = make_agent({**upstreams(cluster, host, try_timeout=0.5), "netsetup": {"sync_interval": 0.2}})
    r = ask_from(OUTSIDE, a.port, dns.message.make_query("example.test", "A"))
    assert r is not None and r.rcode() == dns.rcode.REFUSED
    ranges[0] = [ipaddress.ip_network("127.0.0.0/30")]
    from tests.fakedns import wait_for

    def answered() -> bool:
        got = ask_from(OUTSIDE, a.port, dns.message.make_query("example.test", "A"))
        return got is not None and got.rcode() == dns.rcode.NOERROR

    assert wait_for(answered, timeout=5.0)
    assert a.metric("nodelocal_acl_networks") == 1
