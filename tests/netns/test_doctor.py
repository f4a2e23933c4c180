"""nodelocal doctor against a lab node (hack/lab.sh): a healthy node passes, and each broken setup is found.

The breakages, one after the other on one lab: the agent's conntrack-bypass rules flushed, CoreDNS silent
(`hack/lab.sh fault on stop`), a loop (the node's resolv.conf names the agent and the host group reads it),
and port 53 held by another DNS server (dnsmasq on the wildcard address) while no agent runs. Each must
exit 1 with the right verdict, and only the expected problems.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.netns.labctl import REPO, ROOT_ONLY, Lab, wait_until

pytestmark = [pytest.mark.netns, ROOT_ONLY]

NODELOCAL = str(REPO / ".venv" / "bin" / "nodelocal")
WEB = "web.default.svc.cluster.local"


def doctor(lab: Lab, *args: str) -> tuple[int, list[dict[str, Any]]]:
    """Run doctor in the lab's node, as root on a node runs it; (exit code, findings)."""
    p = lab.run("node", NODELOCAL, "doctor", "--socket", str(lab.state / "control.sock"), "--json", *args,
                check=False, timeout=90)
    assert p.stdout, p.stderr
    return p.returncode, json.loads(p.stdout)["findings"]


def problems(findings: list[dict[str, Any]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for f in findings:
        if f["status"] == "PROBLEM":
            out.setdefault(f["area"], []).append(f["summary"])
    return out


def test_doctor_passes_a_healthy_node_and_finds_each_breakage(make_lab: Any) -> None:
    lab: Lab = make_lab()
    lab.start_agent()
    assert lab.dig("pod-a", "169.254.20.10", WEB)

    # Healthy: exit 0, the agent, /ready, rules and every upstream found as they are.
    rc, found = doctor(lab, WEB)
    assert rc == 0 and problems(found) == {}, found
    summaries = "\n".join(f["summary"] for f in found if f["status"] == "ok")
    assert f"config from yaml {lab.state}/agent.yaml" in summaries
    assert "conntrack-bypass rules in place (iptables-nft backend)" in summaries
    assert "mode iptables" in summaries
    assert re.search(r"cluster 10\.96\.0\.11:53 \(tcp\): answers in [\d.]+ ms", summaries)
    assert f"{WEB}: zone cluster.local; a miss goes to cluster [10.96.0.11:53]" in summaries
    assert re.search(r"cached A NOERROR \(success\), \d+s of \d+s left", summaries)

    # 1. Rules removed (a firewall reload that flushes the raw table): found, while DNS still answers.
    lab.run("node", "iptables-nft", "-t", "raw", "-F")
    rc, found = doctor(lab)
    assert rc == 1 and list(problems(found)) == ["rules"], problems(found)
    assert "incomplete" in problems(found)["rules"][0]
    lab.stop_agent()
    lab.start_agent()  # the rules back at once (the sync would put them back within sync_interval)
    assert doctor(lab)[0] == 0

    # 2. Upstream dead: CoreDNS drops every query.
    lab.lab("fault", "on", "stop")
    try:
        rc, found = doctor(lab)
        assert rc == 1 and "upstreams" in problems(found), problems(found)
        assert any("cluster 10.96.0.11:53 (tcp): no answer" in s for s in problems(found)["upstreams"])
    finally:
        lab.lab("fault", "off")

    # 3. A loop: the node's resolv.conf names the agent and the host group is read from it.
    resolv = Path(f"/etc/netns/{lab.ns('node')}/resolv.conf")
    config = lab.state / "agent.yaml"
    saved_resolv, saved_config = resolv.read_text(), config.read_text()
    try:
        resolv.write_text(re.sub(r"(?m)^nameserver .*$", "nameserver 169.254.20.10", saved_resolv))
        config.write_text(re.sub(r"(?m)^  host: \{servers: .*$", "  host: {servers: []}", saved_config))
        lab.stop_agent()
        lab.start_agent()
        rc, found = doctor(lab)
        assert rc == 1 and {"loop", "resolv.conf"} <= set(problems(found)), problems(found)
        assert "names the agent (169.254.20.10)" in problems(found)["resolv.conf"][0]
    finally:
        resolv.write_text(saved_resolv)
        config.write_text(saved_config)
        lab.stop_agent()

    # 4. Port 53 taken by another DNS server while the agent is down.
    pidfile = lab.state / "squatter.pid"
    lab.run("node", "dnsmasq", "--conf-file=/dev/null", "--no-resolv", "--no-hosts", "--user=root",
            f"--pid-file={pidfile}", "--port=53")
    try:
        assert wait_until(pidfile.exists, 5)
        rc, found = doctor(lab, "--config", str(config))
        assert rc == 1, found
        got = problems(found)
        assert "agent" in got and "port 53" in got, got
        assert re.match(r"dnsmasq \(pid \d+\) holds .*udp 0\.0\.0\.0:53", got["port 53"][0]), got["port 53"]
        assert "no agent is running here" in got["agent"][0]
    finally:
        subprocess.run(["kill", pidfile.read_text().strip()], check=False)

    # Back to healthy.
    lab.start_agent()
    assert doctor(lab)[0] == 0
