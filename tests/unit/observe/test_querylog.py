"""observe/querylog.py: CoreDNS log's default format and JSON, sampling, the rate cap, the bounded buffer."""

from __future__ import annotations

import io
import json

import dns.edns
import dns.flags
import dns.message
import dns.rcode

from nodelocal.config.model import LogConfig
from nodelocal.observe.querylog import QueryLog, duration_text, fields, format_line


def query_reply(name: str = "web.default.svc.cluster.local", rdtype: str = "A", payload: int | None = None,
                do: bool = False, rcode: int = dns.rcode.NOERROR) -> tuple[bytes, bytes]:
    q = dns.message.make_query(name, rdtype, use_edns=0 if payload else False, payload=payload or 1232,
                               want_dnssec=do)
    q.id = 4242
    r = dns.message.make_response(q)
    r.flags |= dns.flags.AA | dns.flags.RA
    r.set_rcode(rcode)
    return q.to_wire(), r.to_wire()


def test_the_coredns_default_format() -> None:
    q, r = query_reply(payload=1232)
    line = format_line(fields(q, r, ("10.244.1.5", 41311), "udp", 0.000081), "coredns")
    assert line == (f'[INFO] 10.244.1.5:41311 - 4242 "A IN web.default.svc.cluster.local. udp {len(q)} false 1232" '
                    f"NOERROR qr,aa,rd,ra {len(r)} 0.000081s")
    q, r = query_reply("Nope.Example", "AAAA", rcode=dns.rcode.NXDOMAIN)  # no EDNS: bufsize 512; name lowercased
    line = format_line(fields(q, r, ("fd00::5", 53000, 0, 0), "tcp", 1.5), "coredns")
    assert line == (f'[INFO] [fd00::5]:53000 - 4242 "AAAA IN nope.example. tcp {len(q)} false 512" NXDOMAIN '
                    f"qr,aa,rd,ra {len(r)} 1.5s")
    q, r = query_reply(payload=4096, do=True)
    assert '" udp ' not in format_line(fields(q, r, ("10.0.0.1", 1), "udp", 0.0), "coredns")
    assert f"udp {len(q)} true 4096" in format_line(fields(q, r, ("10.0.0.1", 1), "udp", 0.0), "coredns")
    assert duration_text(0.25) == "0.25s" and duration_text(2.0) == "2.0s" and duration_text(1e-9) == "0.000000001s"


def test_json_lines_and_a_malformed_query_still_logged() -> None:
    q, r = query_reply(payload=1232)
    doc = json.loads(format_line(fields(q, r, ("10.0.0.1", 5353), "udp", 0.001), "json"))
    assert doc == {"remote": "10.0.0.1", "port": 5353, "id": 4242, "type": "A", "class": "IN",
                   "name": "web.default.svc.cluster.local.", "proto": "udp", "size": len(q), "do": False,
                   "bufsize": 1232, "rcode": "NOERROR", "rflags": "qr,aa,rd,ra", "rsize": len(r), "duration": 0.001}
    junk = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x05ab"  # a name cut short
    f = fields(junk, b"\x12\x34\x81\x01" + b"\x00" * 8, ("10.0.0.2", 9), "udp", 0.0)
    assert f["name"] == "-" and f["rcode"] == "FORMERR" and f["id"] == 0x1234


def cfg(**kw: object) -> LogConfig:
    return LogConfig(queries=True, **kw)  # type: ignore[arg-type]


def test_sampling_one_in_n_and_the_counts() -> None:
    out = io.StringIO()
    qlog = QueryLog(cfg(sample=10), out=out)
    q, r = query_reply()
    for _ in range(100):
        qlog.record(q, r, ("10.0.0.1", 1), "udp", 0.0)
    assert qlog.drain() == 10 and len(out.getvalue().splitlines()) == 10
    assert qlog.stats.lines == {"written": 10, "dropped": 0, "sampled_out": 90, "rate_limited": 0}


def test_rate_cap_per_second() -> None:
    clock = [100.0]
    qlog = QueryLog(cfg(rate=5), out=io.StringIO(), now=lambda: clock[0])
    q, r = query_reply()
    for _ in range(20):
        qlog.record(q, r, ("10.0.0.1", 1), "udp", 0.0)
    clock[0] += 1.0
    for _ in range(3):
        qlog.record(q, r, ("10.0.0.1", 1), "udp", 0.0)
    assert len(qlog.queue) == 8 and qlog.stats.lines["rate_limited"] == 15


def test_a_full_buffer_drops_and_counts_never_blocks() -> None:
    qlog = QueryLog(cfg(buffer=50), out=io.StringIO())
    q, r = query_reply()
    for _ in range(1000):  # nobody writes meanwhile (a stuck reader)
        qlog.record(q, r, ("10.0.0.1", 1), "udp", 0.0)
    assert len(qlog.queue) == 50 and qlog.stats.queued == 50 and qlog.stats.lines["dropped"] == 950
    assert qlog.drain() == 50 and qlog.stats.queued == 0


def test_the_writer_thread_writes_and_close_flushes(tmp_path: object) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "queries.log"
    qlog = QueryLog(cfg(output=str(path)))
    qlog.start()
    q, r = query_reply()
    for _ in range(3):
        qlog.record(q, r, ("10.0.0.1", 1), "udp", 0.0)
    qlog.close()
    assert len(path.read_text().splitlines()) == 3 and qlog.stats.lines["written"] == 3


def test_names_as_coredns_logs_them() -> None:
    from nodelocal.dns.names import to_wire
    from nodelocal.observe.querylog import _name_text

    assert _name_text(b"\x00") == "."
    assert _name_text(to_wire("Web.Default.SVC.cluster.local")) == "web.default.svc.cluster.local."
    assert _name_text(b"\x03a.b\x01c\x00") == "a\\.b.c."  # a dot inside a label, escaped
    assert _name_text(b"\x03a b\x00") == "a\\032b."  # a space, as \\DDD
