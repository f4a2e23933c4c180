"""nodelocal.resolve.forward: failover between servers and groups, the query deadline, policies and counters."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable, Iterator
from typing import Any

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import pytest

from nodelocal.config import UpstreamGroup
from nodelocal.dns import wire
from nodelocal.resolve.forward import Chain, Group, Reply
from nodelocal.resolve.metrics import MAX_FAILS, ResolveStats
from tests.fakedns import DROP, REFUSED, SERVFAIL, TRUNCATE, FakeDNS, free_port

NAME = "www.example.test"
FAST = 0.3  # per-try timeout of servers that are expected to time out


def question(name: str = NAME, rdtype: str = "A") -> bytes:
    owner = dns.name.from_text(name).to_wire()
    assert owner is not None
    return owner + struct.pack(">HH", dns.rdatatype.from_text(rdtype), 1)


def label(port: int) -> str:
    return f"127.0.0.1:{port}"


@pytest.fixture
def upstream() -> Iterator[Callable[..., FakeDNS]]:
    """Starts fake upstreams answering NAME with `ip` (so a reply tells which server sent it)."""
    started: list[FakeDNS] = []

    def make(ip: str = "192.0.2.1", how: str = "", delay: float = 0.0) -> FakeDNS:
        f = FakeDNS(zone="example.test.")
        f.add(NAME, "A", 100, ip)
        if how:
            f.behaviour[NAME + "."] = how
        if delay:
            f.delay[NAME + "."] = delay
        started.append(f.start())
        return f

    yield make
    for f in started:
        f.stop()


def group(name: str, ports: list[int], stats: ResolveStats, **cfg: Any) -> Group:
    cfg.setdefault("try_timeout", FAST)
    return Group(name, UpstreamGroup(servers=tuple(label(p) for p in ports), **cfg), stats)


def forward_all(groups: list[Group], stats: ResolveStats, questions: list[bytes], query_timeout: float = 5.0,
                rd: bool = True, cd: bool = False, do: bool = False) -> list[Reply | None]:
    """Forward each question in turn through one chain; the chain's connections are closed after."""

    async def run() -> list[Reply | None]:
        chain = Chain(groups, stats, query_timeout)
        try:
            return [await chain.forward(q, rd, cd, do) for q in questions]
        finally:
            for g in groups:
                g.close()

    return asyncio.run(run())


def forward(groups: list[Group], stats: ResolveStats, query_timeout: float = 5.0) -> Reply | None:
    return forward_all(groups, stats, [question()], query_timeout)[0]


def answer_ip(reply: Reply | None) -> str:
    assert reply is not None
    msg = dns.message.from_wire(reply[0])
    assert msg.rcode() == dns.rcode.NOERROR
    return str(msg.answer[0][0])


def rcode(reply: Reply | None) -> int:
    assert reply is not None
    return dns.message.from_wire(reply[0]).rcode()


# --------------------------------------------------------------------------------------------------
# Within a group: the next server after a failure


def test_first_server_answers_and_the_rest_are_not_asked(upstream: Callable[..., FakeDNS]) -> None:
    a, b = upstream("192.0.2.1"), upstream("192.0.2.2")
    stats = ResolveStats()
    reply = forward([group("g", [a.port, b.port], stats)], stats)
    assert answer_ip(reply) == "192.0.2.1"
    assert reply is not None and reply[1] == wire.scan(reply[0])  # the scan that validated it comes along
    assert (a.count(NAME), b.count(NAME)) == (1, 0)
    assert stats.upstream_requests == {(label(a.port), "NOERROR"): 1}
    assert stats.ready
    assert (stats.fallthrough, stats.healthcheck_broken) == (0, 0)


def test_next_server_after_a_timeout(upstream: Callable[..., FakeDNS]) -> None:
    a, b = upstream("192.0.2.1", DROP), upstream("192.0.2.2")
    stats = ResolveStats()
    assert answer_ip(forward([group("g", [a.port, b.port], stats)], stats)) == "192.0.2.2"
    assert (a.count(NAME), b.count(NAME)) == (1, 1)
    assert stats.upstream_requests[(label(a.port), "timeout")] == 1
    assert stats.upstream_requests[(label(b.port), "NOERROR")] == 1
    assert stats.fallthrough == 0  # the same group


def test_next_server_after_a_connection_error(upstream: Callable[..., FakeDNS]) -> None:
    closed = free_port()  # nothing listens: ICMP port unreachable fails the try at once
    b = upstream("192.0.2.2")
    stats = ResolveStats()
    reply = forward([group("g", [closed, b.port], stats, try_timeout=3.0)], stats)
    assert answer_ip(reply) == "192.0.2.2"
    assert stats.upstream_requests[(label(closed), "error")] == 1
    assert (label(closed), "timeout") not in stats.upstream_requests


@pytest.mark.parametrize("how", [SERVFAIL, REFUSED])
def test_next_server_after_servfail_or_refused(upstream: Callable[..., FakeDNS], how: str) -> None:
    a, b = upstream("192.0.2.1", how), upstream("192.0.2.2")
    stats = ResolveStats()
    assert answer_ip(forward([group("g", [a.port, b.port], stats)], stats)) == "192.0.2.2"
    assert (a.count(NAME), b.count(NAME)) == (1, 1)
    assert stats.upstream_requests[(label(a.port), how.upper())] == 1
    assert stats.upstream_fails[label(a.port)] == 0  # a SERVFAIL is a reply: the server is alive


def test_next_server_after_a_malformed_reply(upstream: Callable[..., FakeDNS]) -> None:
    """A reply that matches the query (ID, QR, question) but does not scan is a failed try, not an answer."""
    b = upstream("192.0.2.2")
    stats = ResolveStats()

    class Malformed(asyncio.DatagramProtocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.t: Any = transport

        def datagram_received(self, data: bytes, addr: Any) -> None:
            qend = wire.question_end(data)
            # QR set, one question, and an answer count of 1 with no record behind it.
            self.t.sendto(data[:2] + b"\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00" + data[12:qend], addr)

    async def run() -> tuple[Reply | None, int]:
        loop = asyncio.get_running_loop()
        t, _p = await loop.create_datagram_endpoint(Malformed, local_addr=("127.0.0.1", 0))
        port = t.get_extra_info("sockname")[1]
        g = group("g", [port, b.port], stats)
        try:
            return await Chain([g], stats, 5.0).forward(question(), True, False, False), port
        finally:
            g.close()
            t.close()

    reply, port = asyncio.run(run())
    assert answer_ip(reply) == "192.0.2.2"
    assert stats.upstream_requests[(label(port), "malformed")] == 1


def test_nxdomain_is_an_answer_not_a_failure(upstream: Callable[..., FakeDNS]) -> None:
    a, b = upstream("192.0.2.1"), upstream("192.0.2.2")
    stats = ResolveStats()
    reply = forward_all([group("g", [a.port, b.port], stats)], stats, [question("nothere.example.test")])[0]
    assert rcode(reply) == dns.rcode.NXDOMAIN
    assert (a.count(), b.count()) == (1, 0)
    assert stats.upstream_requests == {(label(a.port), "NXDOMAIN"): 1}


def test_nodata_is_an_answer(upstream: Callable[..., FakeDNS]) -> None:
    a, b = upstream("192.0.2.1"), upstream("192.0.2.2")
    stats = ResolveStats()
    reply = forward_all([group("g", [a.port, b.port], stats)], stats, [question(NAME, "AAAA")])[0]
    assert rcode(reply) == dns.rcode.NOERROR
    assert reply is not None and not dns.message.from_wire(reply[0]).answer
    assert (a.count(), b.count()) == (1, 0)


# --------------------------------------------------------------------------------------------------
# Between groups: fallthrough


def test_next_group_after_every_server_of_the_first_failed(upstream: Callable[..., FakeDNS]) -> None:
    a1, a2, b = upstream("192.0.2.1", SERVFAIL), upstream("192.0.2.2", DROP), upstream("192.0.2.3")
    stats = ResolveStats()
    groups = [group("cluster", [a1.port, a2.port], stats), group("host", [b.port], stats)]
    assert answer_ip(forward(groups, stats)) == "192.0.2.3"
    assert (a1.count(), a2.count(), b.count()) == (1, 1, 1)
    assert stats.fallthrough == 1
    assert stats.healthcheck_broken == 0


def test_no_fallthrough_when_the_first_group_answers(upstream: Callable[..., FakeDNS]) -> None:
    a, b = upstream("192.0.2.1"), upstream("192.0.2.2")
    stats = ResolveStats()
    groups = [group("cluster", [a.port], stats), group("host", [b.port], stats)]
    assert answer_ip(forward(groups, stats)) == "192.0.2.1"
    assert b.count() == 0
    assert stats.fallthrough == 0


def test_an_empty_group_is_skipped_without_a_fallthrough(upstream: Callable[..., FakeDNS]) -> None:
    b = upstream("192.0.2.2")
    stats = ResolveStats()
    groups = [group("cluster", [], stats), group("host", [b.port], stats)]
    assert answer_ip(forward(groups, stats)) == "192.0.2.2"
    assert stats.fallthrough == 0


def test_fallthrough_counted_per_group_passed(upstream: Callable[..., FakeDNS]) -> None:
    a, b, c = upstream("192.0.2.1", REFUSED), upstream("192.0.2.2", SERVFAIL), upstream("192.0.2.3")
    stats = ResolveStats()
    groups = [group("one", [a.port], stats), group("two", [b.port], stats), group("three", [c.port], stats)]
    assert answer_ip(forward(groups, stats)) == "192.0.2.3"
    assert stats.fallthrough == 2


# --------------------------------------------------------------------------------------------------
# When everything fails


def test_all_fail_the_last_servfail_or_refused_is_returned(upstream: Callable[..., FakeDNS]) -> None:
    a, b, c = upstream("192.0.2.1", REFUSED), upstream("192.0.2.2", SERVFAIL), upstream("192.0.2.3", DROP)
    stats = ResolveStats()
    groups = [group("one", [a.port], stats), group("two", [b.port, c.port], stats)]
    reply = forward(groups, stats)
    assert rcode(reply) == dns.rcode.SERVFAIL  # b's, the last reply seen (c never replied)
    assert stats.healthcheck_broken == 0  # something replied
    assert (a.count(), b.count(), c.count()) == (1, 1, 1)


def test_all_refused_returns_refused(upstream: Callable[..., FakeDNS]) -> None:
    a, b = upstream("192.0.2.1", SERVFAIL), upstream("192.0.2.2", REFUSED)
    stats = ResolveStats()
    assert rcode(forward([group("g", [a.port, b.port], stats)], stats)) == dns.rcode.REFUSED


def test_none_replied_gives_none_and_counts_healthcheck_broken(upstream: Callable[..., FakeDNS]) -> None:
    a, b = upstream("192.0.2.1", DROP), upstream("192.0.2.2", DROP)
    stats = ResolveStats()
    groups = [group("one", [a.port], stats), group("two", [b.port], stats)]
    assert forward(groups, stats) is None
    assert stats.healthcheck_broken == 1
    assert stats.fallthrough == 1
    assert not stats.ready
    assert stats.upstream_requests == {(label(a.port), "timeout"): 1, (label(b.port), "timeout"): 1}


# --------------------------------------------------------------------------------------------------
# The whole-query deadline


def test_deadline_cuts_a_try_shorter_than_its_try_timeout(upstream: Callable[..., FakeDNS]) -> None:
    """The server would answer within its try timeout, but after the query's deadline: no answer."""
    a, b = upstream("192.0.2.1", delay=1.0), upstream("192.0.2.2")
    stats = ResolveStats()
    reply = forward([group("g", [a.port, b.port], stats, try_timeout=3.0)], stats, query_timeout=0.3)
    assert reply is None
    assert stats.upstream_requests == {(label(a.port), "timeout"): 1}
    assert b.count() == 0  # no time was left for the next server
    assert stats.healthcheck_broken == 1


def test_deadline_returns_the_last_servfail_seen(upstream: Callable[..., FakeDNS]) -> None:
    a, b, c = upstream("192.0.2.1", SERVFAIL), upstream("192.0.2.2", delay=1.0), upstream("192.0.2.3")
    stats = ResolveStats()
    groups = [group("one", [a.port, b.port], stats, try_timeout=3.0), group("two", [c.port], stats)]
    reply = forward(groups, stats, query_timeout=0.4)
    assert rcode(reply) == dns.rcode.SERVFAIL
    assert c.count() == 0
    assert stats.healthcheck_broken == 0


def test_no_fallthrough_counted_when_the_deadline_ends_the_query_in_the_first_group(
        upstream: Callable[..., FakeDNS]) -> None:
    a, b = upstream("192.0.2.1", delay=1.0), upstream("192.0.2.2")
    stats = ResolveStats()
    groups = [group("one", [a.port], stats, try_timeout=3.0), group("two", [b.port], stats)]
    assert forward(groups, stats, query_timeout=0.3) is None
    assert b.count() == 0
    assert stats.fallthrough == 0


def test_deadline_is_per_query(upstream: Callable[..., FakeDNS]) -> None:
    """Each forward() gets the whole budget again, however long the previous one took."""
    a, b = upstream("192.0.2.1", DROP), upstream("192.0.2.2")
    stats = ResolveStats()
    groups = [group("g", [a.port, b.port], stats, try_timeout=0.3)]
    replies = forward_all(groups, stats, [question()] * 3, query_timeout=0.6)
    assert [answer_ip(r) for r in replies] == ["192.0.2.2"] * 3


# --------------------------------------------------------------------------------------------------
# Transports and flags


def test_truncated_udp_reply_is_retried_over_tcp(upstream: Callable[..., FakeDNS]) -> None:
    a = upstream("192.0.2.1", TRUNCATE)
    stats = ResolveStats()
    reply = forward([group("g", [a.port], stats, transport="udp")], stats)
    assert answer_ip(reply) == "192.0.2.1"
    assert reply is not None and not reply[1].truncated
    assert [s.proto for s in a.seen] == ["udp", "tcp"]


def test_tcp_transport_asks_over_tcp_only(upstream: Callable[..., FakeDNS]) -> None:
    a = upstream("192.0.2.1")
    stats = ResolveStats()
    replies = forward_all([group("g", [a.port], stats, transport="tcp")], stats, [question()] * 2)
    assert [answer_ip(r) for r in replies] == ["192.0.2.1"] * 2
    assert [s.proto for s in a.seen] == ["tcp", "tcp"]


@pytest.mark.parametrize(("rd", "cd", "do"), [(True, False, False), (False, True, True), (True, True, False)])
def test_query_flags_reach_the_upstream(upstream: Callable[..., FakeDNS], rd: bool, cd: bool, do: bool) -> None:
    a = upstream("192.0.2.1")
    stats = ResolveStats()
    forward_all([group("g", [a.port], stats)], stats, [question()], rd=rd, cd=cd, do=do)
    (seen,) = a.seen
    assert bool(seen.flags & dns.flags.RD) is rd
    assert bool(seen.flags & dns.flags.CD) is cd
    assert seen.do is do
    assert seen.edns == 0


def test_question_case_is_kept_and_the_reply_still_matches(upstream: Callable[..., FakeDNS]) -> None:
    a = upstream("192.0.2.1")
    stats = ResolveStats()
    reply = forward_all([group("g", [a.port], stats)], stats, [question("WwW.ExAmPlE.TeSt")])[0]
    assert answer_ip(reply) == "192.0.2.1"


# --------------------------------------------------------------------------------------------------
# Group.order


def ports_of(servers: Any) -> list[int]:
    return [s.addr[1] for s in servers]


def test_sequential_order_is_the_configured_order() -> None:
    stats = ResolveStats()
    g = group("g", [1001, 1002, 1003], stats)
    assert [ports_of(g.order()) for _ in range(3)] == [[1001, 1002, 1003]] * 3


def test_round_robin_rotates_the_first_server() -> None:
    stats = ResolveStats()
    g = group("g", [1001, 1002, 1003], stats, policy="round_robin")
    assert [ports_of(g.order()) for _ in range(4)] == [
        [1001, 1002, 1003], [1002, 1003, 1001], [1003, 1001, 1002], [1001, 1002, 1003]]


def test_random_order_is_a_permutation_and_varies() -> None:
    stats = ResolveStats()
    ports = [1001, 1002, 1003, 1004]
    g = group("g", ports, stats, policy="random")
    orders = [ports_of(g.order()) for _ in range(60)]
    assert all(sorted(o) == ports for o in orders)
    assert len({tuple(o) for o in orders}) > 1  # 24 orders: the chance that 60 draws agree is nil
    assert ports_of(g.servers) == ports  # the group's own list is left alone


@pytest.mark.parametrize("policy", ["sequential", "round_robin", "random"])
def test_order_of_an_empty_group(policy: str) -> None:
    assert list(group("g", [], ResolveStats(), policy=policy).order()) == []


def test_round_robin_spreads_queries_over_servers(upstream: Callable[..., FakeDNS]) -> None:
    a, b = upstream("192.0.2.1"), upstream("192.0.2.2")
    stats = ResolveStats()
    replies = forward_all([group("g", [a.port, b.port], stats, policy="round_robin")], stats, [question()] * 4)
    assert [answer_ip(r) for r in replies] == ["192.0.2.1", "192.0.2.2", "192.0.2.1", "192.0.2.2"]
    assert (a.count(), b.count()) == (2, 2)


# --------------------------------------------------------------------------------------------------
# Upstream counters and health


def test_groups_register_every_server_for_the_health_series() -> None:
    stats = ResolveStats()
    group("cluster", [1001, 1002], stats)
    group("host", [1002, 1003], stats)
    # A server in two groups keeps the first group's name.
    assert stats.upstream_servers == {"127.0.0.1:1001": "cluster", "127.0.0.1:1002": "cluster",
                                      "127.0.0.1:1003": "host"}
    assert all(stats.upstream_healthy(to) for to in stats.upstream_servers)


def test_server_unhealthy_after_max_fails_tries_without_reply_and_healthy_after_one(
        upstream: Callable[..., FakeDNS]) -> None:
    a, b = upstream("192.0.2.1", DROP), upstream("192.0.2.2")
    stats = ResolveStats()
    g = group("g", [a.port, b.port], stats, try_timeout=0.2)
    to = label(a.port)
    replies = forward_all([g], stats, [question()] * MAX_FAILS)
    assert [answer_ip(r) for r in replies] == ["192.0.2.2"] * MAX_FAILS
    assert stats.upstream_fails[to] == MAX_FAILS
    assert not stats.upstream_healthy(to)
    assert stats.upstream_healthy(label(b.port))

    a.behaviour.clear()  # it answers again; one reply makes it healthy
    assert answer_ip(forward([g], stats)) == "192.0.2.1"
    assert stats.upstream_fails[to] == 0
    assert stats.upstream_healthy(to)
    assert stats.upstream_requests[(to, "timeout")] == MAX_FAILS
    assert stats.upstream_requests[(to, "NOERROR")] == 1


def test_one_failure_is_not_yet_unhealthy(upstream: Callable[..., FakeDNS]) -> None:
    a, b = upstream("192.0.2.1", DROP), upstream("192.0.2.2")
    stats = ResolveStats()
    forward([group("g", [a.port, b.port], stats, try_timeout=0.2)], stats)
    assert stats.upstream_fails[label(a.port)] == 1
    assert MAX_FAILS > 1 and stats.upstream_healthy(label(a.port))


def test_answered_tries_are_timed_failed_ones_are_not(upstream: Callable[..., FakeDNS]) -> None:
    a, b = upstream("192.0.2.1", DROP), upstream("192.0.2.2", SERVFAIL)
    stats = ResolveStats()
    forward([group("g", [a.port, b.port], stats, try_timeout=0.2)], stats)
    assert set(stats.upstream_duration) == {(label(b.port), "SERVFAIL")}
    assert stats.upstream_duration[(label(b.port), "SERVFAIL")].n == 1
