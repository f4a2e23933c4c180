"""A test upstream whose answers and failures the test controls: UDP and TCP on one loopback port.

It runs its own asyncio loop in a thread, parses with dnspython, and records every query it sees,
so a test can say "the upstream saw exactly one query" and "it answered with TTL 100".
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind(("127.0.0.1", 0))
            port = u.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                try:
                    t.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return int(port)
    raise RuntimeError("no free port")


@dataclass
class Seen:
    proto: str
    name: str
    rdtype: str
    flags: int
    edns: int
    do: bool


# Behaviours a test can give a name: how the upstream treats queries for it.
DROP, SERVFAIL, REFUSED, TRUNCATE, SPOOF, NOSOA = "drop", "servfail", "refused", "truncate", "spoof", "nosoa"


@dataclass
class FakeDNS:
    """Authoritative-ish server for `zone`: known names answer, others get NXDOMAIN with an SOA."""

    zone: str = "example.test."
    soa_ttl: int = 300
    soa_minimum: int = 60
    records: dict[tuple[str, str], tuple[int, list[str]]] = field(default_factory=dict)
    behaviour: dict[str, str] = field(default_factory=dict)
    delay: dict[str, float] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    port: int = 0
    down: bool = False  # answer nothing at all

    def add(self, name: str, rdtype: str, ttl: int, *rdatas: str) -> None:
        self.records[(name.lower().rstrip(".") + ".", rdtype)] = (ttl, list(rdatas))

    def count(self, name: str | None = None, rdtype: str | None = None) -> int:
        want = name.lower().rstrip(".") + "." if name else None
        return sum(1 for s in self.seen if (want is None or s.name == want) and (rdtype is None or s.rdtype == rdtype))

    # ---- answering -------------------------------------------------------------------------------

    def respond(self, wire: bytes, proto: str) -> list[bytes]:
        """The datagrams/messages to send back for one query (several when spoofing)."""
        q = dns.message.from_wire(wire)
        qname = q.question[0].name.to_text().lower()
        rdtype = dns.rdatatype.to_text(q.question[0].rdtype)
        self.seen.append(Seen(proto, qname, rdtype, q.flags, q.edns, bool(q.ednsflags & dns.flags.DO)))
        how = self.behaviour.get(qname, "")
        if how == DROP:
            return []
        r = dns.message.make_response(q)
        r.flags |= dns.flags.AA
        if how in (SERVFAIL, REFUSED):
            r.set_rcode(dns.rcode.SERVFAIL if how == SERVFAIL else dns.rcode.REFUSED)
            return [r.to_wire()]
        if how == TRUNCATE and proto == "udp":
            r.flags |= dns.flags.TC
            return [r.to_wire()]
        hit = self.records.get((qname, rdtype))
        name_exists = any(n == qname for n, _t in self.records)
        if hit is not None:
            ttl, rdatas = hit
            r.answer.append(dns.rrset.from_text_list(qname, ttl, "IN", rdtype, rdatas))
        else:
            if not name_exists:
                r.set_rcode(dns.rcode.NXDOMAIN)
            if how != NOSOA and dns.name.from_text(qname).is_subdomain(dns.name.from_text(self.zone)):
                soa = f"ns.{self.zone} host.{self.zone} 1 3600 600 86400 {self.soa_minimum}"
                r.authority.append(dns.rrset.from_text(self.zone, self.soa_ttl, "IN", "SOA", soa))
        real = r.to_wire(max_size=65535)
        if how == SPOOF:
            wrong_id = bytes([wire[0] ^ 0xFF, wire[1]]) + real[2:]
            other = dns.message.make_query("spoofed." + self.zone, rdtype)
            other.id = q.id
            other_r = dns.message.make_response(other)
            other_r.answer.append(dns.rrset.from_text(other.question[0].name, 60, "IN", "A", "6.6.6.6"))
            return [wrong_id, other_r.to_wire(), real]
        return [real]

    # ---- serving ---------------------------------------------------------------------------------

    def start(self) -> FakeDNS:
        self.port = self.port or free_port()
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self._thread.start()
        if not ready.wait(5):
            raise RuntimeError("fake DNS did not start")
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(5)

    def __enter__(self) -> FakeDNS:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve(ready))
        self._loop.close()

    def _spawn(self, coro: Coroutine[None, None, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _later(self, qname: str, fn: Callable[[], None]) -> None:
        await asyncio.sleep(self.delay.get(qname, 0.0))
        fn()

    def _qname(self, wire: bytes) -> str:
        try:
            return dns.message.from_wire(wire).question[0].name.to_text().lower()
        except Exception:
            return ""

    async def _serve(self, ready: threading.Event) -> None:
        self._stop = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        fake = self
        loop = asyncio.get_running_loop()

        class UDP(asyncio.DatagramProtocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.t = transport

            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                if fake.down:
                    return
                def send() -> None:
                    for out in fake.respond(data, "udp"):
                        self.t.sendto(out, addr)  # type: ignore[attr-defined]
                fake._spawn(fake._later(fake._qname(data), send))

        async def tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while not fake.down:
                    n = int.from_bytes(await reader.readexactly(2), "big")
                    data = await reader.readexactly(n)
                    def send(data: bytes = data) -> None:
                        for out in fake.respond(data, "tcp"):
                            writer.write(len(out).to_bytes(2, "big") + out)
                    fake._spawn(fake._later(fake._qname(data), send))
            writer.close()

        transport, _ = await loop.create_datagram_endpoint(UDP, local_addr=("127.0.0.1", self.port))
        server = await asyncio.start_server(tcp, "127.0.0.1", self.port)
        ready.set()
        await self._stop.wait()
        transport.close()
        server.close()


def wait_for(cond: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return cond()
