"""nodelocal.agent.health: the self-query on each listener, and what readiness asks of the upstreams."""

from __future__ import annotations

import asyncio
import socket
import struct

from nodelocal.agent.health import SelfCheck, ask_tcp, ask_udp, self_query, upstream_problem
from nodelocal.config import UpstreamGroup
from nodelocal.resolve.forward import Group
from nodelocal.resolve.metrics import ResolveStats


class Answering(asyncio.DatagramProtocol):
    """A UDP listener that answers every query NOTIMP (as the resolver answers a STATUS query)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.DatagramTransport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.transport.sendto(data[:2] + bytes([0x80 | data[2], 4]) + data[4:], addr)


class Wedged(asyncio.DatagramProtocol):
    """A listener whose datagrams are read and never answered."""

    seen: list[tuple[str, int]] = []

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.seen.append(addr)


def test_the_self_query_is_a_status_query_with_no_question() -> None:
    q = self_query()
    assert len(q) == 12 and (q[2] >> 3) & 0xF == 2 and not q[2] & 0x80 and q[4:] == bytes(8)


def test_an_answering_udp_listener_passes_and_a_wedged_one_fails() -> None:
    async def main() -> tuple[str | None, str | None, bool]:
        loop = asyncio.get_running_loop()
        ok, _ = await loop.create_datagram_endpoint(Answering, local_addr=("127.0.0.1", 0))
        bad, _ = await loop.create_datagram_endpoint(Wedged, local_addr=("127.0.0.1", 0))
        exempt: set[tuple[str, int]] = set()
        Wedged.seen = []
        try:
            good = await ask_udp(ok.get_extra_info("sockname"), 1.0)
            wedged = await ask_udp(bad.get_extra_info("sockname"), 0.2, exempt)
            # While it waited, the query's source address was exempt from shedding; afterwards not.
            return good, wedged, Wedged.seen[0] not in exempt and len(Wedged.seen) == 1
        finally:
            ok.close()
            bad.close()

    good, wedged, cleaned = asyncio.run(main())
    assert good is None
    assert wedged is not None and "no answer to a self-query" in wedged and "udp 127.0.0.1:" in wedged
    assert cleaned


def test_a_udp_listener_that_is_gone_fails() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        addr = s.getsockname()
    problem = asyncio.run(ask_udp(addr, 0.5))
    assert problem is not None and problem.startswith(f"udp 127.0.0.1:{addr[1]}")


def test_tcp_self_query_needs_an_answer_on_an_accepted_connection() -> None:
    async def main() -> tuple[str | None, str | None, str | None]:
        async def answer(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            n = struct.unpack("!H", await r.readexactly(2))[0]
            q = await r.readexactly(n)
            reply = q[:2] + bytes([0x80 | q[2], 4]) + q[4:]
            w.write(struct.pack("!H", len(reply)) + reply)
            await w.drain()
            w.close()

        async def silent(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            await asyncio.sleep(5)

        good = await asyncio.start_server(answer, "127.0.0.1", 0)
        mute = await asyncio.start_server(silent, "127.0.0.1", 0)
        with socket.socket() as closed:
            closed.bind(("127.0.0.1", 0))
            gone = closed.getsockname()
        try:
            return (await ask_tcp(good.sockets[0].getsockname(), 1.0),
                    await ask_tcp(mute.sockets[0].getsockname(), 0.2),
                    await ask_tcp(gone, 1.0))
        finally:
            good.close()
            mute.close()

    good, mute, gone = asyncio.run(main())
    assert good is None
    assert mute is not None and "no answer" in mute
    assert gone is not None and gone.startswith("tcp 127.0.0.1:")


def test_selfcheck_reports_the_first_failing_listener_and_none_when_nothing_is_bound() -> None:
    async def main() -> tuple[str | None, str | None, str | None]:
        loop = asyncio.get_running_loop()
        ok, _ = await loop.create_datagram_endpoint(Answering, local_addr=("127.0.0.1", 0))
        bad, _ = await loop.create_datagram_endpoint(Wedged, local_addr=("127.0.0.1", 0))
        bound = [("http", ("127.0.0.1", 1)), ("udp", ok.get_extra_info("sockname"))]
        try:
            check = SelfCheck(lambda: list(bound), timeout=0.2)
            first = await check.problem()
            bound.append(("udp", bad.get_extra_info("sockname")))
            clock = [0.0]
            check2 = SelfCheck(lambda: list(bound), timeout=0.2, now=lambda: clock[0])
            second = await check2.problem()
            empty = await SelfCheck(lambda: [("http", ("127.0.0.1", 1))]).problem()
            return first, second, empty
        finally:
            ok.close()
            bad.close()

    first, second, empty = asyncio.run(main())
    assert first is None
    assert second is not None and "no answer" in second
    assert empty == "no DNS listener is bound"


def test_selfcheck_reuses_a_fresh_result_and_checks_again_once_it_is_old() -> None:
    async def main() -> list[str | None]:
        loop = asyncio.get_running_loop()
        ok, _ = await loop.create_datagram_endpoint(Answering, local_addr=("127.0.0.1", 0))
        addr = ok.get_extra_info("sockname")
        clock = [100.0]
        check = SelfCheck(lambda: [("udp", addr)], timeout=0.3, now=lambda: clock[0])
        out = [await check.problem()]
        ok.close()  # gone: a fresh result still says fine, an old one is checked again
        await asyncio.sleep(0.05)
        clock[0] += 0.5
        out.append(await check.problem())
        clock[0] += 1.0
        out.append(await check.problem())
        return out

    fresh, reused, again = asyncio.run(main())
    assert fresh is None and reused is None
    assert again is not None


def groups(**servers: tuple[str, ...]) -> dict[str, Group]:
    stats = ResolveStats()
    return {name: Group(name, UpstreamGroup(servers=s), stats) for name, s in servers.items()}


def test_ready_needs_the_cluster_group_reachable_or_cached_answers() -> None:
    g = groups(cluster=("10.0.0.1", "10.0.0.2"), host=("10.1.0.1",))
    stats = ResolveStats()
    assert "no upstream has answered yet" in (upstream_problem(g, stats, 0) or "")
    assert upstream_problem(g, stats, 5) is None  # stale answers available
    stats.ready = True
    assert upstream_problem(g, stats, 0) is None
    stats.upstream_down |= {"10.0.0.1:53"}
    assert upstream_problem(g, stats, 0) is None  # one server of the group is still up
    stats.upstream_down |= {"10.0.0.2:53"}
    assert "every server of group cluster is down" in (upstream_problem(g, stats, 0) or "")
    assert upstream_problem(g, stats, 1) is None


def test_ready_looks_at_the_first_group_with_servers_when_cluster_has_none() -> None:
    g = groups(cluster=(), host=("10.1.0.1",))
    stats = ResolveStats()
    stats.ready = True
    assert upstream_problem(g, stats, 0) is None
    stats.upstream_down.add("10.1.0.1:53")
    assert "group host" in (upstream_problem(g, stats, 0) or "")
    assert upstream_problem(groups(cluster=(), host=()), stats, 0) == "no upstream server is configured"
