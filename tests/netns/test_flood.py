"""The flood run of the lab (hack/lab.sh flood, hack/floodrun.py) and the access list's default in a real
node: the allowed ranges come from the node's addresses and routes (pods answered, no config), a query from
an address only reachable through the default route is REFUSED and counted, and a short flood of unique
names from one pod leaves the other pod answered. Nothing of the outside check is left behind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.netns.labctl import ROOT_ONLY, Lab

pytestmark = [pytest.mark.netns, ROOT_ONLY]


def test_short_flood_and_an_outside_address_refused(make_lab, tmp_path: Path) -> None:
    lab: Lab = make_lab()
    lab.start_agent()
    log = (lab.state / "agent.log").read_text()
    # The pod ranges the lab's routes carry, found without any acl config.
    assert "answering clients from" in log and "10.244.1.0/24" in log and "10.244.2.0/23" in log
    routes = {ns: lab.out(ns, "ip", "-4", "route") for ns in ("node", "outside")}
    out = tmp_path / "flood.json"
    p = lab.lab("flood", "--seconds", "5", "--rate", "300", "--normal-rate", "50", "--before", "2", "--after", "2",
                "--json", str(out), timeout=90)
    rep = json.loads(out.read_text())
    assert [ph["phase"] for ph in rep["phases"]] == ["before", "flood", "after"]
    flood = rep["phases"][1]
    assert flood["pods"]["pod-a"]["offered"] == pytest.approx(300 * 5, abs=1)
    for ph in rep["phases"]:
        b = ph["pods"]["pod-b"]
        assert b["sent"] > 0 and b["REFUSED"] == 0, ph  # the pods' own addresses are allowed
        assert b["answered_share"] >= 0.95, ph
    assert flood["agent"]["misses"] >= 1000  # the flood's names really went past the cache
    assert rep["rss_kib"] and rep["rss_mib"]["peak"] >= rep["rss_mib"]["start"] > 0
    o = rep["outside"]
    assert o["status"] == "REFUSED" and o["acl_counted"] == 1, o
    assert "REFUSED" in p.stdout and "agent RSS MiB" in p.stdout
    # The outside check's address and routes are gone again.
    assert "198.51.100.7" not in lab.out("outside", "ip", "addr")
    assert {ns: lab.out(ns, "ip", "-4", "route") for ns in ("node", "outside")} == routes
