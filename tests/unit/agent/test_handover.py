"""nodelocal.agent.handover: the conversation on real Unix sockets and descriptors, and each way it can fail.

The predecessor is handover.Server with a Giving made of real bound sockets; the successor is
handover.inherit(). Peers that misbehave (silent, dying mid-way, speaking nonsense) are raw Unix sockets.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nodelocal import HandoverError
from nodelocal.agent import handover
from nodelocal.agent.handover import (
    BYE,
    CACHE,
    DECLINE,
    END,
    HELLO,
    OFFER,
    READY,
    TAKE,
    Giving,
    HandoverConfig,
    Listener,
    decode_entries,
    encode_entries,
)
from nodelocal.cache.store import SUCCESS, Entry
from tests.unit.cache.test_store import cached, make_answer

T = 0.5  # handover.timeout in these tests: every step of a silent peer gives up after this


def entry(name: str, ttl: int = 300, stored: float = 100.0) -> Entry:
    q, a = make_answer(name, n=2, ttls=(ttl, 10))
    return cached(q, a, now=stored)


class Predecessor:
    """A Giving over real sockets: a UDP and a TCP listener on loopback and a few cache entries."""

    def __init__(self) -> None:
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.tcp.bind(("127.0.0.1", 0))
        self.tcp.listen(8)
        self.cache = [("cluster.local", entry("web.default.svc.cluster.local")),
                      ("cluster.local", entry("db.default.svc.cluster.local", ttl=60))]
        self.events: list[str] = []
        self.taken: list[Listener] = []

    @property
    def listeners(self) -> list[Listener]:
        u, t = self.udp.getsockname(), self.tcp.getsockname()
        return [("udp", (u[0], u[1])), ("tcp", (t[0], t[1]))]

    def giving(self) -> Giving:
        return Giving(offer=lambda: list(zip(self.listeners, [self.udp.fileno(), self.tcp.fileno()], strict=True)),
                      entries=lambda: self.cache, zones=lambda: {"cluster.local": "same"},
                      begin=lambda pid: self.events.append(f"begin {pid == os.getpid()}"),
                      cancel=lambda why: self.events.append("cancel"),
                      finish=self._finish, leave=lambda: self.events.append("leave"))

    def _finish(self, taken: list[Listener]) -> None:
        self.taken = taken
        self.events.append("finish")

    def close(self) -> None:
        self.udp.close()
        self.tcp.close()


@pytest.fixture
def pred() -> Iterator[Predecessor]:
    p = Predecessor()
    yield p
    p.close()


def cfg(tmp_path: Path) -> HandoverConfig:
    return HandoverConfig(socket=str(tmp_path / "run" / "handover.sock"), timeout=T)


async def until(cond: Any, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def test_a_successor_takes_the_sockets_and_cache_then_confirms(tmp_path: Path, pred: Predecessor) -> None:
    async def main() -> None:
        server = handover.Server(cfg(tmp_path), pred.giving(), now=lambda: 130.0)
        assert await server.start()
        assert (tmp_path / "run").stat().st_mode & 0o777 == 0o700
        got = await handover.inherit(cfg(tmp_path), [*pred.listeners, ("http", ("127.0.0.1", 1))], now=lambda: 50.0)
        assert got.predecessor and got.pid == os.getpid() and got.channel is not None
        assert set(got.sockets) == set(pred.listeners)
        assert pred.events == ["begin True"]  # not ready from TAKE on, still serving
        # The very same kernel sockets: a datagram sent to the address is read from the successor's copy.
        u = got.sockets[pred.listeners[0]]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
            c.sendto(b"ping", pred.listeners[0][1])
            u.settimeout(2)
            assert u.recv(10) == b"ping"
        # The cache: entries 30 s old on the sender's clock are 30 s old on ours, re-based on `base`.
        assert [r.zone for r in got.records] == ["cluster.local", "cluster.local"]
        e = got.records[0].entry
        assert e.stored == 50.0 - 30.0 and e.ttl == pred.cache[0][1].ttl and e.qlen == pred.cache[0][1].qlen
        assert e.key == pred.cache[0][1].key and e.template == pred.cache[0][1].template
        assert got.zones == {"cluster.local": "same"}
        assert await got.confirm()
        await until(lambda: "leave" in pred.events)
        assert pred.events == ["begin True", "finish", "leave"] and pred.taken == pred.listeners
        assert server.done
        server.close()
        got.close_unused()
        for s in got.sockets.values():
            s.close()

    asyncio.run(main())


def test_no_socket_file_means_no_predecessor(tmp_path: Path) -> None:
    got = asyncio.run(handover.inherit(cfg(tmp_path), [("udp", ("127.0.0.1", 53))]))
    assert not got.predecessor and not got.sockets and got.channel is None


def test_an_empty_path_turns_it_off(tmp_path: Path) -> None:
    got = asyncio.run(handover.inherit(HandoverConfig(socket=""), [("udp", ("127.0.0.1", 53))]))
    assert not got.predecessor


def test_a_stale_socket_file_is_a_predecessor_gone(tmp_path: Path) -> None:
    c = cfg(tmp_path)
    Path(c.socket).parent.mkdir()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(c.socket)
    s.close()  # the file stays, nobody listens: what kill -9 leaves behind
    got = asyncio.run(handover.inherit(c, [("udp", ("127.0.0.1", 53))]))
    assert got.predecessor and not got.sockets  # bind ourselves, retrying while the address is in use


class RawPeer:
    """A predecessor played by hand: accepts one connection and runs `script(conn)` in a thread."""

    def __init__(self, path: str, script: Any) -> None:
        Path(path).parent.mkdir(exist_ok=True)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(1)
        self.error: BaseException | None = None

        def run() -> None:
            conn, _ = self.sock.accept()
            try:
                script(conn)
            except BaseException as e:  # reported by the test
                self.error = e
            finally:
                conn.close()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.thread.join(5)
        self.sock.close()


def frame(kind: int, doc: Any) -> bytes:
    payload = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    return struct.pack("!BI", kind, len(payload)) + payload


def exact(conn: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        got = conn.recv(n - len(out))
        if not got:
            raise ConnectionError("closed")
        out += got
    return out


def read_frame(conn: socket.socket) -> tuple[int, bytes]:
    kind, n = struct.unpack("!BI", exact(conn, 5))
    return kind, exact(conn, n)


def test_a_silent_predecessor_times_out_and_nothing_is_taken(tmp_path: Path) -> None:
    c = cfg(tmp_path)
    gone = threading.Event()
    peer = RawPeer(c.socket, lambda conn: gone.wait(5))
    try:
        got = asyncio.run(handover.inherit(c, [("udp", ("127.0.0.1", 53))]))
        assert got.predecessor and not got.sockets and got.channel is None
    finally:
        gone.set()
        peer.close()


def test_a_decline_is_respected(tmp_path: Path) -> None:
    c = cfg(tmp_path)

    def script(conn: socket.socket) -> None:
        assert read_frame(conn)[0] == HELLO
        conn.sendall(frame(DECLINE, {"reason": "a handover is under way"}))

    peer = RawPeer(c.socket, script)
    try:
        got = asyncio.run(handover.inherit(c, [("udp", ("127.0.0.1", 53))]))
        assert got.predecessor and not got.sockets
    finally:
        peer.close()
    assert peer.error is None


def test_a_predecessor_that_dies_mid_cache_leaves_its_sockets_and_whole_records(tmp_path: Path,
                                                                                pred: Predecessor) -> None:
    c = cfg(tmp_path)
    batch = next(encode_entries(pred.cache, 10.0))

    def script(conn: socket.socket) -> None:
        read_frame(conn)
        offer = {"proto": 1, "pid": 1, "version": "0.0.9", "cache_format": 1, "netns": handover.netns(),
                 "sockets": [[k, a[0], a[1]] for k, a in pred.listeners], "zones": {}, "future": "ignored"}
        data = frame(OFFER, offer)
        socket.send_fds(conn, [data], [pred.udp.fileno(), pred.tcp.fileno()])
        kind, take = read_frame(conn)
        assert kind == TAKE and json.loads(take) == {"take": [0, 1], "cache": True}
        conn.sendall(frame(CACHE, batch))
        conn.sendall(frame(CACHE, batch)[:40])  # killed while sending the second batch

    peer = RawPeer(c.socket, script)
    try:
        got = asyncio.run(handover.inherit(c, pred.listeners))
    finally:
        peer.close()
    assert peer.error is None
    assert set(got.sockets) == set(pred.listeners) and len(got.records) == 2 and got.channel is None
    assert got.version == "0.0.9"
    for s in got.sockets.values():
        s.close()


def test_descriptors_that_are_not_what_the_offer_says_are_refused(tmp_path: Path, pred: Predecessor) -> None:
    c = cfg(tmp_path)
    took: list[Any] = []

    def script(conn: socket.socket) -> None:
        read_frame(conn)
        # Both say "udp" at the UDP socket's address, but the second descriptor is the TCP socket.
        u = pred.listeners[0]
        offer = {"proto": 1, "pid": 1, "cache_format": 1, "netns": handover.netns(),
                 "sockets": [[u[0], *u[1]], ["tcp", *u[1]]]}
        socket.send_fds(conn, [frame(OFFER, offer)], [pred.udp.fileno(), pred.tcp.fileno()])
        took.append(json.loads(read_frame(conn)[1]))

    peer = RawPeer(c.socket, script)
    try:
        got = asyncio.run(handover.inherit(c, [pred.listeners[0], ("tcp", pred.listeners[0][1])], cache=False))
    finally:
        peer.close()
    assert list(got.sockets) == [pred.listeners[0]] and took == [{"take": [0], "cache": False}]
    got.sockets[pred.listeners[0]].close()
    assert got.channel is not None
    got.channel.close()


def test_an_offer_with_nothing_in_common_is_declined_and_the_predecessor_keeps_serving(tmp_path: Path,
                                                                                      pred: Predecessor) -> None:
    async def main() -> None:
        server = handover.Server(cfg(tmp_path), pred.giving())
        assert await server.start()
        got = await handover.inherit(cfg(tmp_path), [("udp", ("127.0.0.1", 1)), ("tcp", ("127.0.0.1", 1))])
        assert got.predecessor and not got.sockets
        await until(lambda: not server.busy)
        assert pred.events == [] and not server.done  # never began: still ready, still serving
        server.close()

    asyncio.run(main())


def test_a_successor_that_dies_before_ready_leaves_the_predecessor_serving(tmp_path: Path,
                                                                           pred: Predecessor) -> None:
    async def main() -> None:
        c = cfg(tmp_path)
        server = handover.Server(c, pred.giving())
        assert await server.start()
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.connect(c.socket)
        conn.sendall(frame(HELLO, {"proto": 1, "pid": 4242, "netns": handover.netns()}))
        await asyncio.to_thread(read_frame, conn)  # OFFER
        conn.sendall(frame(TAKE, {"take": [0, 1], "cache": False}))
        await until(lambda: pred.events == ["begin False"])
        conn.close()  # killed before READY
        await until(lambda: "cancel" in pred.events)
        assert not server.done and pred.taken == []
        # ... and the next successor can still take over.
        got = await handover.inherit(c, pred.listeners, cache=False)
        assert set(got.sockets) == set(pred.listeners)
        assert await got.confirm()
        await until(lambda: server.done)
        server.close()
        for s in got.sockets.values():
            s.close()

    asyncio.run(main())


def test_a_successor_that_stalls_before_ready_times_out(tmp_path: Path, pred: Predecessor) -> None:
    async def main() -> None:
        c = cfg(tmp_path)
        server = handover.Server(c, pred.giving())
        assert await server.start()
        got = await handover.inherit(c, pred.listeners)
        assert got.channel is not None
        await asyncio.sleep(T * 3)  # never says READY
        assert pred.events == ["begin True", "cancel"] and not server.done
        got.channel.close()
        server.close()
        for s in got.sockets.values():
            s.close()

    asyncio.run(main())


@pytest.mark.parametrize("hello", [{"proto": 0}, {"nothing": True}, b"not json", b"[1, 2]"])
def test_a_bad_hello_gets_nothing(tmp_path: Path, pred: Predecessor, hello: Any) -> None:
    async def main() -> tuple[int, bytes]:
        c = cfg(tmp_path)
        server = handover.Server(c, pred.giving())
        assert await server.start()
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.connect(c.socket)
        conn.settimeout(2)
        conn.sendall(frame(HELLO, hello))
        try:
            reply = await asyncio.to_thread(read_frame, conn)
        except (OSError, struct.error):
            reply = (0, b"")
        conn.close()
        await until(lambda: not server.busy)
        server.close()
        return reply

    kind, _body = asyncio.run(main())
    assert kind in (0, DECLINE)  # declined, or the connection closed: never an OFFER
    assert pred.events == []


def test_a_later_protocol_version_is_answered_in_ours(tmp_path: Path, pred: Predecessor) -> None:
    async def main() -> dict[str, Any]:
        c = cfg(tmp_path)
        server = handover.Server(c, pred.giving())
        assert await server.start()
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.connect(c.socket)
        conn.settimeout(2)
        conn.sendall(frame(HELLO, {"proto": 7, "pid": 1, "new_field": [1, 2], "netns": handover.netns()}))
        head, fds, _flags, _addr = await asyncio.to_thread(socket.recv_fds, conn, 5, 8)
        for fd in fds:
            os.close(fd)
        msg = head + exact(conn, struct.unpack("!BI", head)[1])
        conn.sendall(frame(DECLINE, {"reason": "just looking"}))
        conn.close()
        await until(lambda: not server.busy)
        server.close()
        return dict(json.loads(msg[5:]))

    offer = asyncio.run(main())
    assert offer["proto"] == 1 and offer["cache_format"] == 1 and len(offer["sockets"]) == 2
    assert pred.events == []


def test_an_agent_in_another_network_namespace_is_declined_both_ways(tmp_path: Path, pred: Predecessor) -> None:
    async def main() -> tuple[int, list[str]]:
        c = cfg(tmp_path)
        server = handover.Server(c, pred.giving())
        assert await server.start()
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.connect(c.socket)
        conn.settimeout(2)
        conn.sendall(frame(HELLO, {"proto": 1, "pid": 1, "netns": "0:1"}))
        kind, _b = await asyncio.to_thread(read_frame, conn)
        conn.close()
        await until(lambda: not server.busy)
        server.close()
        return kind, pred.events

    kind, events = asyncio.run(main())
    assert kind == DECLINE and events == []
    c = cfg(tmp_path)
    said: list[Any] = []

    def script(conn: socket.socket) -> None:
        read_frame(conn)
        offer = {"proto": 1, "pid": 1, "cache_format": 1, "netns": "0:1",
                 "sockets": [[k, a[0], a[1]] for k, a in pred.listeners]}
        socket.send_fds(conn, [frame(OFFER, offer)], [pred.udp.fileno(), pred.tcp.fileno()])
        said.append(read_frame(conn)[0])

    peer = RawPeer(c.socket, script)
    try:
        got = asyncio.run(handover.inherit(c, pred.listeners))
    finally:
        peer.close()
    assert got.predecessor and not got.sockets and said == [DECLINE]


def test_a_second_successor_while_one_is_taking_over_is_declined(tmp_path: Path, pred: Predecessor) -> None:
    async def main() -> None:
        c = cfg(tmp_path)
        server = handover.Server(c, pred.giving())
        assert await server.start()
        first = await handover.inherit(c, pred.listeners, cache=False)
        assert first.channel is not None and server.busy
        second = await handover.inherit(c, pred.listeners, cache=False)
        assert second.predecessor and not second.sockets
        assert await first.confirm()
        server.close()
        for s in first.sockets.values():
            s.close()

    asyncio.run(main())


def test_close_removes_only_our_own_socket_file(tmp_path: Path, pred: Predecessor) -> None:
    async def main() -> None:
        c = cfg(tmp_path)
        old = handover.Server(c, pred.giving())
        assert await old.start()
        new = handover.Server(c, pred.giving())
        assert await new.start()  # replaces the file atomically
        old.close()
        assert Path(c.socket).exists()  # the successor's, left alone
        new.close()
        assert not Path(c.socket).exists()

    asyncio.run(main())


def test_cannot_listen_is_a_warning_not_a_failure(tmp_path: Path, pred: Predecessor) -> None:
    (tmp_path / "file").write_text("")
    c = HandoverConfig(socket=str(tmp_path / "file" / "handover.sock"), timeout=T)

    async def main() -> bool:
        return await handover.Server(c, pred.giving()).start()

    assert asyncio.run(main()) is False


def test_cache_records_round_trip_and_ttls_are_never_extended() -> None:
    entries = [("cluster.local", entry("web.default.svc.cluster.local", stored=100.0)),
               (".", entry("www.example.com", ttl=30, stored=95.5))]
    entries[0][1].hits = 7
    payload = b"".join(encode_entries(entries, now=110.0))
    # The receiver took its clock reading (500) before the sender measured ages (at 110): each entry is
    # as old on the receiver's clock as on the sender's, plus however long the transfer took, never less.
    got = decode_entries(payload, base=500.0)
    assert [r.zone for r in got] == ["cluster.local", "."]
    for (_zone, sent), rec in zip(entries, got, strict=True):
        e = rec.entry
        assert e.expires - 500.0 == sent.expires - 110.0  # the same remaining lifetime
        assert (e.key, e.rcode, e.kind, e.hdr, e.template, e.ttl_offsets, e.ttls, e.qlen) == (
            sent.key, sent.rcode, sent.kind, sent.hdr, sent.template, sent.ttl_offsets, sent.ttls, sent.qlen)
        assert e.body_at(500.0 + 3) == sent.body_at(110.0 + 3)  # the same TTLs on the wire
    assert got[0].entry.hits == 7 and got[0].entry.kind == SUCCESS


@pytest.mark.parametrize("cut", [1, 10, 30, -1])
def test_cache_records_cut_short_or_garbled_are_refused(cut: int) -> None:
    payload = b"".join(encode_entries([("cluster.local", entry("web.default.svc.cluster.local"))], now=110.0))
    with pytest.raises(HandoverError):
        decode_entries(payload[:cut], base=0.0)


def test_a_cache_record_with_a_ttl_position_outside_its_records_is_refused() -> None:
    e = entry("web.default.svc.cluster.local")
    bad = Entry(e.key, e.rcode, e.kind, e.hdr, e.template[:8], e.ttl_offsets, e.ttls, False, e.stored, e.ttl)
    payload = b"".join(encode_entries([("cluster.local", bad)], now=110.0))
    with pytest.raises(HandoverError, match="TTL position"):
        decode_entries(payload, base=0.0)


def test_frames_over_the_limit_are_refused() -> None:
    a, b = socket.socketpair()
    try:
        a.sendall(struct.pack("!BI", READY, handover.MAX_FRAME + 1))
        with pytest.raises(HandoverError, match="frame of"):
            handover.Channel(b, T).recv_now()
    finally:
        a.close()
        b.close()


def test_an_unexpected_frame_is_an_error() -> None:
    a, b = socket.socketpair()
    try:
        a.sendall(frame(BYE, {}))
        with pytest.raises(HandoverError, match="expected END, got BYE"):
            asyncio.run(handover.Channel(b, T).recv(END))
    finally:
        a.close()
        b.close()
