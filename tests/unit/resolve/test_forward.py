"""nodelocal.resolve.forward: failover between servers and groups, the query deadline, policies and counters."""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from nodelocal.config import UpstreamGroup
from nodelocal.dns import wire
from nodelocal.resolve import forward as forwarding
from nodelocal.resolve.forward import Chain, Group, Reply
from nodelocal.resolve.metrics import MAX_FAILS, ResolveStats
from tests.fakedns import DROP, REFUSED, SERVFAIL, TRUNCATE, FakeDNS, free_port

T = TypeVar("T")
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


# --------------------------------------------------------------------------------------------------
# Health that steers: down after max_fails silent tries, skipped while another is up, probed back


SLOW_PROBE = 60.0  # health_check of tests in which no probe must run before they are done


def run_chain(groups: list[Group], body: Callable[[Chain], Coroutine[Any, Any, T]], stats: ResolveStats,
              query_timeout: float = 5.0) -> T:
    """Run `body` with a chain over `groups` in one event loop (probes live as long as it); close them after."""

    async def go() -> T:
        chain = Chain(groups, stats, query_timeout)
        try:
            return await body(chain)
        finally:
            for g in groups:
                g.close()

    return asyncio.run(go())


async def wait_until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def test_down_after_max_fails_silent_tries_then_skipped_while_another_is_up(
        upstream: Callable[..., FakeDNS], caplog: pytest.LogCaptureFixture) -> None:
    a, b = upstream("192.0.2.1", DROP), upstream("192.0.2.2")
    stats = ResolveStats()
    g = group("cluster", [a.port, b.port], stats, health_check=SLOW_PROBE)
    server_a = g.servers[0]
    caplog.set_level(logging.INFO, logger="nodelocal.forward")

    async def body(chain: Chain) -> list[str]:
        ips = [answer_ip(await chain.forward(question(), True, False, False)) for _ in range(2)]
        assert server_a.down and server_a.probe is not None  # two silent tries: down, and probed
        ips += [answer_ip(await chain.forward(question(), True, False, False)) for _ in range(3)]
        return ips

    assert run_chain([g], body, stats) == ["192.0.2.2"] * 5
    assert a.count(NAME) == MAX_FAILS  # the two tries that marked it down; never asked again
    assert b.count(NAME) == 5
    assert stats.upstream_requests[(label(a.port), "timeout")] == MAX_FAILS
    assert not stats.upstream_healthy(label(a.port)) and stats.upstream_healthy(label(b.port))
    assert stats.health_changes == {("cluster", label(a.port), "down"): 1}
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.getMessage() for r in warnings] == [
        f"upstream {label(a.port)} (group cluster) is down: 2 tries without a reply; skipped while another "
        "server answers, probed every 60s until it answers"]


def test_a_flapping_server_logs_a_few_lines_a_minute_and_counts_every_change(
        caplog: pytest.LogCaptureFixture) -> None:
    stats = ResolveStats()
    g = group("cluster", [9], stats, max_fails=1, health_check=SLOW_PROBE)
    server = g.servers[0]
    caplog.set_level(logging.INFO, logger="nodelocal.forward")

    async def flap(_chain: Chain) -> None:
        for _ in range(50):
            server.failed()  # one silent try: down (max_fails 1)
            server.replied()  # a reply: up again

    run_chain([g], flap, stats)
    assert stats.health_changes == {("cluster", label(9), "down"): 50, ("cluster", label(9), "up"): 50}
    downs = [r for r in caplog.records if "is down" in r.getMessage()]
    ups = [r for r in caplog.records if "is up again" in r.getMessage()]
    assert len(downs) == len(ups) == forwarding.health_log.burst  # the rest counted, told with the next line
    assert all(r.levelno == logging.WARNING for r in downs) and all(r.levelno == logging.INFO for r in ups)


def test_one_silent_try_does_not_mark_down_and_a_reply_resets_the_count(upstream: Callable[..., FakeDNS]) -> None:
    a, b = upstream("192.0.2.1", DROP), upstream("192.0.2.2")
    stats = ResolveStats()
    g = group("g", [a.port, b.port], stats, health_check=SLOW_PROBE)

    async def body(chain: Chain) -> None:
        await chain.forward(question(), True, False, False)
        assert g.servers[0].fails == 1 and not g.servers[0].down
        a.behaviour.clear()
        assert answer_ip(await chain.forward(question(), True, False, False)) == "192.0.2.1"
        assert g.servers[0].fails == 0
        a.behaviour[NAME + "."] = DROP
        await chain.forward(question(), True, False, False)
        assert not g.servers[0].down  # 1 + 1 silent tries, but not in a row

    run_chain([g], body, stats)
    assert a.count(NAME) == 3


def test_a_servfail_is_a_sign_of_life(upstream: Callable[..., FakeDNS]) -> None:
    a, b = upstream("192.0.2.1", SERVFAIL), upstream("192.0.2.2")
    stats = ResolveStats()
    g = group("g", [a.port, b.port], stats, health_check=SLOW_PROBE)
    replies = forward_all([g], stats, [question()] * 4)
    assert [answer_ip(r) for r in replies] == ["192.0.2.2"] * 4
    assert a.count(NAME) == 4  # never skipped: it replies, if only SERVFAIL
    assert stats.health_changes == {}


def test_max_fails_zero_never_marks_down(upstream: Callable[..., FakeDNS]) -> None:
    a, b = upstream("192.0.2.1", DROP), upstream("192.0.2.2")
    stats = ResolveStats()
    g = group("g", [a.port, b.port], stats, max_fails=0)
    replies = forward_all([g], stats, [question()] * 3)
    assert [answer_ip(r) for r in replies] == ["192.0.2.2"] * 3
    assert a.count(NAME) == 3
    assert stats.upstream_healthy(label(a.port)) and stats.health_changes == {}


def test_when_all_are_down_all_are_still_tried_in_policy_order(upstream: Callable[..., FakeDNS]) -> None:
    a, b = upstream("192.0.2.1", DROP), upstream("192.0.2.2", DROP)
    stats = ResolveStats()
    g = group("g", [a.port, b.port], stats, max_fails=1, health_check=SLOW_PROBE)

    async def body(chain: Chain) -> None:
        assert await chain.forward(question(), True, False, False) is None
        assert all(s.down for s in g.servers)
        b.behaviour.clear()  # b answers again, but is still marked down
        # Both down: trying beats failing fast, a first as the policy says, then b, which answers.
        assert answer_ip(await chain.forward(question(), True, False, False)) == "192.0.2.2"
        assert (a.count(NAME), b.count(NAME)) == (2, 2)
        assert not g.servers[1].down  # its reply brought it back
        # Now b is up: a, still down, is skipped.
        assert answer_ip(await chain.forward(question(), True, False, False)) == "192.0.2.2"
        assert (a.count(NAME), b.count(NAME)) == (2, 3)

    run_chain([g], body, stats)
    assert stats.health_changes == {("g", label(a.port), "down"): 1, ("g", label(b.port), "down"): 1,
                                    ("g", label(b.port), "up"): 1}
    assert not stats.upstream_healthy(label(a.port)) and stats.upstream_healthy(label(b.port))


@pytest.mark.parametrize("policy", ["sequential", "round_robin", "random"])
def test_order_leaves_out_down_servers_while_one_is_up(policy: str) -> None:
    g = group("g", [1001, 1002, 1003], ResolveStats(), policy=policy)
    g.servers[1].down = True
    for _ in range(6):
        assert sorted(ports_of(g.order())) == [1001, 1003]
    for s in g.servers:
        s.down = True
    for _ in range(6):
        assert sorted(ports_of(g.order())) == [1001, 1002, 1003]  # all down: all of them


def test_order_keeps_the_round_robin_rotation_around_a_down_server() -> None:
    g = group("g", [1001, 1002, 1003], ResolveStats(), policy="round_robin")
    g.servers[0].down = True
    assert [ports_of(g.order()) for _ in range(3)] == [[1002, 1003], [1002, 1003], [1003, 1002]]
    g.servers[0].down = False
    assert ports_of(g.order()) == [1001, 1002, 1003]


def test_background_probe_brings_a_server_back_and_logs_it(
        upstream: Callable[..., FakeDNS], caplog: pytest.LogCaptureFixture) -> None:
    a, b = upstream("192.0.2.1"), upstream("192.0.2.2")
    a.down = True  # silent to everything, probes included
    stats = ResolveStats()
    g = group("cluster", [a.port, b.port], stats, health_check=0.05)
    server_a = g.servers[0]
    caplog.set_level(logging.INFO, logger="nodelocal.forward")

    async def body(chain: Chain) -> None:
        for _ in range(2):
            assert answer_ip(await chain.forward(question(), True, False, False)) == "192.0.2.2"
        assert server_a.down
        probe = server_a.probe
        assert probe is not None
        await asyncio.sleep(0.5)  # probes go out meanwhile, unanswered: still down
        assert server_a.down and not stats.upstream_healthy(label(a.port))
        a.down = False
        await wait_until(lambda: not server_a.down)  # a probe got a reply
        await wait_until(probe.done)  # and the probe loop ended
        assert server_a.probe is None
        assert answer_ip(await chain.forward(question(), True, False, False)) == "192.0.2.1"

    run_chain([g], body, stats)
    assert a.count(".", "NS") >= 1  # what brought it back: `. IN NS`, not a client query
    assert a.count(NAME) == 1  # while it was silent it saw nothing (a silent fake records nothing)
    assert stats.upstream_healthy(label(a.port))
    assert stats.health_changes == {("cluster", label(a.port), "down"): 1, ("cluster", label(a.port), "up"): 1}
    assert stats.upstream_requests[(label(a.port), "timeout")] == 2  # the probes are not counted as tries
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert len(infos) == 1
    assert infos[0].startswith(f"upstream {label(a.port)} (group cluster) is up again: it answered a health probe")


def test_close_stops_the_probe(upstream: Callable[..., FakeDNS]) -> None:
    a, b = upstream("192.0.2.1", DROP), upstream("192.0.2.2")
    stats = ResolveStats()
    g = group("g", [a.port, b.port], stats, max_fails=1, health_check=0.05)

    async def body(chain: Chain) -> None:
        await chain.forward(question(), True, False, False)
        probe = g.servers[0].probe
        assert probe is not None and not probe.done()
        g.close()
        await wait_until(probe.done)
        assert probe.cancelled()
        assert g.servers[0].probe is None

    run_chain([g], body, stats)


def test_degraded_while_a_first_group_server_is_down_or_the_last_forward_failed(
        upstream: Callable[..., FakeDNS]) -> None:
    a, b, c = upstream("192.0.2.1", DROP), upstream("192.0.2.2"), upstream("192.0.2.3", SERVFAIL)
    stats = ResolveStats()
    first = group("cluster", [a.port, b.port], stats, health_check=SLOW_PROBE)
    broken = group("broken", [c.port], stats)

    async def body(chain: Chain) -> None:
        other = Chain([group("empty", [], stats), broken], stats, 5.0)
        assert not chain.degraded and not other.degraded
        await chain.forward(question(), True, False, False)  # a silent once, b answers
        assert not chain.degraded
        await chain.forward(question(), True, False, False)  # a down: degraded though b answers
        assert chain.degraded
        assert rcode(await other.forward(question(), True, False, False)) == dns.rcode.SERVFAIL
        assert other.degraded  # the last forward got no acceptable reply (a SERVFAIL from every server)
        c.behaviour.clear()
        assert answer_ip(await other.forward(question(), True, False, False)) == "192.0.2.3"
        assert not other.degraded

    run_chain([first, broken], body, stats)


def test_degraded_after_a_forward_no_server_replied_to(upstream: Callable[..., FakeDNS]) -> None:
    a = upstream("192.0.2.1", DROP)
    stats = ResolveStats()
    g = group("g", [a.port], stats, max_fails=0)

    async def body(chain: Chain) -> None:
        assert await chain.forward(question(), True, False, False) is None
        assert chain.degraded and not g.servers[0].down
        a.behaviour.clear()
        await chain.forward(question(), True, False, False)
        assert not chain.degraded

    run_chain([g], body, stats)


# --------------------------------------------------------------------------------------------------
# Losses that cost less than a try: a TCP connection reset under its query, a lost UDP datagram


def a_reply(query: bytes, ip: str) -> bytes:
    m = dns.message.from_wire(query)
    r = dns.message.make_response(m)
    r.answer.append(dns.rrset.from_text(m.question[0].name, 60, "IN", "A", ip))
    return r.to_wire()


class ScriptedTCP:
    """A TCP upstream whose n-th connection (from 1) resets, closes or answers with 192.0.2.<n>, as `how(n)` says."""

    def __init__(self, how: Callable[[int], str]) -> None:
        self.how = how
        self.conns = 0
        self.queries: list[int] = []  # the connection number each query came on

    async def start(self) -> int:
        up = self

        class Conn(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.t: Any = transport
                self.buf = bytearray()
                up.conns += 1
                self.n = up.conns

            def data_received(self, data: bytes) -> None:
                self.buf += data
                for msg in wire.pop_frames(self.buf):
                    up.queries.append(self.n)
                    act = up.how(self.n)
                    if act == "reset":  # SO_LINGER 0: the close sends a RST, as a deleted pod's node does
                        self.t.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                                                   struct.pack("ii", 1, 0))
                        self.t.abort()
                    elif act == "close":
                        self.t.close()
                    else:
                        self.t.write(wire.frame(a_reply(msg, f"192.0.2.{self.n}")))

        self.server = await asyncio.get_running_loop().create_server(Conn, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    def close(self) -> None:
        self.server.close()


@pytest.mark.parametrize("loss", ["reset", "close"])
def test_tcp_connection_lost_under_a_query_is_resent_at_once_on_a_new_connection(
        upstream: Callable[..., FakeDNS], loss: str) -> None:
    b = upstream("192.0.2.99")
    stats = ResolveStats()
    try_timeout = 3.0

    async def go() -> tuple[Reply | None, float, ScriptedTCP, int]:
        x = ScriptedTCP(lambda n: loss if n == 1 else "answer")
        port = await x.start()
        g = group("cluster", [port, b.port], stats, transport="tcp", try_timeout=try_timeout)
        loop = asyncio.get_running_loop()
        try:
            t0 = loop.time()
            reply = await Chain([g], stats, 5.0).forward(question(), True, False, False)
            return reply, loop.time() - t0, x, port
        finally:
            g.close()
            x.close()

    reply, took, x, port = asyncio.run(go())
    assert answer_ip(reply) == "192.0.2.2"  # the same server, on its second connection
    assert x.queries == [1, 2] and x.conns == 2
    assert took < try_timeout  # not a wait for the try timeout on the lost connection
    assert b.count() == 0  # the next server was not needed
    assert stats.upstream_requests == {(label(port), "NOERROR"): 1}  # one try
    assert stats.retransmits == {(label(port), "tcp"): 1}


def test_tcp_every_connection_reset_moves_on_to_the_next_server_at_once(upstream: Callable[..., FakeDNS]) -> None:
    b = upstream("192.0.2.99")
    stats = ResolveStats()
    try_timeout = 3.0

    async def go() -> tuple[Reply | None, float, ScriptedTCP, int]:
        x = ScriptedTCP(lambda n: "reset")
        port = await x.start()
        g = group("cluster", [port, b.port], stats, transport="tcp", try_timeout=try_timeout)
        loop = asyncio.get_running_loop()
        try:
            t0 = loop.time()
            reply = await Chain([g], stats, 5.0).forward(question(), True, False, False)
            return reply, loop.time() - t0, x, port
        finally:
            g.close()
            x.close()

    reply, took, x, port = asyncio.run(go())
    assert answer_ip(reply) == "192.0.2.99"
    assert x.conns == 2  # the query, and one resend on a new connection; then the next server
    assert took < try_timeout
    assert stats.upstream_requests[(label(port), "error")] == 1


class DropFirst(asyncio.DatagramProtocol):
    """A UDP upstream that loses the first datagram it gets and answers every later one."""

    def __init__(self) -> None:
        self.seen: list[tuple[Any, bytes]] = []  # (source, ID)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t: Any = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.seen.append((addr, data[:2]))
        if len(self.seen) > 1:
            self.t.sendto(a_reply(data, "192.0.2.1"), addr)


def test_udp_lost_datagram_is_retransmitted_within_the_try() -> None:
    stats = ResolveStats()
    try_timeout = 2.0

    async def go() -> tuple[Reply | None, float, DropFirst, int]:
        loop = asyncio.get_running_loop()
        t, p = await loop.create_datagram_endpoint(DropFirst, local_addr=("127.0.0.1", 0))
        port = t.get_extra_info("sockname")[1]
        g = group("host", [port], stats, transport="udp", try_timeout=try_timeout, udp_retransmit=0.2)
        try:
            t0 = loop.time()
            reply = await Chain([g], stats, 5.0).forward(question(), True, False, False)
            return reply, loop.time() - t0, p, port
        finally:
            g.close()
            t.close()

    reply, took, p, port = asyncio.run(go())
    assert answer_ip(reply) == "192.0.2.1"
    assert len(p.seen) == 2 and p.seen[0] == p.seen[1]  # the same datagram again: same source port, same ID
    assert took < try_timeout  # answered within the one try, after the retransmit
    assert stats.upstream_requests == {(label(port), "NOERROR"): 1}
    assert stats.retransmits == {(label(port), "udp"): 1}


def test_udp_retransmit_off_waits_for_the_try() -> None:
    stats = ResolveStats()

    async def go() -> tuple[Reply | None, DropFirst]:
        loop = asyncio.get_running_loop()
        t, p = await loop.create_datagram_endpoint(DropFirst, local_addr=("127.0.0.1", 0))
        g = group("host", [t.get_extra_info("sockname")[1]], stats, transport="udp", try_timeout=0.5,
                  udp_retransmit=0)
        try:
            return await Chain([g], stats, 5.0).forward(question(), True, False, False), p
        finally:
            g.close()
            t.close()

    reply, p = asyncio.run(go())
    assert reply is None and len(p.seen) == 1
    assert stats.retransmits == {}


def test_a_later_try_cut_short_by_the_deadline_is_not_held_against_its_server(
        upstream: Callable[..., FakeDNS]) -> None:
    a, b = upstream("192.0.2.1", DROP), upstream("192.0.2.2", DROP)
    stats = ResolveStats()
    g = group("g", [a.port, b.port], stats, try_timeout=0.3, max_fails=1, health_check=SLOW_PROBE)

    async def body(chain: Chain) -> None:
        assert await chain.forward(question(), True, False, False) is None
        assert (a.count(NAME), b.count(NAME)) == (1, 1)
        assert g.servers[0].down  # a whole try of silence
        assert not g.servers[1].down and g.servers[1].fails == 0  # 0.15 s of silence: not a verdict

    run_chain([g], body, stats, query_timeout=0.45)
    assert stats.upstream_requests == {(label(a.port), "timeout"): 1, (label(b.port), "timeout"): 1}
