"""Forged upstream replies never enter the cache: the real agent on loopback against a hostile upstream.

The upstream answers each query first with forgeries (a wrong ID, another question, the right ID from
another source port and from another address, the name in the wrong case, a flood of every ID) and only
then, a moment later, with the real answer. Whatever came first, the client gets the real answer, and so
does the next client, from the cache.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import dns.message
import dns.rdatatype
import dns.rrset
import pytest

from tests.fakedns import FakeDNS, free_port
from tests.integration.conftest import RunningAgent

NAME = "forgery-target.abcdefghijklmnopqrstuvwxyz.example.test."  # 46 letters: the case is 46 bits to guess
REAL, EVIL = "192.0.2.1", "6.6.6.6"


def answer(query: bytes, ip: str, qid: int | None = None, lower: bool = False, name: str | None = None) -> bytes:
    """A reply to `query` carrying `ip`; its ID, question case or name changed as a forger would."""
    q = dns.message.from_wire(query)
    if name is not None:
        q = dns.message.make_query(name, "A")
        q.id = dns.message.from_wire(query).id
    r = dns.message.make_response(q)
    r.answer.append(dns.rrset.from_text(r.question[0].name, 300, "IN", "A", ip))
    out = r.to_wire()
    if lower:  # the question spelled as the client asked, in lower case: what a blind forger would send
        qend = 12 + len(r.question[0].name.to_wire() or b"") + 4
        out = out[:12] + out[12:qend].lower() + out[qend:]
    if qid is not None:
        out = qid.to_bytes(2, "big") + out[2:]
    return out


class Hostile:
    """A UDP upstream on 127.0.0.1 that forges before it answers; blocking sockets in a thread."""

    def __init__(self, flood: bool = True) -> None:
        self.port = free_port()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", self.port))
        self.sock.settimeout(0.1)
        self.other_port = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # right address, wrong port
        self.other_port.bind(("127.0.0.1", 0))
        self.other_addr = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # right port, wrong address
        self.other_addr.bind(("127.0.0.2", self.port))
        self.flood = flood
        self.seen: list[bytes] = []
        self.forged = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                data, addr = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            try:
                asked = dns.message.from_wire(data).question[0].name.to_text().lower()
            except Exception:
                continue
            if asked != NAME:  # a health probe (`. NS`) or the like: answered, not counted
                self.sock.sendto(answer(data, REAL), addr)
                continue
            first = not self.seen
            self.seen.append(data)
            qid = int.from_bytes(data[:2], "big")
            if first:
                forgeries = [
                    (self.sock, answer(data, EVIL, lower=True)),  # right ID and source, case not echoed
                    (self.sock, answer(data, EVIL, qid=qid ^ 0x5A5A)),  # wrong ID, exact question
                    (self.sock, answer(data, EVIL, name="other.example.test.")),  # right ID, other question
                    (self.other_port, answer(data, EVIL)),  # exactly right, but from another port
                    (self.other_addr, answer(data, EVIL)),  # exactly right, but from another address
                ]
                for s, msg in forgeries:
                    s.sendto(msg, addr)
                    self.forged += 1
                if self.flood:
                    # Every ID a blind forger could guess, the question in the client's own (lower) case.
                    template = answer(data, EVIL, lower=True)
                    for i in range(65536):
                        if i != qid:
                            self.sock.sendto(i.to_bytes(2, "big") + template[2:], addr)
                            self.forged += 1
                time.sleep(0.3)  # the query stays in flight while the forgeries land
            self.sock.sendto(answer(data, REAL), addr)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        for s in (self.sock, self.other_port, self.other_addr):
            s.close()


@pytest.fixture
def hostile() -> Iterator[Hostile]:
    h = Hostile()
    yield h
    h.close()


def agent_for(make_agent: Any, port: int, **group: Any) -> RunningAgent:
    with FakeDNS(zone="cluster.local.") as cluster:  # the cluster group must exist; never asked here
        pass
    agent: RunningAgent = make_agent({"upstreams": {
        "cluster": {"servers": [f"127.0.0.1:{cluster.port}"], "try_timeout": 0.3},
        # Generous timers: sending the 65,535-ID flood from Python takes seconds on a busy machine, and the
        # query must still be in flight when the real answer comes.
        "host": {"servers": [f"127.0.0.1:{port}"], "transport": "udp", "try_timeout": 12.0, "udp_retransmit": 0,
                 **group},
    }, "resolve": {"query_timeout": 15.0}, "zones": {".": {"forward": ["host"]}}})
    return agent


def a_records(m: dns.message.Message) -> list[str]:
    return sorted(rd.to_text() for rrset in m.answer for rd in rrset if rrset.rdtype == dns.rdatatype.A)


def test_forged_replies_never_enter_the_cache(hostile: Hostile, make_agent: Any) -> None:
    agent = agent_for(make_agent, hostile.port)
    first = agent.query(NAME, timeout=20.0)
    assert a_records(first) == [REAL]
    assert first.question[0].name.to_text() == NAME  # the client's own spelling, whatever went upstream
    sent = dns.message.from_wire(hostile.seen[0]).question[0].name.to_text()
    assert sent.lower() == NAME and sent != NAME  # the name went upstream in random case (0x20)
    # From the cache now: the same real answer, in another spelling too, and the upstream asked once.
    for spelling in (NAME, NAME.upper()):
        again = agent.query(spelling)
        assert a_records(again) == [REAL] and again.question[0].name.to_text() == spelling
    assert len(hostile.seen) == 1
    # Every forgery from the upstream's own address and port was seen and dropped (the kernel drops the
    # two from another source before the agent sees them: its upstream socket is connected). The flood
    # may overflow the socket's buffer; the count is at least the forgeries that were not lost.
    spoofed = agent.metric("nodelocal_spoofed_replies_dropped_total")
    assert spoofed >= 3
    assert agent.metric("nodelocal_upstream_case_mismatches_total") >= 1


def test_without_0x20_a_flood_of_guessed_ids_poisons_the_cache(make_agent: Any) -> None:
    """What randomize_case: false costs: a blind forger who sends every ID from the upstream's address and
    port wins the race (the case is the only other thing it would have had to guess)."""
    h = Hostile(flood=False)  # the forgery with the right ID, question in lower case, is enough
    try:
        agent = agent_for(make_agent, h.port, randomize_case=False)
        assert a_records(agent.query(NAME)) == [EVIL]
        assert dns.message.from_wire(h.seen[0]).question[0].name.to_text() == NAME  # sent as asked
    finally:
        h.close()
