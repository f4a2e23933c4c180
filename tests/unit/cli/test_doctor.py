"""nodelocal doctor: the verdicts drawn from the facts (pure), and the readers of /proc/net and the kubelet config."""

from __future__ import annotations

import copy
import io
import socket
from pathlib import Path
from typing import Any

import pytest

from nodelocal.cli import doctor
from nodelocal.cli.doctor import NOTE, PROBLEM, SKIP, WARN, Facts, Finding, judge

STATUS: dict[str, Any] = {
    "version": "0.1.0", "pid": 4242, "uptime": 192.0, "config": {"kind": "yaml", "path": "/etc/nodelocal/c.yaml"},
    "listeners": [{"proto": p, "address": f"{ip}:53"} for ip in ("169.254.20.10", "10.96.0.10") for p in ("udp", "tcp")]
    + [{"proto": "http", "address": "169.254.20.10:8080"},
       {"proto": "control", "address": "/run/nodelocal/control.sock"}],
    "listen": {"localip": ["169.254.20.10", "10.96.0.10"], "port": 53}, "stopping": False, "leaving": "",
    "setup": True, "cluster_domain": "cluster.local", "health_addr": "169.254.20.10:8080",
    "groups": {"cluster": {"servers": ["10.96.0.11"], "transport": "tcp"},
               "host": {"servers": ["10.250.0.53"], "transport": "udp"}},
    "upstreams": [{"group": "cluster", "server": "10.96.0.11:53", "down": False, "fails": 0, "down_for": 0.0},
                  {"group": "host", "server": "10.250.0.53:53", "down": False, "fails": 0, "down_for": 0.0}],
    "loops": {},
    "netsetup": {"interface": "nodelocaldns", "rules_backend": "auto", "backend_in_use": "iptables-nft",
                 "rules_in": True, "failopen": {"10.96.0.10": "kube-proxy", "169.254.20.10": "dnat-endpoints"}},
}


def healthy() -> Facts:
    st = copy.deepcopy(STATUS)
    return Facts(
        socket="/run/nodelocal/control.sock", status=st, localips=list(st["listen"]["localip"]), port=53,
        setup=True, interface="nodelocaldns",
        groups={g: {"servers": v["servers"], "transport": v["transport"]} for g, v in st["groups"].items()},
        health_addr="169.254.20.10:8080", ready=(200, "ready"),
        addresses={"169.254.20.10": ["nodelocaldns"], "10.96.0.10": ["nodelocaldns"], "10.0.0.5": ["eth0"]},
        links=["lo", "eth0", "nodelocaldns"],
        port_holders=[{"proto": p, "ip": ip, "port": 53, "pid": 4242, "comm": "nodelocal"}
                      for ip in ("169.254.20.10", "10.96.0.10") for p in ("udp", "tcp")],
        rules={"nft": False, "iptables-nft": True, "iptables-legacy": False},
        kube_proxy_mode="iptables", kube_proxy_mode_why="its KUBE-* chains are in iptables-nft",
        kube_proxy_backend="iptables-nft", kube_proxy_backend_why="kube-proxy's chains are there",
        resolv_conf=["10.250.0.53"], kubelet_dns=["169.254.20.10"], kubelet_path="/var/lib/kubelet/config.yaml",
        probes=[{"group": "cluster", "server": "10.96.0.11:53", "transport": "tcp", "asked": "cluster.local SOA",
                 "ok": True, "ms": 1.2, "detail": "answer"},
                {"group": "host", "server": "10.250.0.53:53", "transport": "udp", "asked": ". SOA",
                 "ok": True, "ms": 0.8, "detail": "answer"}],
    )


def problems(f: Facts) -> list[Finding]:
    return [x for x in judge(f) if x.status == PROBLEM]


def test_a_healthy_node_has_no_problem() -> None:
    found = judge(healthy())
    assert [x for x in found if x.status in (PROBLEM, WARN, SKIP)] == []
    assert found[0].summary.startswith("nodelocal 0.1.0, pid 4242, up 3m12s, config from yaml /etc/nodelocal/c.yaml")
    out = io.StringIO()
    doctor.render(healthy(), found, out)
    assert "verdict: no problem found" in out.getvalue()


def test_no_agent_is_a_problem_and_the_rest_still_runs() -> None:
    f = healthy()
    f.status, f.status_error, f.config_from = None, "no agent is running here: x does not exist", "--config c.yaml"
    f.ready, f.ready_error = None, "nothing answers"
    f.port_holders = []
    found = judge(f)
    agent = next(x for x in found if x.area == "agent")
    assert agent.status == PROBLEM and "(the checks below use --config c.yaml)" in agent.summary
    assert next(x for x in found if x.area == "ready").status == SKIP
    rules = next(x for x in found if x.area == "rules")
    assert rules.status == NOTE and "fail open" in rules.summary


def test_permission_denied_is_not_checked_rather_than_a_problem() -> None:
    f = healthy()
    f.status, f.status_error = None, "permission denied on /run/nodelocal/control.sock: ..."
    agent = next(x for x in judge(f) if x.area == "agent")
    assert agent.status == SKIP and agent.fix == "run doctor as root on the node"


def test_not_ready_is_explained_with_the_agents_reason() -> None:
    f = healthy()
    f.ready = (503, "every server of group cluster is down and the cache is empty")
    (p,) = problems(f)
    assert p.area == "ready" and "every server of group cluster is down" in p.summary
    assert "kube-dns-upstream" in p.fix
    f.ready = (503, "shutting down")
    assert "stopping" in problems(f)[0].fix


def test_rules_removed_is_a_problem_while_the_agent_runs() -> None:
    f = healthy()
    f.rules["iptables-nft"] = False
    (p,) = problems(f)
    assert p.area == "rules" and "not in iptables-nft" in p.summary
    f = healthy()
    f.rules["iptables-nft"] = False
    f.rules_missing["iptables-nft"] = "missing: ipv4 raw PREROUTING -> NODELOCAL-PREROUTING"
    (p,) = problems(f)
    assert "incomplete (missing: ipv4 raw PREROUTING" in p.summary


def test_rules_left_in_another_backend_and_no_fail_open_path() -> None:
    f = healthy()
    f.rules["iptables-legacy"] = True
    f.status["netsetup"]["failopen"]["169.254.20.10"] = "none"  # type: ignore[index]
    found = judge(f)
    assert any(x.status == WARN and "also in iptables-legacy" in x.summary for x in found)
    (p,) = problems(f)
    assert p.area == "fail-open" and "169.254.20.10 has no path to CoreDNS" in p.summary


def test_backend_mismatch_with_kube_proxy() -> None:
    f = healthy()
    f.kube_proxy_backend = "iptables-legacy"
    (p,) = problems(f)
    assert p.area == "kube-proxy" and "mixing backends" in p.summary


def test_a_dead_upstream_is_a_problem_and_the_agents_view_is_shown() -> None:
    f = healthy()
    f.probes[0].update(ok=False, ms=None, detail="Timeout while contacting DNS servers")
    f.status["upstreams"][0].update(down=True, down_for=75.0)  # type: ignore[index]
    (p,) = problems(f)
    assert p.area == "upstreams" and "cluster 10.96.0.11:53 (tcp): no answer (Timeout" in p.summary
    assert "endpointslices" in p.fix
    f = healthy()
    f.status["upstreams"][1].update(down=True, down_for=75.0)  # type: ignore[index]
    assert any(x.status == WARN and "the agent has it down for 1m15s" in x.summary for x in judge(f))


def test_a_group_with_no_servers() -> None:
    f = healthy()
    f.groups["cluster"]["servers"] = []
    f.probes = f.probes[1:]
    (p,) = problems(f)
    assert p.summary == "group cluster has no servers"


def test_resolv_conf_naming_the_agent_loops_only_without_other_host_servers() -> None:
    f = healthy()
    f.resolv_conf = ["169.254.20.10"]
    assert problems(f) == []  # the host group has its own servers
    f.groups["host"]["servers"] = []
    f.status["loops"] = {"169.254.20.10:53": "host"}  # type: ignore[index]
    areas = sorted(p.area for p in problems(f))
    assert areas == ["loop", "resolv.conf"]  # an empty host group is a warning, the cluster group's a problem
    assert any("loop back to the agent" in p.summary for p in problems(f))


def test_kubelet_cluster_dns_loop() -> None:
    f = healthy()
    f.groups["cluster"]["servers"] = ["10.96.0.10"]  # kube-dns itself, which the agent binds in iptables mode
    f.kubelet_dns = ["10.96.0.10"]
    assert any(p.area == "kubelet" and "a loop" in p.summary for p in problems(f))
    f = healthy()
    f.kubelet_dns = None
    f.kubelet_error = "no kubelet config at /var/lib/kubelet/config.yaml"
    assert any(x.area == "kubelet" and x.status == SKIP for x in judge(f))


def test_port_53_held_by_another_process() -> None:
    f = healthy()
    assert f.port_holders is not None
    f.port_holders.append({"proto": "udp", "ip": "0.0.0.0", "port": 53, "pid": 77, "comm": "dnsmasq"})
    f.port_holders.append({"proto": "udp", "ip": "127.0.0.53", "port": 53, "pid": 88, "comm": "systemd-resolve"})
    found = judge(f)
    (p,) = problems(f)
    assert p.area == "port 53" and p.summary.startswith("dnsmasq (pid 77) holds udp 0.0.0.0:53")
    assert any(x.status == NOTE and "systemd-resolved's stub" in x.summary for x in found)


def test_local_ip_missing_or_not_bound() -> None:
    f = healthy()
    assert f.addresses is not None
    del f.addresses["10.96.0.10"]
    (p,) = problems(f)
    assert p.summary == "10.96.0.10: on no interface, udp+tcp :53 bound by the agent"  # removed after the bind
    f = healthy()
    f.status["listeners"] = [x for x in f.status["listeners"] if x["address"] != "10.96.0.10:53"]  # type: ignore[index]
    (p,) = problems(f)
    assert "10.96.0.10: on nodelocaldns, not bound by the agent" == p.summary


def test_name_routing_cached_and_answered() -> None:
    f = healthy()
    f.name = "web.default.svc.cluster.local"
    f.route = {"name": f.name, "zone": "cluster.local",
               "groups": [{"group": "cluster", "servers": [{"server": "10.96.0.11:53", "down": False}]}],
               "entries": [{"type": "A", "rcode": "NOERROR", "kind": "success", "stale": False, "remaining": 12,
                            "ttl": 30, "stale_for": 0, "answer": ["web. 12 IN A 10.0.0.1"], "authority": []}]}
    f.answer = {"server": "169.254.20.10:53", "ok": True, "ms": 0.4, "rcode": "NOERROR",
                "answer": ["web. 12 IN A 10.0.0.1"]}
    lines = [x.summary for x in judge(f) if x.area == "name"]
    assert lines == [f"{f.name}: zone cluster.local; a miss goes to cluster [10.96.0.11:53]",
                     "cached A NOERROR (success), 12s of 30s left: web. 12 IN A 10.0.0.1",
                     "the agent at 169.254.20.10:53 answers NOERROR in 0.4 ms: web. 12 IN A 10.0.0.1"]
    f.answer = {"server": "169.254.20.10:53", "ok": True, "ms": 5000.0, "rcode": "SERVFAIL", "answer": []}
    assert [p.area for p in problems(f)] == ["name"]


def test_exit_code_and_json(monkeypatch: pytest.MonkeyPatch) -> None:
    f = healthy()
    monkeypatch.setattr(doctor, "gather", lambda *a, **k: f)
    out = io.StringIO()
    assert doctor.run("/x", "", True, None, "", out) == 0
    assert '"problems": 0' in out.getvalue()
    f.ready = (503, "shutting down")
    assert doctor.run("/x", "", False, None, "", io.StringIO()) == 1


def test_proc_net_parser_and_owner(tmp_path: Path) -> None:
    udp = ("  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
           "   0: 0A14FEA9:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 1234 2\n"
           "   1: 0100007F:0036 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 999 2\n")
    assert doctor.parse_proc_net(udp, "udp", 53) == [("udp", "169.254.20.10", 53, 1234)]
    tcp6 = ("  sl  local_address                         remote_address                        st ...\n"
            "   0: 00000000000000000000000000000000:0035 00000000000000000000000000000000:0000 0A 00000000:00000000 "
            "00:00000000 00000000     0        0 55 1\n"
            "   1: 00000000000000000000000000000000:0035 00000000000000000000000000000000:0000 01 00000000:00000000 "
            "00:00000000 00000000     0        0 56 1\n")
    assert doctor.parse_proc_net(tcp6, "tcp6", 53) == [("tcp", "::", 53, 55)]
    # A real socket of this process is found with its owner.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        held = doctor.port_holders(port)
    assert any(h["ip"] == "127.0.0.1" and h["comm"] for h in held)


def test_resolv_and_kubelet_readers(tmp_path: Path) -> None:
    rc = tmp_path / "resolv.conf"
    rc.write_text("# x\nsearch a\nnameserver 169.254.20.10\nnameserver fe80::1%eth0\n")
    assert doctor.read_resolv_conf(str(rc)) == ["169.254.20.10", "fe80::1"]
    assert doctor.read_kubelet_dns("kind: KubeletConfiguration\nclusterDNS:\n- 169.254.20.10\n") == ["169.254.20.10"]
    assert doctor.read_kubelet_dns("kind: KubeletConfiguration\n") == []
