"""The fault harness of the lab (hack/lab.sh fault, hack/faultrun.py, hack/podload.py, hack/faultdns.py).

These check the harness, not the agent: the switches really break CoreDNS and leave nothing behind, and a
short `fault stop` sequence yields a well-formed report whose counts add up. How many queries the agent
answers while CoreDNS fails is what the harness measures; it changes as serve-stale and friends land, so
no test here asserts it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.netns.labctl import ROOT_ONLY, Lab

pytestmark = [pytest.mark.netns, ROOT_ONLY]

UPSTREAM_SVC = "10.96.0.11"  # kube-dns-upstream: kube-proxy DNATs it to CoreDNS
WEB = "web.default.svc.cluster.local"
OUTCOMES = ("NOERROR", "NXDOMAIN", "SERVFAIL", "REFUSED", "other", "timeout", "error", "unfinished")


def ask_coredns(lab: Lab, *opts: str) -> tuple[str, float]:
    """(dig's status or 'timeout', seconds) for one query from the node to CoreDNS, past the agent."""
    t0 = time.monotonic()
    p = lab.run("node", "dig", "+time=3", "+tries=1", *opts, f"@{UPSTREAM_SVC}", WEB, check=False, timeout=10)
    took = time.monotonic() - t0
    for ln in p.stdout.splitlines():
        if "status:" in ln:
            return ln.split("status:")[1].split(",")[0].strip(), took
    return "timeout", took


def nothing_left(lab: Lab) -> None:
    for pod in ("coredns", "node"):
        tables = lab.out(pod, "nft", "list", "tables")
        assert "nlfault" not in tables, f"{pod}: {tables}"
    assert not (lab.state / "faultdns.pid").exists()
    assert lab.lab("fault", "status").stdout.strip() == "none"


def test_fault_switches_break_coredns_and_clean_up(make_lab) -> None:
    lab = make_lab()
    assert ask_coredns(lab)[0] == "NOERROR"

    lab.lab("fault", "on", "servfail")
    assert ask_coredns(lab)[0] == "SERVFAIL"
    assert ask_coredns(lab, "+tcp")[0] == "SERVFAIL"

    lab.lab("fault", "on", "slow", "1.2")
    status, took = ask_coredns(lab, "+tcp")
    assert status == "NOERROR" and took >= 1.1, (status, took)

    lab.lab("fault", "off")
    status, took = ask_coredns(lab)
    assert status == "NOERROR" and took < 1.0, (status, took)

    lab.lab("fault", "on", "stop")
    status, took = ask_coredns(lab)
    assert status == "timeout" and took >= 2.5, (status, took)
    lab.lab("fault", "off")
    assert ask_coredns(lab)[0] == "NOERROR"

    lab.lab("fault", "on", "loss", "100")
    assert ask_coredns(lab)[0] == "timeout"
    lab.lab("fault", "reset")
    assert ask_coredns(lab)[0] == "NOERROR"
    nothing_left(lab)


def test_fault_stop_sequence_reports_every_phase(make_lab, tmp_path: Path) -> None:
    lab = make_lab()
    lab.start_agent()
    phases = {"warmup": 2.0, "before": 4.0, "fault": 8.0, "after": 4.0}
    rate = 50
    out = tmp_path / "stop.json"
    t_start = time.time()
    p = lab.lab("fault", "stop", "--seconds", "8", "--warmup", "2", "--before", "4", "--after", "4",
                "--rate", str(rate), "--json", str(out), timeout=90)
    assert time.time() - t_start < 45

    # The table: one row per phase and pod, and the agent's counters per phase.
    assert "== fault stop (8 s)" in p.stdout
    for ph in phases:
        assert f"\n{ph}" in p.stdout
    for col in ("answered", "SERVFAIL", "p99 ms", "misses", "stale", "prefetch", "cluster healthy"):
        assert col in p.stdout

    runs = json.loads(out.read_text())["runs"]
    assert [r["kind"] for r in runs] == ["stop"]
    rep = runs[0]
    assert [ph["phase"] for ph in rep["phases"]] == list(phases)
    for ph in rep["phases"]:
        assert ph["seconds"] == phases[ph["phase"]]
        assert set(ph["pods"]) == {"pod-a", "pod-b"}
        for pod, r in ph["pods"].items():
            where = f"{ph['phase']} {pod}"
            # The offered rate holds whatever the answers do: rate x seconds, each sent or counted dropped.
            assert abs(r["offered"] - rate * ph["seconds"]) <= 1, where
            assert r["offered"] == r["sent"] + r["dropped"], where
            assert r["sent"] == sum(r[o] for o in OUTCOMES), where
            assert r["answered"] == r["NOERROR"] + r["NXDOMAIN"], where
            assert r["unfinished"] == 0, where
            assert r["answered_share"] == pytest.approx(r["answered"] / r["sent"], abs=1e-4), where
            assert sum(s for s, _ in r["per_second"]) == r["sent"], where
            assert sum(a for _, a in r["per_second"]) == r["answered"], where
            assert sum(sum(c.values()) for c in r["by_pair"].values()) == r["sent"], where
            assert r["latency_ms"]["answered"]["n"] == r["answered"], where
        agent = ph["agent"]
        for col in ("misses", "stale", "prefetch", "to CoreDNS", "up timeout", "agent SERVFAIL", "CoreDNS got"):
            assert col in agent and (agent[col] is None or agent[col] >= 0), (ph["phase"], col, agent)
        assert isinstance(agent["cluster healthy"], str)
    # Real answers were measured, and the fault really cut CoreDNS off: its log stays still (but for what
    # came in during the few ms between the edge's scrape and the nft rule).
    before = next(ph for ph in rep["phases"] if ph["phase"] == "before")
    assert all(r["answered"] > 0 for r in before["pods"].values()), before["pods"]
    fault = next(ph for ph in rep["phases"] if ph["phase"] == "fault")
    assert fault["agent"]["CoreDNS got"] <= 2, fault["agent"]
    on = next(e["t"] for e in rep["events"] if e["event"] == "fault on stop")
    off = next(e["t"] for e in rep["events"] if e["event"] == "fault off")
    assert fault["start"] <= on < fault["start"] + 1.0
    assert fault["start"] + 8 <= off < fault["start"] + 9.0
    assert len(rep["samples"]) >= 15  # one a second, and one at each boundary

    nothing_left(lab)
    assert lab.run("node", "dig", "+short", "+time=2", "+tries=1", f"@{UPSTREAM_SVC}", WEB).stdout.strip()
