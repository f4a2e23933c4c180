"""`nodelocal cache dump|flush` and the control socket against a running agent on loopback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from nodelocal.cli import main
from nodelocal.cli.control import one
from tests.fakedns import FakeDNS
from tests.integration.conftest import upstreams

WEB = "web.default.svc.cluster.local"


@pytest.fixture
def ctl_agent(cluster: FakeDNS, host: FakeDNS, make_agent: Any, tmp_path: Path) -> Any:
    sock = tmp_path / "run" / "control.sock"
    a = make_agent({**upstreams(cluster, host, try_timeout=0.5), "control": {"socket": str(sock)}})
    a.sock = str(sock)
    return a


def test_dump_shows_what_was_cached(ctl_agent: Any, capsys: pytest.CaptureFixture[str]) -> None:
    ctl_agent.query(WEB)
    ctl_agent.query("example.test", "A")
    ctl_agent.query("nope.cluster.local", "A")  # NXDOMAIN with an SOA: a denial entry
    assert main(["cache", "dump", "--socket", ctl_agent.sock]) == 0
    out = capsys.readouterr().out
    assert f"{WEB} A: NOERROR, success, zone cluster.local, " in out
    assert "example.test A: NOERROR, success, zone ., " in out
    assert "nope.cluster.local A: NXDOMAIN, denial, zone cluster.local, " in out
    assert "    (authority) cluster.local. " in out
    assert "    web.default.svc.cluster.local. " in out and " IN A 10.0.0.10" in out
    assert out.rstrip().endswith("3 entries in the cache")
    assert main(["cache", "dump", "--socket", ctl_agent.sock, "Example.test"]) == 0
    one_name = capsys.readouterr().out
    assert "example.test A" in one_name and WEB not in one_name
    assert one_name.rstrip().endswith("1 entry for Example.test")


def test_flush_name_then_the_next_query_goes_upstream(ctl_agent: Any, cluster: FakeDNS,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    ctl_agent.query("example.test", "A")
    ctl_agent.query("example.test", "A")
    asked = cluster.count("example.test")
    assert asked == 1  # the second was a hit (UDP hot path and its reply memo)
    assert main(["cache", "flush", "--socket", ctl_agent.sock, "example.test"]) == 0
    assert "flushed 1 entry (name example.test); 0 left in the cache" in capsys.readouterr().out
    ctl_agent.query("example.test", "A")
    assert cluster.count("example.test") == asked + 1


def test_flush_zone_and_all(ctl_agent: Any, capsys: pytest.CaptureFixture[str]) -> None:
    for name in (WEB, "nope.default.svc.cluster.local", "example.test"):
        ctl_agent.query(name)
    assert main(["cache", "flush", "--socket", ctl_agent.sock, "--zone", "svc.cluster.local"]) == 0
    assert "flushed 2 entries (zone svc.cluster.local); 1 left" in capsys.readouterr().out
    assert main(["cache", "flush", "--socket", ctl_agent.sock, "--all"]) == 0
    assert "flushed 1 entry (everything); 0 left" in capsys.readouterr().out


def test_status_and_route(ctl_agent: Any, cluster: FakeDNS) -> None:
    ctl_agent.query(WEB)
    st = one(ctl_agent.sock, {"op": "status"})["status"]
    assert st["pid"] > 0 and st["version"] and st["uptime"] >= 0
    assert {"proto": "udp", "address": f"127.0.0.1:{ctl_agent.port}"} in st["listeners"]
    assert {"proto": "control", "address": ctl_agent.sock} in st["listeners"]
    assert st["ready"]["code"] == 200
    assert st["zones"]["cluster.local"] == ["cluster"]
    assert [u["server"] for u in st["upstreams"] if u["group"] == "cluster"] == [f"127.0.0.1:{cluster.port}"]
    r = one(ctl_agent.sock, {"op": "route", "name": WEB.upper()})["route"]
    assert r["zone"] == "cluster.local" and [g["group"] for g in r["groups"]] == ["cluster"]
    assert r["entries"][0]["answer"][0].endswith("IN A 10.0.0.10")
    other = one(ctl_agent.sock, {"op": "route", "name": "www.example.test"})["route"]  # not cached
    assert other["zone"] == "." and [g["group"] for g in other["groups"]] == ["cluster", "host"]
    assert other["entries"] == []


def test_dump_json_is_one_object_per_entry(ctl_agent: Any, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    ctl_agent.query(WEB)
    ctl_agent.query(WEB, "A", want_dnssec=True)  # the DO variant is its own entry
    assert main(["cache", "dump", "--socket", ctl_agent.sock, "--json", WEB]) == 0
    rows = [json.loads(ln) for ln in capsys.readouterr().out.splitlines()]
    assert sorted(tuple(r["flags"]) for r in rows) == [("rd",), ("rd", "do")]
    assert all(r["zone"] == "cluster.local" and r["rcode"] == "NOERROR" and not r["stale"] for r in rows)


def test_no_agent_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cache", "dump", "--socket", str(tmp_path / "control.sock")]) == 1
    assert "no agent is running here" in capsys.readouterr().err
