"""The query log: one line per answered query, CoreDNS `log` format or JSON, sampled, off by default.

Nothing of it runs while it is off: the agent binds the plain listeners then (server/udp.py), and the
logging listener (QueryLoggingUDP, below) only when `log.queries` is on, at start.

While it is on, the event loop does as little as it can per answer: sampling (one in `sample`), the rate
cap (`rate` lines a second) and an append of the raw bytes to a bounded queue. A thread of its own turns
them into text and writes them, so a slow reader (a full pipe, a slow disk) never holds a query up: past
`buffer` lines waiting, new lines are dropped and counted (nodelocal_query_log_lines_total{result=
"dropped"}).

CoreDNS's default format (plugin/log's CommonLogFormat, with its `[INFO] ` level prefix):
  {remote}:{port} - {>id} "{type} {class} {name} {proto} {size} {>do} {>bufsize}" {rcode} {>rflags} {rsize}
  {duration}
  [INFO] 10.244.1.5:41311 - 4242 "A IN web.default.svc.cluster.local. udp 58 false 1232" NOERROR
  qr,aa,rd,ra 132 0.000081s
JSON: the same fields by name, one object a line.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import functools
import json
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import IO, Any

import dns.rdataclass
import dns.rdatatype
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from nodelocal import ConfigError, WireError
from nodelocal.config.model import LogConfig
from nodelocal.dns import wire
from nodelocal.dns.names import labels_of_wire, to_text
from nodelocal.server.udp import UDPServer

FLUSH_EVERY = 0.2  # seconds the writer waits for more lines before it writes what it has
# (query bytes, reply bytes, client address, "udp"/"tcp", seconds from receipt to reply)
Item = tuple[bytes, bytes, tuple[Any, ...], str, float]


class QueryLogStats:
    """What the query log did with the answers it was shown."""

    def __init__(self) -> None:
        self.lines = {"written": 0, "dropped": 0, "sampled_out": 0, "rate_limited": 0}
        self.queued = 0


class QueryLogCollector(Collector):
    """nodelocal_query_log_lines_total{result} and nodelocal_query_log_queued."""

    def __init__(self, stats: QueryLogStats) -> None:
        self.stats = stats

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        c = CounterMetricFamily("nodelocal_query_log_lines",
                                "Answers the query log was shown, by what became of them: written, dropped (the "
                                "buffer was full), sampled_out (log.sample), rate_limited (log.rate).",
                                labels=["result"])
        for result, n in self.stats.lines.items():
            c.add_metric([result], n)
        yield c
        yield GaugeMetricFamily("nodelocal_query_log_queued", "Query log lines waiting to be written.",
                                value=self.stats.queued)


def _flags(b2: int, b3: int) -> str:
    """CoreDNS's {>rflags}: the reply's header flags, lower case, comma-separated."""
    out = [name for bit, name in ((b2 & wire.QR, "qr"), (b2 & wire.AA, "aa"), (b2 & wire.TC, "tc"),
                                  (b2 & wire.RD, "rd"), (b3 & wire.RA, "ra"), (b3 & wire.AD, "ad"),
                                  (b3 & wire.CD, "cd")) if bit]
    return ",".join(out) or "-"


_UNUSUAL = re.compile(rb"[^\x21-\x7e]|\\")  # bytes a presentation name writes escaped


def _name_text(wire_name: bytes) -> str:
    """The name as CoreDNS logs it: lower case, fully qualified ('.' for the root). The common name (letters,
    digits, hyphens) the quick way; anything else through names.to_text's escaping."""
    labels = labels_of_wire(wire_name)
    text = b".".join(labels)
    if _UNUSUAL.search(text) is None and text.count(b".") == len(labels) - 1:
        return text.decode("ascii").lower() + "." if labels else "."
    plain = to_text(wire_name)
    return plain if plain == "." else plain + "."


@functools.lru_cache(maxsize=1024)
def _type_text(qtype: int) -> str:
    return dns.rdatatype.to_text(dns.rdatatype.RdataType.make(qtype))  # A, AAAA, TYPE65280


@functools.lru_cache(maxsize=64)
def _class_text(qclass: int) -> str:
    return dns.rdataclass.to_text(dns.rdataclass.RdataClass.make(qclass))


def fields(query: bytes, reply: bytes, addr: tuple[Any, ...], proto: str, seconds: float) -> dict[str, Any]:
    """The log line's fields, read from the bytes (the writer thread calls it, never the event loop)."""
    name, qtype, qclass, do, bufsize = "-", "-", "-", False, 512
    try:
        qend = wire.question_end(query)
        name = _name_text(query[wire.HEADER_LEN : qend - 4])
        qtype = _type_text(query[qend - 4] << 8 | query[qend - 3])
        qclass = _class_text(query[qend - 2] << 8 | query[qend - 1])
        if len(query) > wire.HEADER_LEN + 11 and query[11]:
            opt = wire.parse_opt(query, qend)
            if opt is not None:
                do, bufsize = opt.do, opt.payload
    except (WireError, ValueError, IndexError):
        pass  # a line for a malformed query still says who, when and what came back
    rcode = reply[3] & 0xF if len(reply) >= 4 else 0
    return {
        "remote": str(addr[0]), "port": int(addr[1]), "id": query[0] << 8 | query[1] if len(query) >= 2 else 0,
        "type": qtype, "class": qclass, "name": name, "proto": proto, "size": len(query), "do": do,
        "bufsize": bufsize, "rcode": wire.RCODE_NAMES[rcode],
        "rflags": _flags(reply[2], reply[3]) if len(reply) >= 4 else "-", "rsize": len(reply),
        "duration": seconds,
    }


def duration_text(seconds: float) -> str:
    """Seconds as CoreDNS writes {duration} (Go's shortest decimal of Duration.Seconds(), then "s")."""
    text = f"{seconds:.9f}".rstrip("0")
    return (text + "0" if text.endswith(".") else text) + "s"


def coredns_line(f: dict[str, Any]) -> str:
    """CoreDNS log's default format; an IPv6 client as [addr]:port, as CoreDNS writes {remote}:{port}."""
    remote = f"[{f['remote']}]" if ":" in f["remote"] else f["remote"]
    return (f"[INFO] {remote}:{f['port']} - {f['id']} \"{f['type']} {f['class']} {f['name']} {f['proto']} "
            f"{f['size']} {'true' if f['do'] else 'false'} {f['bufsize']}\" {f['rcode']} {f['rflags']} "
            f"{f['rsize']} {duration_text(f['duration'])}")


def format_line(f: dict[str, Any], fmt: str) -> str:
    """One line in `fmt` (coredns or json)."""
    if fmt == "json":
        return json.dumps({**f, "duration": round(f["duration"], 9)}, separators=(",", ":"))
    return coredns_line(f)


class QueryLog:
    """The bounded queue the listeners feed and the thread that writes it out."""

    def __init__(self, cfg: LogConfig, stats: QueryLogStats | None = None, out: IO[str] | None = None,
                 now: Callable[[], float] = time.monotonic) -> None:
        self.format = cfg.format
        self.sample = cfg.sample
        self.countdown = cfg.sample
        self.rate = cfg.rate
        self.buffer = cfg.buffer
        self.stats = stats if stats is not None else QueryLogStats()
        self.now = now
        self._second = 0
        self._in_second = 0
        self.queue: collections.deque[Item] = collections.deque()
        self.output = cfg.output
        self.out = out
        self._own_file = False
        self._wake = threading.Event()
        self._stop = False
        self._thread: threading.Thread | None = None

    # -- the event loop's side: as little as possible per answer ----------------------------------------

    def record(self, query: bytes, reply: bytes, addr: tuple[Any, ...], proto: str, seconds: float) -> None:
        """One answer sent. Sampled, rate-capped and queued; never blocks, never formats."""
        self.countdown -= 1
        if self.countdown:
            self.stats.lines["sampled_out"] += 1
            return
        self.countdown = self.sample
        if self.rate:
            sec = int(self.now())
            if sec != self._second:
                self._second, self._in_second = sec, 0
            if self._in_second >= self.rate:
                self.stats.lines["rate_limited"] += 1
                return
            self._in_second += 1
        if len(self.queue) >= self.buffer:
            self.stats.lines["dropped"] += 1
            return
        self.queue.append((query, reply, addr, proto, seconds))
        self.stats.queued = len(self.queue)

    # -- the writer thread ------------------------------------------------------------------------------

    def start(self) -> None:
        if self.out is None:
            if self.output == "stdout":
                self.out = sys.stdout
            elif self.output == "stderr":
                self.out = sys.stderr
            else:
                try:
                    self.out = open(self.output, "a", encoding="utf-8", buffering=1 << 16)
                except OSError as e:
                    raise ConfigError("log.output", self.output, f"cannot open: {e.strerror}") from None
                self._own_file = True
        self._thread = threading.Thread(target=self._run, name="query-log", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            self._wake.wait(FLUSH_EVERY)
            self._wake.clear()
            self.drain()

    def drain(self) -> int:
        """Write every queued line (the writer thread; tests call it directly). The number written."""
        out = self.out
        assert out is not None
        lines = []
        queue = self.queue
        while queue:
            try:
                q, r, addr, proto, seconds = queue.popleft()
            except IndexError:
                break
            lines.append(format_line(fields(q, r, addr, proto, seconds), self.format))
        self.stats.queued = len(queue)
        if lines:
            with contextlib.suppress(OSError, ValueError):  # a closed or broken output loses lines, not the agent
                out.write("\n".join(lines) + "\n")
                out.flush()
            self.stats.lines["written"] += len(lines)
        return len(lines)

    def close(self) -> None:
        """Write what is queued and stop the thread."""
        self._stop = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(5)
        if self.out is not None:
            self.drain()
            if self._own_file:
                self.out.close()


# The query a logging listener is handling: set by its datagram_received and copied into the task of a
# query that goes to the slow path (asyncio copies the context when it creates the task), so the reply
# sent later, from that task, is logged with its own query and receipt time.
_current: contextvars.ContextVar[tuple[bytes, float]] = contextvars.ContextVar("nodelocal_query")


class _LoggingTransport:
    """The listener's transport, with every reply sent through it shown to the query log."""

    def __init__(self, transport: asyncio.DatagramTransport, qlog: QueryLog) -> None:
        self.transport = transport
        self.qlog = qlog

    def sendto(self, data: bytes, addr: Any = None) -> None:
        self.transport.sendto(data, addr)
        cur = _current.get(None)
        if cur is not None:
            self.qlog.record(cur[0], data, addr, "udp", time.perf_counter() - cur[1])

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


class QueryLoggingUDP(UDPServer):
    """The UDP listener with the query log: bound instead of UDPServer only when the log is on, so that the
    plain hot path carries no check for it."""

    def __init__(self, *args: Any, qlog: QueryLog, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.qlog = qlog

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.transport = _LoggingTransport(self.transport, self.qlog)  # type: ignore[arg-type,assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        token = _current.set((data, time.perf_counter()))
        try:
            super().datagram_received(data, addr)
        finally:
            _current.reset(token)
