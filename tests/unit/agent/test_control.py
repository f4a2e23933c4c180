"""The control endpoint: key reading, name matching, the protocol's operations and bounds, the socket's mode."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
from pathlib import Path
from typing import Any

import dns.message
import dns.rrset
import pytest

from nodelocal import ControlError
from nodelocal.agent import control
from nodelocal.agent.control import ControlServer, RequestError, at_or_below, key_parts, picker
from nodelocal.cache.policy import TTLPolicy, entry_for
from nodelocal.cache.store import SUCCESS, Store
from nodelocal.cli import cache as cachecli
from nodelocal.cli.control import one, request
from nodelocal.dns import wire
from nodelocal.dns.names import to_wire


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def put(store: Store, name: str, rdtype: str = "A", rdata: str = "192.0.2.1", ttl: int = 30,
        zone: str = ".", rcode: int = 0, do: bool = False) -> bytes:
    q = dns.message.make_query(name, rdtype, want_dnssec=do)
    r = dns.message.make_response(q)
    r.set_rcode(rcode)
    if rcode == 0:
        r.answer.append(dns.rrset.from_text(name, ttl, "IN", rdtype, rdata))
    else:
        r.authority.append(dns.rrset.from_text("example.", ttl, "IN", "SOA", "ns. host. 1 2 3 4 60"))
    buf = r.to_wire()
    qwire = q.to_wire()
    qend = wire.question_end(qwire)
    key = wire.question_key(qwire, qend, wire.key_suffix(True, False, do))
    e, ok = entry_for(key, buf, do, store.now(), TTLPolicy(success_max_ttl=3600, denial_max_ttl=3600))
    assert ok
    store.put(e, store.partition(zone, e.kind, 100))
    return key


def server(store: Store, clock: Clock, path: str = "/nonexistent", **kw: Any) -> ControlServer:
    async def route(name: str) -> dict[str, Any]:
        return {"name": name}

    async def status() -> dict[str, Any]:
        return {"version": "x"}

    return ControlServer(path, store, status, route, clock, **kw)


async def collect(srv: ControlServer, req: dict[str, Any]) -> list[dict[str, Any]]:
    return [obj async for obj in srv.serve(req)]


def test_key_parts_reads_name_type_class_and_flags() -> None:
    q = dns.message.make_query("WWW.Example.", "AAAA", want_dnssec=True)
    qwire = q.to_wire()
    qend = wire.question_end(qwire)
    key = wire.question_key(qwire, qend, wire.key_suffix(True, True, True))
    name, qtype, qclass, flags, end = key_parts(key)
    assert (name, qtype, qclass, flags) == ("www.example", 28, 1, ("rd", "cd", "do"))
    assert end == qend - 12
    plain = wire.question_key(qwire, qend, wire.key_suffix(True, False, False))
    assert key_parts(plain)[3] == ("rd",)


@pytest.mark.parametrize(("name", "zone", "inside"), [
    ("a.example", "example", True), ("example", "example", True), ("badexample", "example", False),
    ("a.b.example", "b.example", True), ("a.xb.example", "b.example", False), ("anything", ".", True),
])
def test_at_or_below_follows_label_boundaries(name: str, zone: str, inside: bool) -> None:
    assert at_or_below(to_wire(name), to_wire(zone)) is inside


def test_picker_by_name_matches_every_type_and_flag_but_not_longer_names() -> None:
    store = Store(1 << 20, Clock())
    keys = [put(store, "a.example."), put(store, "a.example.", "TXT", '"t"'), put(store, "a.example.", do=True),
            put(store, "x.a.example."), put(store, "b.example.")]
    pick = picker(to_wire("a.example"))
    assert [k for k in keys if pick(k)] == keys[:3]
    under = picker(zone=to_wire("a.example"))
    assert [k for k in keys if under(k)] == keys[:4]


def test_dump_lists_entries_with_remaining_ttl_stale_and_records() -> None:
    clock = Clock()
    store = Store(1 << 20, clock)
    put(store, "a.example.", ttl=30)
    put(store, "gone.example.", ttl=10, rcode=3)
    clock.t += 12
    store.partitions[(".", SUCCESS)].stale = 3600
    for p in store.partitions.values():
        p.stale = 3600
    out = asyncio.run(collect(server(store, clock), {"op": "dump"}))
    entries = {o["entry"]["name"]: o["entry"] for o in out if "entry" in o}
    a = entries["a.example"]
    assert (a["type"], a["rcode"], a["kind"], a["ttl"], a["remaining"], a["stale"]) == ("A", "NOERROR", "success",
                                                                                        30, 18, False)
    assert a["answer"] == ["a.example. 18 IN A 192.0.2.1"]
    g = entries["gone.example"]
    assert (g["rcode"], g["kind"], g["stale"], g["stale_for"], g["remaining"]) == ("NXDOMAIN", "denial", True, 2, 0)
    assert g["answer"] == [] and g["authority"][0].startswith("example. 0 IN SOA")
    assert out[-1] == {"end": True, "ok": True, "sent": 2, "matched": 2, "cut": False, "entries": 2,
                       "max_dump": 10000}


def test_dump_of_one_name_and_the_cap() -> None:
    clock = Clock()
    store = Store(1 << 20, clock)
    for i in range(5):
        put(store, f"n{i}.example.")
    put(store, "n1.example.", "TXT", '"x"')
    one_name = asyncio.run(collect(server(store, clock), {"op": "dump", "name": "N1.example."}))
    assert sorted(o["entry"]["type"] for o in one_name if "entry" in o) == ["A", "TXT"]
    capped = asyncio.run(collect(server(store, clock, max_dump=4), {"op": "dump"}))
    assert len([o for o in capped if "entry" in o]) == 4
    assert capped[-1]["cut"] is True and capped[-1]["matched"] == 6
    # A client cannot ask for more than the cap.
    asked = asyncio.run(collect(server(store, clock, max_dump=4), {"op": "dump", "limit": 100}))
    assert asked[-1]["sent"] == 4


def test_flush_by_name_zone_and_all() -> None:
    clock = Clock()
    store = Store(1 << 20, clock)
    for name in ("a.example.", "b.example.", "x.b.example.", "other.test."):
        put(store, name)
    put(store, "a.example.", "AAAA", "2001:db8::1")
    srv = server(store, clock)
    flushed: list[bytes] = []
    srv.on_flush = flushed.extend
    end = asyncio.run(collect(srv, {"op": "flush", "name": "a.example"}))[-1]
    assert (end["flushed"], end["entries"]) == (2, 3) and len(flushed) == 2
    end = asyncio.run(collect(srv, {"op": "flush", "zone": "b.example"}))[-1]
    assert (end["flushed"], end["entries"]) == (2, 1)
    assert key_parts(next(iter(store.index)))[0] == "other.test"
    end = asyncio.run(collect(srv, {"op": "flush", "all": True}))[-1]
    assert (end["flushed"], end["entries"]) == (1, 0)
    assert store.bytes == 0


@pytest.mark.parametrize(("req", "says"), [
    ({"op": "nope"}, "unknown op"),
    ({"op": "flush"}, "exactly one of"),
    ({"op": "flush", "name": "a", "zone": "b"}, "exactly one of"),
    ({"op": "flush", "all": "yes"}, "\"all\" is true"),
    ({"op": "flush", "name": "a..b"}, "not a domain name"),
    ({"op": "dump", "name": 5}, "is a string"),
    ({"op": "dump", "limit": 0}, "limit"),
    ({"op": "route"}, "needs a \"name\""),
])
def test_bad_requests_are_refused_with_a_reason(req: dict[str, Any], says: str) -> None:
    with pytest.raises(RequestError, match=says):
        asyncio.run(collect(server(Store(1 << 20, Clock()), Clock()), req))


def test_socket_is_0600_and_speaks_json_lines(tmp_path: Path) -> None:
    clock = Clock()
    store = Store(1 << 20, clock)
    put(store, "a.example.")
    path = tmp_path / "run" / "control.sock"

    async def main() -> None:
        srv = server(store, clock, str(path))
        await srv.start()
        try:
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
            assert stat.S_ISSOCK(os.stat(path).st_mode)
            loop = asyncio.get_running_loop()
            status = await loop.run_in_executor(None, one, str(path), {"op": "status"})
            assert status["status"] == {"version": "x"}
            lines = await loop.run_in_executor(None, lambda: list(request(str(path), {"op": "dump"})))
            assert lines[0]["entry"]["name"] == "a.example" and lines[-1]["sent"] == 1

            def bad() -> None:
                one(str(path), {"op": "flush"})
            with pytest.raises(ControlError, match="the agent refused: flush takes exactly one"):
                await loop.run_in_executor(None, bad)

            def raw(data: bytes) -> dict[str, Any]:
                with socket.socket(socket.AF_UNIX) as s:
                    s.settimeout(5)
                    s.connect(str(path))
                    s.sendall(data)
                    reply: dict[str, Any] = json.loads(s.makefile("rb").readline())
                    return reply
            assert "one line of JSON" in (await loop.run_in_executor(None, raw, b"status\n"))["error"]
            too_long = await loop.run_in_executor(None, raw, b"{" + b" " * (control.MAX_REQUEST + 10) + b"}\n")
            assert "longer than" in too_long["error"]
        finally:
            srv.close()
        assert not path.exists()

    asyncio.run(main())


def test_a_silent_client_is_dropped_after_the_timeout(tmp_path: Path) -> None:
    path = tmp_path / "c.sock"

    async def main() -> None:
        srv = server(Store(1 << 20, Clock()), Clock(), str(path), timeout=0.2)
        await srv.start()
        try:
            reader, writer = await asyncio.open_unix_connection(str(path))
            assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the agent, nothing said
            writer.close()
        finally:
            srv.close()

    asyncio.run(main())


def test_close_leaves_a_newer_agents_socket_alone(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"

    async def main() -> None:
        old, new = server(Store(4096, Clock()), Clock(), str(path)), server(Store(4096, Clock()), Clock(), str(path))
        await old.start()
        await new.start()  # a rolling update: the newer agent takes the path over
        old.close()
        assert path.exists()
        loop = asyncio.get_running_loop()
        assert (await loop.run_in_executor(None, one, str(path), {"op": "status"}))["ok"]
        new.close()
        assert not path.exists()

    asyncio.run(main())


def test_client_errors_say_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ControlError, match=r"no agent is running here: .* does not exist"):
        one(str(tmp_path / "none.sock"), {"op": "status"})
    stale = tmp_path / "stale.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(stale))
    s.close()  # a socket file nobody listens on
    with pytest.raises(ControlError, match="nothing listens on"):
        one(str(stale), {"op": "status"})


def test_describe_entry_text() -> None:
    e = {"name": "a.example", "type": "A", "class": "IN", "flags": ["rd", "do"], "zone": ".", "kind": "success",
         "rcode": "NOERROR", "ttl": 30, "remaining": 18, "stale": False, "stale_for": 0, "hits": 3,
         "answer": ["a.example. 18 IN A 192.0.2.1"], "authority": []}
    assert cachecli.describe_entry(e) == [
        "a.example A [do]: NOERROR, success, zone ., 18s left of 30s, 3 hits", "    a.example. 18 IN A 192.0.2.1"]
    e.update(stale=True, stale_for=7, answer=[], authority=["x. 0 IN SOA ..."])
    assert cachecli.describe_entry(e)[0].endswith("stale for 7s (kept to answer while the upstreams fail), 3 hits")
    assert cachecli.describe_entry(e)[1] == "    (authority) x. 0 IN SOA ..."
