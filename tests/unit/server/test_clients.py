"""Access control and per-client limits (server/clients.py, netsetup/ranges.py): verdicts, the node's ranges
from netlink messages, the rate limiter with slip, the per-client cap on queries in flight, and the UDP
listener applying them before the cache."""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

import dns.message
import dns.rcode
import pytest

from nodelocal.cache.store import Store
from nodelocal.config import ClientsConfig, load
from nodelocal.dns import wire
from nodelocal.netsetup.ranges import node_networks
from nodelocal.server import clients as clientsmod
from nodelocal.server.clients import DROP, PASS, SLIP, Clients, RateLimiter, Verdicts, acl_networks, reply_for
from nodelocal.server.metrics import ServerStats
from nodelocal.server.udp import UDPServer
from tests.fakes import FakeTransport

net = ipaddress.ip_network


def cfg(**over: Any) -> Any:
    return load(None, over, env={}, resolv_conf="/nonexistent")


# -- verdicts ----------------------------------------------------------------------------------------------

def test_verdicts_allow_only_the_networks() -> None:
    v = Verdicts([net("10.244.0.0/16"), net("fd00:10::/64"), net("127.0.0.0/8")])
    assert v["10.244.3.4"] and v["127.0.0.1"] and v["fd00:10::5"]
    assert not v["198.51.100.7"] and not v["fd00:11::5"] and not v["10.245.0.1"]
    assert not v["not an address"]  # never raises: what the socket reports is judged, not trusted
    assert v["::ffff:10.244.0.9"]  # an IPv4-mapped source is judged as the IPv4 address it is
    assert not v.open and not v.everyone


def test_verdicts_are_remembered_and_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(clientsmod, "MAX_VERDICTS", 4)
    v = Verdicts([net("10.0.0.0/8")])
    for i in range(10):
        assert v[f"10.0.0.{i}"]
        assert len(v) <= 4
    assert v.get("10.0.0.9") is True  # the last one is held: the next query is one dict lookup


def test_everything_is_open_and_both_families_is_everyone() -> None:
    assert Verdicts([net("0.0.0.0/0")]).open
    assert not Verdicts([net("0.0.0.0/0")]).everyone  # IPv6 clients are still checked
    assert not Verdicts([net("0.0.0.0/0")])["fd00::1"]
    assert Verdicts([net("0.0.0.0/0"), net("::/0")]).everyone


def test_acl_networks_always_hold_the_listen_addresses() -> None:
    c = cfg(acl={"node_ranges": False, "allow": ["192.0.2.0/24"]}, listen={"localip": ["169.254.20.10"]})
    v = Verdicts(acl_networks(c, [net("10.0.0.0/8")]))
    assert v["169.254.20.10"] and v["192.0.2.77"]
    assert not v["10.1.1.1"] and not v["127.0.0.1"]  # node ranges off: not even loopback
    on = Verdicts(acl_networks(cfg(), None))  # the node's ranges unknown (netlink failed): loopback
    assert on["127.0.0.1"] and not on["10.1.1.1"]


def test_acl_allow_must_be_a_cidr() -> None:
    from nodelocal import ConfigError

    with pytest.raises(ConfigError, match=r"acl\.allow\[1\]"):
        cfg(acl={"allow": ["10.0.0.0/8", "10.0.0.0/33"]})


# -- the node's ranges from netlink ------------------------------------------------------------------------

class Msg(dict[str, Any]):
    def __init__(self, attrs: dict[str, Any], **fields: Any) -> None:
        super().__init__(fields)
        self.attrs = attrs

    def get_attr(self, name: str) -> Any:
        return self.attrs.get(name)


class FakeNetlink:
    def __init__(self) -> None:
        self.addrs = [Msg({"IFA_ADDRESS": "127.0.0.1", "IFA_LOCAL": "127.0.0.1"}, prefixlen=8),
                      Msg({"IFA_ADDRESS": "192.0.2.2", "IFA_LOCAL": "192.0.2.2"}, prefixlen=24),
                      Msg({"IFA_ADDRESS": "169.254.20.10"}, prefixlen=32),
                      Msg({"IFA_ADDRESS": "fe80::1%eth0"}, prefixlen=64)]
        self.routes = {
            socket.AF_INET: [Msg({}, dst_len=0, type=1),  # the default route: everything, never taken
                             Msg({"RTA_DST": "10.244.1.0"}, dst_len=24, type=1),  # this node's pods (cni0)
                             Msg({"RTA_DST": "10.244.2.0"}, dst_len=24, type=1),  # another node's, via it
                             Msg({"RTA_DST": "10.244.64.0"}, dst_len=26, type=6),  # Calico IPAM block
                             Msg({"RTA_DST": "203.0.113.0"}, dst_len=24, type=7),  # unreachable: not ours
                             Msg({"RTA_DST": "224.0.0.0"}, dst_len=4, type=1)],  # multicast: never a client
            socket.AF_INET6: [Msg({"RTA_DST": "fd00:10:244:1::"}, dst_len=64, type=1)],
        }

    def get_addr(self, **kw: Any) -> list[Msg]:
        return self.addrs

    def get_routes(self, **kw: Any) -> list[Msg]:
        assert kw["table"] == 254
        return self.routes[kw["family"]]


def test_node_networks_are_addresses_subnets_and_routes_without_the_default() -> None:
    v = Verdicts(node_networks(FakeNetlink()))
    for ok in ("127.0.0.1", "::1", "192.0.2.200", "169.254.20.10", "10.244.1.7", "10.244.2.7", "10.244.64.63",
               "fd00:10:244:1::9", "fe80::99"):
        assert v[ok], ok
    for bad in ("198.51.100.7", "10.244.64.64", "203.0.113.5", "224.0.0.5", "169.254.20.11", "8.8.8.8"):
        assert not v[bad], bad
    assert not v.open


# -- replies without work ----------------------------------------------------------------------------------

def test_reply_for_echoes_the_question_and_never_answers_a_response() -> None:
    q = dns.message.make_query("secret.default.svc.cluster.local", "A")
    r = dns.message.from_wire(reply_for(q.to_wire(), wire.REFUSED) or b"")
    assert r.id == q.id and r.rcode() == dns.rcode.REFUSED and r.question == q.question and not r.answer
    tc = dns.message.from_wire(reply_for(q.to_wire(), 0, tc=True) or b"")
    assert tc.flags & dns.flags.TC and tc.rcode() == dns.rcode.NOERROR and not tc.answer
    resp = dns.message.make_response(q).to_wire()
    assert reply_for(resp, wire.REFUSED) is None
    assert reply_for(b"\x00\x01", wire.REFUSED) is None
    garbled = reply_for(q.to_wire()[:20], wire.REFUSED)
    assert garbled is not None and dns.message.from_wire(garbled).question == []



def test_reply_for_an_update_has_no_question_a_client_cannot_read() -> None:
    """Found by hack/fuzz.py: an UPDATE (opcode 5) whose zone section was a question of type 99 got it echoed
    under REFUSED, and dnspython could not read the reply."""
    update = bytes.fromhex("7f36290000010000c000000104746573740373ff6300006300010000290100000000000000")
    r = reply_for(update, wire.REFUSED)
    assert r is not None
    m = dns.message.from_wire(r)
    assert m.rcode() == dns.rcode.REFUSED and m.id == 0x7F36


# -- the rate limiter --------------------------------------------------------------------------------------

class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_rate_limit_burst_then_slip_every_nth_then_refill() -> None:
    clock = Clock()
    rl = RateLimiter(ClientsConfig(rate=10, burst=5, slip=2), clock)
    assert [rl.check("10.0.0.1") for _ in range(5)] == [PASS] * 5
    assert [rl.check("10.0.0.1") for _ in range(4)] == [DROP, SLIP, DROP, SLIP]
    assert rl.check("10.0.0.2") == PASS  # another client has its own bucket
    clock.t += 0.11  # one token back at 10/s (and a little)
    assert rl.check("10.0.0.1") == PASS
    assert rl.check("10.0.0.1") != PASS


def test_rate_limit_shares_a_prefix_and_slip_zero_drops_all() -> None:
    rl = RateLimiter(ClientsConfig(rate=1, burst=1, slip=0, ipv4_prefix=24, ipv6_prefix=56), Clock())
    assert rl.check("10.0.0.1") == PASS
    assert [rl.check(f"10.0.0.{i}") for i in (2, 3, 4)] == [DROP] * 3
    assert rl.check("10.0.1.1") == PASS
    assert rl.check("fd00:0:0:1::1") == PASS
    assert rl.check("fd00:0:0:2::1") == DROP  # same /56


def test_rate_limit_state_is_bounded_and_forgets_idle_clients_first() -> None:
    clock = Clock()
    rl = RateLimiter(ClientsConfig(rate=10, burst=10, max_tracked=16), clock)
    for _ in range(20):
        rl.check("10.9.9.9")  # the flooder, limited
    clock.t += 0.5  # 5 tokens: not refilled, not idle
    rl.check("10.9.9.9")
    for i in range(200):
        rl.check(f"10.0.{i // 250}.{i % 250}")
        assert len(rl.buckets) <= 16
    assert len(rl.buckets) <= 16


# -- per-client cap on queries in flight -------------------------------------------------------------------

def test_pending_cap_per_client() -> None:
    c = Clients(cfg(clients={"max_pending": 2}), None, Clock())
    assert c.take("10.0.0.1") and c.take("10.0.0.1")
    assert not c.take("10.0.0.1")
    assert c.take("10.0.0.2")  # another client is not held back
    c.release("10.0.0.1")
    assert c.take("10.0.0.1")
    for _ in range(3):
        c.release("10.0.0.1")
    c.release("10.0.0.2")
    assert c.pending == {}  # an entry lives only while its client has queries in flight
    assert Clients(cfg(clients={"max_pending": 0}), None, Clock()).take("x")


def test_configure_keeps_pending_counts_and_reports_acl_changes() -> None:
    c = Clients(cfg(), [net("10.0.0.0/8")], Clock())
    c.take("10.0.0.1")
    assert not c.configure(cfg())  # the same networks
    assert c.configure(cfg(acl={"allow": ["192.0.2.0/24"]}))
    assert c.pending == {"10.0.0.1": 1}
    assert c.verdicts is not None and c.verdicts["192.0.2.1"] and c.verdicts["10.1.2.3"]
    assert c.configure(cfg(), [net("10.0.0.0/16")])  # newly read node ranges
    assert c.verdicts is not None and not c.verdicts["10.1.2.3"]
    assert c.rate is None and c.configure(cfg(clients={"rate": 5})) is False and c.rate is not None
    assert c.sizes() == {"acl_verdicts": 1, "pending": 1, "rate": 0}


# -- the UDP listener --------------------------------------------------------------------------------------

class Recorder:
    def __init__(self) -> None:
        self.seen: list[bytes] = []

    async def answer(self, query: bytes, tcp: bool) -> bytes | None:
        self.seen.append(query)
        return None


def udp(c: Clients) -> tuple[UDPServer, FakeTransport, Recorder, ServerStats]:
    stats = ServerStats()
    rec = Recorder()
    srv = UDPServer(rec, Store(1 << 20), stats, 1232, clients=c)  # type: ignore[arg-type]
    t = FakeTransport()
    srv.connection_made(t)  # type: ignore[arg-type]
    return srv, t, rec, stats


def test_udp_refuses_outside_clients_before_the_cache_and_the_memo() -> None:
    c = Clients(cfg(acl={"node_ranges": False, "allow": ["10.0.0.0/8"]}), None, Clock())
    srv, t, rec, stats = udp(c)
    q = dns.message.make_query("web.default.svc.cluster.local", "A").to_wire()
    # A memo entry that would answer these exact bytes: the ACL must come first.
    srv.memo[q[2:]] = (object(), 1e18, b"leaked")  # type: ignore[assignment]
    srv.datagram_received(q, ("198.51.100.7", 5353))
    assert len(t.sent) == 1 and dns.message.from_wire(t.sent[0][0]).rcode() == dns.rcode.REFUSED
    assert not rec.seen and stats.limited[("acl", "refused")] == 1 and stats.rcodes[wire.REFUSED] == 1
    c.configure(cfg(acl={"node_ranges": False, "allow": ["10.0.0.0/8"], "action": "drop"}))
    srv.allowed = c.verdicts
    srv.datagram_received(q, ("198.51.100.7", 5353))
    assert len(t.sent) == 1 and stats.limited[("acl", "dropped")] == 1


def test_udp_per_client_pending_cap_refuses_the_excess() -> None:
    import asyncio

    async def run() -> None:
        c = Clients(cfg(clients={"max_pending": 3}), None, Clock())
        srv, t, rec, stats = udp(c)
        for i in range(5):
            srv.datagram_received(dns.message.make_query(f"n{i}.example", "A").to_wire(), ("127.0.0.1", 1000))
        srv.datagram_received(dns.message.make_query("other.example", "A").to_wire(), ("127.0.0.2", 1000))
        assert stats.limited[("pending", "refused")] == 2 and len(t.sent) == 2
        assert all(dns.message.from_wire(d).rcode() == dns.rcode.REFUSED for d, _a in t.sent)
        assert c.pending == {"127.0.0.1": 3, "127.0.0.2": 1}
        await asyncio.gather(*srv.tasks)
        assert len(rec.seen) == 4 and c.pending == {}  # released when answered

    asyncio.run(run())


def test_udp_rate_limit_drops_and_slips() -> None:
    c = Clients(cfg(clients={"rate": 2, "burst": 2, "slip": 2}), None, Clock())
    srv, t, _rec, stats = udp(c)
    q = dns.message.make_query("x.example", "A").to_wire()
    srv.slow = []  # type: ignore[attr-defined]
    srv._slow = lambda data, addr: srv.slow.append(data)  # type: ignore[attr-defined, method-assign]
    for _ in range(6):
        srv.datagram_received(q, ("127.0.0.1", 1000))
    assert len(srv.slow) == 2  # type: ignore[attr-defined]
    assert stats.limited[("rate", "dropped")] == 2 and stats.limited[("rate", "truncated")] == 2
    assert all(dns.message.from_wire(d).flags & dns.flags.TC for d, _a in t.sent) and len(t.sent) == 2
