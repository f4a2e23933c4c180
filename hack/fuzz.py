#!/usr/bin/env python3
"""hack/fuzz.py — hostile bytes against the real agent, on loopback: its UDP and TCP listeners, and its
forwarder's handling of upstream replies.

    .venv/bin/python hack/fuzz.py --inputs 1000000 [--seed N] [--json FILE]

The agent runs as `nodelocal serve` in a process of its own (127.0.0.1, a free port, no setup), its
upstreams a hostile server in this process (UDP and TCP on 127.0.0.1). Inputs, in three parts:
  udp       datagrams to the agent: valid queries made by dnspython, then mutated (bit flips, bytes set to
            pointer and label-type values, truncated, padded, counts set huge, EDNS with bad lengths, QR or
            opcodes set, compression pointers in the question: loops, forward, past the end), replies sent
            as queries, and random bytes. After every batch a probe (a cached name) must come back right.
  tcp       the same messages, length-prefixed, over TCP connections, several per connection; some
            connections with broken framing (a length past the data, half a prefix) are then cut.
  upstream  queries for new names that the hostile upstream answers with valid replies mutated the same
            ways (owners and rdata pointing forward, in loops, past the end, into the header; rdata of the
            wrong length; counts past the records; OPT with bad lengths; TC set, so the agent asks again
            over TCP and gets hostile bytes there too), each name asked twice (a miss, then what the cache
            kept). Each hostile reply is one input.
Every reply the agent sends is parsed by dnspython (the oracle); one it cannot parse is a bad reply. A
crash is a traceback in the agent's log, or the agent dead or not answering its probe. The agent's RSS is
read before and after (and its peak between). Exit status 0 when there were no crashes and no bad replies.
Bounded in count and time (--seconds, default one hour); loopback only.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import dns.exception
import dns.message
import dns.rdatatype
import dns.rrset
from localproc import free_port, rss_kib  # hack/localproc.py: hack/ is not a package, its folder is on sys.path

REPO = Path(__file__).resolve().parents[1]
ZONE = b"\x01h\x04fuzz\x00"  # h.fuzz.: names the hostile upstream answers with hostile bytes
PROBE_NAME = "alive.probe.fuzz."
PROBE_IP = "192.0.2.1"
QTYPES = [1, 28, 15, 16, 5, 33, 6, 2, 12, 39, 255, 65, 43, 46, 99]


# ---- mutations ---------------------------------------------------------------------------------------

POINTERISH = [0x00, 0x01, 0x3F, 0x40, 0x80, 0xBF, 0xC0, 0xC0, 0xFF, 0x0C, 0x29]


def mutate(rng: random.Random, msg: bytes, start: int = 0) -> bytes:
    """One hostile variant of `msg`; bytes before `start` are left alone (an ID and question to keep)."""
    b = bytearray(msg)
    how = rng.randrange(10)
    lo = min(start, len(b))
    if how <= 2 and len(b) > lo:  # bit flips
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(lo, len(b))
            b[i] ^= 1 << rng.randrange(8)
    elif how == 3 and len(b) > lo:  # bytes set to values that matter in names
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(lo, len(b))] = rng.choice(POINTERISH)
    elif how == 4:  # truncated
        del b[rng.randint(lo, len(b)) :]
    elif how == 5:  # padded
        b += rng.randbytes(rng.randint(1, 40))
    elif how == 6 and len(b) >= 12:  # counts: huge or off by some
        i = rng.choice((6, 8, 10)) if start else rng.choice((4, 6, 8, 10))
        old = struct.unpack_from(">H", b, i)[0]
        struct.pack_into(">H", b, i, rng.choice((0xFFFF, 0x8000, rng.randint(0, 8), (old + 1) & 0xFFFF)))
    elif how == 7 and len(b) > lo + 2:  # a compression pointer somewhere: backwards, to itself, forward, past the end
        i = rng.randrange(lo, len(b) - 1)
        target = rng.choice((i, i + 2, len(b) + rng.randint(0, 300), rng.randrange(0, 12), rng.randrange(0, len(b)),
                             0x3FFF))
        struct.pack_into(">H", b, i, 0xC000 | (target & 0x3FFF))
    elif how == 8 and len(b) >= 23:  # an EDNS OPT's rdata length or an option length off
        opt = bytes(b).rfind(b"\x00\x00\x29")
        if opt >= lo and opt + 11 <= len(b):
            struct.pack_into(">H", b, opt + 9, rng.choice((0, 1, 4, 0xFFFF, rng.randint(0, 64))))
            if rng.random() < 0.5:
                option = struct.pack(">HH", rng.choice((8, 10, 12, 15, 0xFFFF)), rng.randint(0, 40))
                b += option + rng.randbytes(rng.randint(0, 12))
    else:  # several of the above
        for _ in range(2):
            b = bytearray(mutate(rng, bytes(b), start))
    return bytes(b)


def make_query(rng: random.Random, name: str | None = None) -> bytes:
    labels = [rng.choice(["www", "a", "x" * rng.randint(1, 63), "Example", "svc", "cluster", "local", "test", "_tcp"])
              for _ in range(rng.randint(0, 5))]
    qname = name or (".".join(labels) + "." if labels else ".")
    use_edns = rng.random() < 0.6
    q = dns.message.make_query(qname, rng.choice(QTYPES), use_edns=use_edns,
                               want_dnssec=use_edns and rng.random() < 0.3,
                               payload=rng.choice((512, 1232, 4096, 65535)))
    if rng.random() < 0.2:
        q.flags &= ~0x0100  # RD off
    return q.to_wire()


def query_input(rng: random.Random) -> bytes:
    """One input for the agent's listeners."""
    r = rng.random()
    if r < 0.08:
        return rng.randbytes(rng.randint(0, 600))  # random bytes
    if r < 0.12:  # a reply sent as a query
        return dns.message.make_response(dns.message.from_wire(make_query(rng))).to_wire()
    if r < 0.17:  # a valid query, as is
        return make_query(rng)
    if r < 0.25:  # a compressed question: a loop, forward, past the end
        q = make_query(rng)
        return q[:12] + rng.choice((b"\xc0\x0c", b"\x01a\xc0\x0c", b"\xc0\xff", b"\x03www\xc0\x12", b"\xc0")) + q[-4:]
    return mutate(rng, make_query(rng))


def hostile_reply(rng: random.Random, query: bytes, counter: list[int]) -> bytes:
    """A valid answer to the agent's upstream query (records of the asked type, an SOA, an additional
    record), usually mutated past the question so it still matches the query."""
    try:
        qend = 12
        while query[qend]:
            qend += 1 + query[qend]
        qend += 5
    except IndexError:
        return b""
    qtype = query[qend - 4] << 8 | query[qend - 3]
    zone_at = qend - 4 - len(ZONE)
    zptr = struct.pack(">H", 0xC000 | zone_at)
    rr = lambda owner, t, rd, ttl=60: owner + struct.pack(">HHIH", t, 1, ttl, len(rd)) + rd  # noqa: E731
    rdata = {1: b"\xc0\x00\x02\x01", 28: bytes(15) + b"\x01", 15: b"\x00\x0a\x04mail" + zptr, 16: b"\x05hello\x02hi",
             5: b"\x05alias" + zptr, 33: b"\x00\x01\x00\x02\x00\x35\x03srv" + zptr, 2: b"\x02ns" + zptr,
             12: b"\x03ptr" + zptr, 6: zptr + b"\x04host" + zptr + bytes(16) + b"\x00\x00\x00\x3c"}.get(qtype)
    flags = 0x8180 | (query[2] & 0x01) << 8 | (query[3] & 0x10)
    an = [rr(b"\xc0\x0c", qtype if rdata else 1, rdata or b"\xc0\x00\x02\x01")] if rng.random() < 0.7 else []
    ns = [rr(zptr, 6, b"\x02ns" + zptr + b"\x04host" + zptr + struct.pack(">IIIII", 1, 3600, 600, 86400, 30))]
    ar = [rr(b"\x02ns" + zptr, 1, b"\xc0\x00\x02\x35")] if rng.random() < 0.5 else []
    rcode = 3 if not an and rng.random() < 0.5 else 0
    opt = b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00" if rng.random() < 0.7 else b""
    head = query[:2] + struct.pack(">HHHHH", flags | rcode, 1, len(an), len(ns), len(ar) + (1 if opt else 0))
    msg = head + query[12:qend] + b"".join(an + ns + ar) + opt
    counter[0] += 1
    r = rng.random()
    if r < 0.15:
        return msg  # clean
    if r < 0.22:
        return msg[:2] + bytes([msg[2] | 0x02]) + msg[3:]  # TC: the agent asks again over TCP
    if r < 0.30:
        return mutate(rng, msg)  # anywhere, the ID and question too (mostly dropped as spoofed)
    return mutate(rng, msg, qend)


# ---- the hostile upstream ------------------------------------------------------------------------------

class Upstream:
    """UDP and TCP on 127.0.0.1: correct answers for the probe names, hostile ones for h.fuzz."""

    def __init__(self, seed: int) -> None:
        self.port = free_port()
        self.rng = random.Random(seed)
        self.hostile = [0]  # hostile replies sent (inputs)
        self.stop = threading.Event()
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", self.port))
        self.udp.settimeout(0.2)
        self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.tcp.bind(("127.0.0.1", self.port))
        self.tcp.listen(64)
        self.tcp.settimeout(0.2)
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._serve_udp, daemon=True),
                        threading.Thread(target=self._serve_tcp, daemon=True)]
        for t in self.threads:
            t.start()

    def answer(self, query: bytes) -> bytes:
        if ZONE in query[12:].lower():  # the agent sends names in random case (0x20)
            with self.lock:
                return hostile_reply(self.rng, query, self.hostile)
        try:
            q = dns.message.from_wire(query)
        except dns.exception.DNSException:
            return b""
        r = dns.message.make_response(q)
        if q.question and q.question[0].rdtype == dns.rdatatype.A:
            r.answer.append(dns.rrset.from_text(q.question[0].name, 3600, "IN", "A", PROBE_IP))
        return r.to_wire()

    def _serve_udp(self) -> None:
        while not self.stop.is_set():
            try:
                data, addr = self.udp.recvfrom(65535)
            except TimeoutError:
                continue
            out = self.answer(data)
            if out:
                self.udp.sendto(out, addr)

    def _serve_tcp(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.tcp.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._conn, args=(conn,), daemon=True).start()

    def _conn(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        try:
            buf = b""
            while not self.stop.is_set():
                chunk = conn.recv(65535)
                if not chunk:
                    return
                buf += chunk
                while len(buf) >= 2 and len(buf) >= 2 + (buf[0] << 8 | buf[1]):
                    n = buf[0] << 8 | buf[1]
                    msg, buf = buf[2 : 2 + n], buf[2 + n :]
                    out = self.answer(msg)[:65535]
                    conn.sendall(struct.pack(">H", len(out)) + out)
        except OSError:
            return
        finally:
            conn.close()

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(2)
        self.udp.close()
        self.tcp.close()


# ---- the run -----------------------------------------------------------------------------------------

class Run:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.up = Upstream(args.seed + 1)
        self.port = free_port()
        self.counts: dict[str, int] = {"udp": 0, "tcp": 0, "upstream": 0, "replies": 0, "bad_replies": 0,
                                       "probe_failures": 0, "unanswered_upstream_queries": 0}
        self.bad: list[dict[str, str]] = []
        self.deadline = time.monotonic() + args.seconds
        self.tmp = tempfile.TemporaryDirectory(prefix="nodelocal-fuzz-")
        group = {"servers": [f"127.0.0.1:{self.up.port}"], "try_timeout": 0.25, "udp_retransmit": 0,
                 "max_fails": 0}
        cfg = {
            "listen": {"localip": ["127.0.0.1"], "port": self.port},
            "setup": False,
            "metrics_addr": f"127.0.0.1:{free_port()}",
            "health_addr": f"127.0.0.1:{free_port()}",
            "upstreams": {"cluster": {**group, "transport": "udp"}, "host": {**group, "transport": "udp"},
                          "tcpgroup": {**group, "transport": "tcp"}},
            "zones": {".": {"forward": ["cluster"]}, "t.h.fuzz": {"forward": ["tcpgroup"]}},
            "resolve": {"query_timeout": 1.0},
            # One source address sends everything here: past clients.max_pending queries of it in flight
            # (hostile upstream replies keep many waiting) its TCP probe would get REFUSED by the per-client
            # cap. This run is about robustness, not fairness: no per-client cap.
            "clients": {"max_pending": 0},
        }
        self.cfg_path = Path(self.tmp.name) / "nodelocal.yaml"
        self.cfg_path.write_text(json.dumps(cfg))  # JSON is YAML
        self.log_path = Path(self.tmp.name) / "agent.log"
        self.log = self.log_path.open("wb")
        # The virtualenv's own `nodelocal` beside this interpreter: the agent as it is installed.
        agent = str(Path(sys.executable).with_name("nodelocal"))
        self.proc = subprocess.Popen([agent, "serve", "--config", str(self.cfg_path), "--log-level", "warning"],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        self.probe_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.probe_sock.settimeout(0.2)

    # -- helpers --

    def check(self, reply: bytes, what: str, sent: bytes | None = None) -> None:
        self.counts["replies"] += 1
        try:
            dns.message.from_wire(reply)
        except Exception as e:
            self.counts["bad_replies"] += 1
            if len(self.bad) < 20:
                self.bad.append({"part": what, "error": f"{type(e).__name__}: {e}", "reply": reply.hex(),
                                 "input": sent.hex() if sent is not None else ""})

    def probe(self) -> bool:
        """The cached probe name answers right, over UDP, within 3 s."""
        q = dns.message.make_query(PROBE_NAME, "A")
        wire = q.to_wire()
        end = time.monotonic() + 3.0
        self.probe_sock.sendto(wire, ("127.0.0.1", self.port))
        while time.monotonic() < end:
            try:
                data = self.probe_sock.recv(65535)
            except TimeoutError:
                if self.proc.poll() is not None:
                    return False
                continue
            if data[:2] == wire[:2]:
                r = dns.message.from_wire(data)
                return any(rd.to_text() == PROBE_IP for rrset in r.answer for rd in rrset)
        return False

    def alive(self) -> bool:
        ok = self.probe()
        if not ok:
            self.counts["probe_failures"] += 1
        return ok and self.proc.poll() is None

    # -- parts --

    def run_udp(self, n: int) -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setblocking(False)
        sent: dict[int, bytes] = {}
        batch = 200
        while self.counts["udp"] < n and time.monotonic() < self.deadline:
            sent.clear()
            for _ in range(min(batch, n - self.counts["udp"])):
                data = query_input(self.rng)
                if len(data) >= 2:
                    sent[data[0] << 8 | data[1]] = data
                s.sendto(data, ("127.0.0.1", self.port))
                self.counts["udp"] += 1
                self._drain(s, sent, "udp")
            if not self.alive():
                break
            self._drain(s, sent, "udp")
        s.close()

    def _drain(self, s: socket.socket, sent: dict[int, bytes], what: str) -> None:
        while True:
            try:
                data = s.recv(65535)
            except BlockingIOError:
                return
            self.check(data, what, sent.get(data[0] << 8 | data[1]) if len(data) >= 2 else None)

    def run_tcp(self, n: int) -> None:
        while self.counts["tcp"] < n and time.monotonic() < self.deadline:
            msgs = [query_input(self.rng) for _ in range(min(40, n - self.counts["tcp"]))]
            self.counts["tcp"] += len(msgs)
            broken = self.rng.random() < 0.15
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=3) as c:
                    if broken:
                        blob = b"".join(struct.pack(">H", len(m)) + m for m in msgs)
                        cut = self.rng.choice((struct.pack(">H", 0xFFFF) + b"x" * 5, b"\x00", struct.pack(">H", 0)))
                        c.sendall(blob + cut)
                        c.shutdown(socket.SHUT_WR)
                        self._read_tcp(c, None, msgs)
                    else:
                        probe = dns.message.make_query(PROBE_NAME, "A").to_wire()
                        c.sendall(b"".join(struct.pack(">H", len(m)) + m for m in [*msgs, probe]))
                        if not self._read_tcp(c, probe[:2], msgs):
                            self.counts["probe_failures"] += 1
            except OSError:
                pass
            if self.counts["tcp"] % 2000 < 40 and not self.alive():
                break

    def _read_tcp(self, c: socket.socket, probe_id: bytes | None, msgs: list[bytes]) -> bool:
        buf = b""
        by_id = {m[:2]: m for m in msgs if len(m) >= 2}
        c.settimeout(3)
        while True:
            try:
                chunk = c.recv(65535)
            except OSError:
                return False
            if not chunk:
                return False
            buf += chunk
            while len(buf) >= 2 and len(buf) >= 2 + (buf[0] << 8 | buf[1]):
                n = buf[0] << 8 | buf[1]
                msg, buf = buf[2 : 2 + n], buf[2 + n :]
                if probe_id is not None and msg[:2] == probe_id and PROBE_IP.encode() not in msg:
                    r = dns.message.from_wire(msg)
                    if any(rd.to_text() == PROBE_IP for rrset in r.answer for rd in rrset):
                        return True
                self.check(msg, "tcp", by_id.get(msg[:2]))

    def run_upstream(self, n: int) -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(0.05)
        seq = 0
        previous: list[bytes] = []
        while self.up.hostile[0] < n and time.monotonic() < self.deadline:
            batch: list[bytes] = []
            for _ in range(100):
                seq += 1
                zone = "t.h.fuzz." if seq % 5 == 0 else "h.fuzz."  # one in five over TCP upstream
                batch.append(make_query(self.rng, f"n{seq}.{zone}"))
            waiting = {q[:2]: q for q in batch + previous}  # the previous batch again: what the cache kept
            for q in waiting.values():
                s.sendto(q, ("127.0.0.1", self.port))
                self.counts["upstream"] += 1
            end = time.monotonic() + 2.5
            while waiting and time.monotonic() < end:
                try:
                    data = s.recv(65535)
                except TimeoutError:
                    continue
                if waiting.pop(data[:2], None) is not None:
                    self.check(data, "upstream", None)
            self.counts["unanswered_upstream_queries"] += len(waiting)
            previous = batch
            if seq % 2000 == 0 and not self.alive():
                break
        s.close()

    def main(self) -> dict[str, Any]:
        t0 = time.monotonic()
        ok = False
        for _ in range(100):
            if self.proc.poll() is not None:
                break
            if self.probe():
                ok = True
                break
            time.sleep(0.1)
        if not ok:
            raise SystemExit(f"fuzz: the agent did not start; its log:\n{self.log_path.read_text()}")
        rss0 = rss_kib(self.proc.pid)
        peak = [rss0]
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.5):
                try:
                    peak[0] = max(peak[0], rss_kib(self.proc.pid))
                except OSError:
                    return

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        total = self.args.inputs
        n_up = total * self.args.upstream_share // 100
        n_tcp = total * self.args.tcp_share // 100
        n_udp = total - n_up - n_tcp
        times = {}
        for part, fn, n in (("udp", self.run_udp, n_udp), ("tcp", self.run_tcp, n_tcp),
                            ("upstream", self.run_upstream, n_up)):
            t = time.monotonic()
            fn(n)
            times[part] = round(time.monotonic() - t, 1)
            print(f"fuzz: {part}: {self.counts[part] if part != 'upstream' else self.up.hostile[0]} inputs in "
                  f"{times[part]} s", file=sys.stderr, flush=True)
        alive = self.alive()
        stop.set()
        rss1 = rss_kib(self.proc.pid) if self.proc.poll() is None else 0
        wall = time.monotonic() - t0
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.up.close()
        self.log.close()
        log = self.log_path.read_text(errors="replace")
        tracebacks = len(re.findall(r"^Traceback", log, re.M))
        inputs = self.counts["udp"] + self.counts["tcp"] + self.up.hostile[0]
        report = {
            "inputs": inputs,
            "inputs_udp": self.counts["udp"], "inputs_tcp": self.counts["tcp"],
            "inputs_upstream_replies": self.up.hostile[0], "upstream_queries_sent": self.counts["upstream"],
            "seconds": round(wall, 1), "part_seconds": times,
            "crashes": tracebacks + (0 if alive else 1), "tracebacks": tracebacks, "alive_at_end": alive,
            "exit_code": self.proc.returncode,
            "replies_checked": self.counts["replies"], "bad_replies": self.counts["bad_replies"],
            "probe_failures": self.counts["probe_failures"],
            "unanswered_upstream_queries": self.counts["unanswered_upstream_queries"],
            "rss_kib_before": rss0, "rss_kib_after": rss1, "rss_kib_peak": peak[0],
            "seed": self.args.seed, "bad_examples": self.bad,
            "log_tail": log[-3000:] if tracebacks else "",
        }
        self.tmp.cleanup()
        return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--inputs", type=int, default=1_000_000, help="inputs in all (default 1,000,000)")
    p.add_argument("--seconds", type=float, default=3600.0, help="stop after this long whatever the count")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--tcp-share", type=int, default=15, help="percent of inputs over TCP (default 15)")
    p.add_argument("--upstream-share", type=int, default=20, help="percent that are upstream replies (default 20)")
    p.add_argument("--json", help="write the report here too")
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that the agent is stopped below
    run = Run(args)
    try:
        report = run.main()
    finally:
        if run.proc.poll() is None:  # the harness failed: leave no agent behind
            run.proc.kill()
            run.proc.wait()
        run.up.close()
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text)
    return 0 if report["crashes"] == 0 and report["bad_replies"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
