"""`nodelocal doctor [NAME]`: why DNS on this node does what it does, as an SRE debugging a ticket wants it.

Two halves. gather() looks, read-only, at everything on the node's DNS path: the running agent (through its
control socket: version, pid, uptime, config source, listeners, upstream health), its /ready, the local IPs
and the interface holding them, the conntrack-bypass rules (netsetup's own readers: `nft list table`,
`iptables-save`) and their fail-open paths, kube-proxy's mode and rules backend, /etc/resolv.conf, the
kubelet's clusterDNS, who holds port 53 (/proc/net and /proc/PID/fd), a live probe of every upstream (c-ares
via aiodns, a client independent of the agent's forwarder) and, for a NAME, its zone routing and answer.
judge() turns those facts into one line per area (ok, note, warn, PROBLEM, not checked) and, for each
problem, what to do. It never changes anything. The exit code is 1 when a problem was found, else 0.

/ready is the agent's to define (agent/health.py): doctor reads it and explains the answer.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

from nodelocal import ControlError, NodelocalError
from nodelocal.config import Config, format_hostport, parse_hostport
from nodelocal.netsetup.plan import PATH_NONE
from nodelocal.netsetup.runner import CommandRunner, Runner

OK, NOTE, WARN, PROBLEM, SKIP = "ok", "note", "warn", "PROBLEM", "not checked"
KUBELET_CONFIGS = ("/var/lib/kubelet/config.yaml", "/etc/kubernetes/kubelet/config.yaml",
                   "/etc/kubernetes/kubelet-config.yaml")
KUBE_PROXY_MODE_URL = "http://127.0.0.1:10249/proxyMode"  # kube-proxy's metrics port says its mode
READY_MEANS = ("serves queries now: listeners bound and answering, the cluster DNS group reachable or stale "
               "answers held; not ready once a shutdown or handover has begun")


@dataclass
class Finding:
    """One line of the report: an area, its status, what was seen, and for a problem what to do."""

    area: str
    status: str
    summary: str
    fix: str = ""


@dataclass
class Facts:
    """Everything doctor looked at. None means: could not be looked at (the matching *_error says why)."""

    root: bool = True
    socket: str = ""
    status: dict[str, Any] | None = None
    status_error: str = ""
    config_from: str = ""  # where the local view of the config came from when the agent did not answer
    localips: list[str] = field(default_factory=list)
    port: int = 53
    setup: bool = True
    interface: str = "nodelocaldns"
    groups: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> servers, transport
    cluster_domain: str = "cluster.local"
    health_addr: str = ""
    ready: tuple[int, str] | None = None
    ready_error: str = ""
    addresses: dict[str, list[str]] | None = None  # local IP -> links holding it
    links: list[str] = field(default_factory=list)
    addresses_error: str = ""
    port_holders: list[dict[str, Any]] | None = None  # {proto, ip, port, pid, comm}
    port_error: str = ""
    rules: dict[str, bool | None] = field(default_factory=dict)  # backend -> our rules complete (None: unreadable)
    rules_missing: dict[str, str] = field(default_factory=dict)  # backend -> what of ours is missing there
    rules_errors: dict[str, str] = field(default_factory=dict)
    kube_proxy_mode: str | None = None
    kube_proxy_mode_why: str = ""
    kube_proxy_backend: str | None = None
    kube_proxy_backend_why: str = ""
    resolv_conf: list[str] | None = None
    resolv_error: str = ""
    resolved_upstreams: list[str] | None = None  # systemd-resolved's own servers, when it runs
    kubelet_dns: list[str] | None = None
    kubelet_path: str = ""
    kubelet_error: str = ""
    probes: list[dict[str, Any]] = field(default_factory=list)
    name: str = ""
    route: dict[str, Any] | None = None
    route_error: str = ""
    answer: dict[str, Any] | None = None


# --------------------------------------------------------------------------------------------------
# Reading the node


def read_resolv_conf(path: str) -> list[str]:
    """The nameserver lines of a resolv.conf (OSError when it cannot be read)."""
    out = []
    for line in Path(path).read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            out.append(parts[1].split("%")[0])
    return out


def read_kubelet_dns(text: str) -> list[str]:
    """clusterDNS from a KubeletConfiguration (YAML or JSON)."""
    import yaml

    data = yaml.safe_load(text) or {}
    dns = data.get("clusterDNS") if isinstance(data, dict) else None
    return [str(x) for x in dns] if isinstance(dns, list) else []


def _hex_addr(text: str) -> str:
    """An address as /proc/net/{udp,tcp}[6] writes it (host byte order, 32-bit words) -> its text."""
    raw = bytes.fromhex(text)
    if len(raw) == 4:
        return str(ipaddress.IPv4Address(raw[::-1]))
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
    return ipaddress.IPv6Address(words).compressed


def parse_proc_net(text: str, proto: str, port: int) -> list[tuple[str, str, int, int]]:
    """(proto, ip, port, inode) of the sockets bound to `port` in one /proc/net table: UDP sockets and
    listening TCP sockets (state 0A)."""
    out = []
    for line in text.splitlines()[1:]:
        parts = line.split()
        if len(parts) < 10:
            continue
        addr, _, p = parts[1].partition(":")
        if int(p, 16) != port:
            continue
        if proto.startswith("tcp") and parts[3] != "0A":
            continue
        out.append((proto.rstrip("6"), _hex_addr(addr), port, int(parts[9])))
    return out


def socket_owners(inodes: set[int], proc: Path = Path("/proc")) -> dict[int, tuple[int, str]]:
    """inode -> (pid, command name) for the sockets we can see the owner of (all of them as root)."""
    found: dict[int, tuple[int, str]] = {}
    want = {f"socket:[{i}]": i for i in inodes}
    for d in proc.iterdir():
        if not d.name.isdigit():
            continue
        try:
            for fd in (d / "fd").iterdir():
                target = os.readlink(fd)
                if target in want:
                    comm = (d / "comm").read_text().strip()
                    found[want[target]] = (int(d.name), comm)
        except OSError:
            continue
        if len(found) == len(want):
            break
    return found


def port_holders(port: int, proc: Path = Path("/proc")) -> list[dict[str, Any]]:
    """Every socket bound to `port` in this network namespace, with its process where it can be seen."""
    socks: list[tuple[str, str, int, int]] = []
    for proto in ("udp", "udp6", "tcp", "tcp6"):
        try:
            socks += parse_proc_net((proc / "net" / proto).read_text(), proto, port)
        except OSError:
            continue
    owners = socket_owners({s[3] for s in socks}, proc)
    out = []
    for proto, ip, p, inode in socks:
        pid, comm = owners.get(inode, (None, None))
        out.append({"proto": proto, "ip": ip, "port": p, "pid": pid, "comm": comm})
    return out


def local_addresses() -> tuple[dict[str, list[str]], list[str]]:
    """Local IP -> the links holding it, and every link name (netlink, read-only)."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        addrs: dict[str, list[str]] = {}
        for msg in ipr.get_addr():
            ip = msg.get_attr("IFA_ADDRESS")
            if ip:
                addrs.setdefault(ipaddress.ip_address(ip).compressed, []).append(names.get(msg["index"], "?"))
    return addrs, sorted(names.values())


def kube_proxy_view(runner: Runner, links: Iterable[str],
                    fetch: Callable[[str], str | None]) -> tuple[str | None, str, str | None, str]:
    """(mode, why, rules backend, why) of kube-proxy as the node shows it."""
    from nodelocal.netsetup.backends import detect

    mode, why = None, ""
    said = fetch(KUBE_PROXY_MODE_URL)
    if said:
        mode, why = said.strip(), f"kube-proxy says so ({KUBE_PROXY_MODE_URL})"
    elif "kube-ipvs0" in links:
        mode, why = "ipvs", "the kube-ipvs0 interface is there"
    found, bwhy = detect(runner)
    backend = found if bwhy.startswith("kube-proxy") else None
    if mode is None and backend is not None:
        if backend == "nft":
            mode, why = "nftables", "kube-proxy's nftables table is there"
        else:
            mode, why = "iptables", f"its KUBE-* chains are in {backend}"
    if mode is None:
        why = (f"no kube-proxy rules in nftables or iptables and no answer from {KUBE_PROXY_MODE_URL} (not a "
               "Kubernetes node, or a replacement such as Cilium's)")
    return mode, why, backend, bwhy


def our_rules(runner: Runner, backend: str) -> tuple[bool, str]:
    """(the agent's rules are in `backend`, what is missing of them), read with netsetup's own readers,
    read-only; SetupError when the backend cannot be read. Nothing of ours at all is (False, "")."""
    from nodelocal.netsetup.rules_iptables import HOOKS, PREFIX, IptablesRules
    from nodelocal.netsetup.rules_nft import NftRules

    if backend == "nft":
        listing = NftRules(runner).listing()
        if listing is None:
            return False, ""
        return ("notrack" in listing, "" if "notrack" in listing else "table inet nodelocal has no notrack rule")
    rules = IptablesRules(runner, backend.removeprefix("iptables-"))
    seen, missing = False, []
    for fam in (4, 6):
        tables = rules.save(fam)
        if not any(c.startswith(PREFIX) for t in tables.values() for c in t.chains):
            continue
        seen = True
        for tname, hooks in HOOKS.items():
            t = tables.get(tname)
            for hook in hooks:
                chain = PREFIX + hook
                jump = t is not None and any(c == hook and args[args.index("-j") + 1:args.index("-j") + 2] == [chain]
                                             for c, args in t.rules if "-j" in args)
                if not jump:
                    missing.append(f"ipv{fam} {tname} {hook} -> {chain}")
        raw = tables.get("raw")
        if raw is None or not any("NOTRACK" in args for c, args in raw.rules if c.startswith(PREFIX)):
            missing.append(f"ipv{fam} raw NOTRACK rules")
    if not seen:
        return False, ""
    return not missing, ("missing: " + ", ".join(missing)) if missing else ""


def _fetch(url: str, timeout: float = 1.5) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            body: bytes = r.read(4096)
            return body.decode(errors="replace")
    except (OSError, ValueError):
        return None


def read_ready(addr: str, timeout: float = 6.0) -> tuple[int, str]:
    """GET /ready on the agent's health address: (status, body). OSError when nothing answers."""
    host, port = parse_hostport(addr, 8080, "health_addr")
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1" if host == "0.0.0.0" else "::1"
    url = f"http://{format_hostport((host, port))}/ready"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read(4096).decode(errors="replace").strip()
    except urllib.error.HTTPError as e:
        return e.code, e.read(4096).decode(errors="replace").strip()


async def probe_all(groups: dict[str, dict[str, Any]], cluster_domain: str, timeout: float) -> list[dict[str, Any]]:
    """Every upstream server asked once, all at once, through c-ares (resolve/probe.py)."""
    from nodelocal.resolve.probe import probe_timed

    jobs = []
    rows = []
    for gname, g in groups.items():
        for server in g["servers"]:
            host, port = parse_hostport(server, 53, "server")
            name = cluster_domain if gname == "cluster" else "."
            rows.append({"group": gname, "server": format_hostport((host, port)), "transport": g["transport"],
                         "asked": f"{name} SOA"})
            jobs.append(probe_timed(host, port, g["transport"] == "tcp", name, timeout))
    results = await asyncio.gather(*jobs, return_exceptions=True)
    for row, res in zip(rows, results, strict=True):
        if isinstance(res, BaseException):
            row.update(ok=False, ms=None, detail=f"probe failed: {res}")
        else:
            ok, took, detail = res
            row.update(ok=ok, ms=round(took * 1000, 1), detail=detail)
    return rows


def ask_agent(ip: str, port: int, name: str, timeout: float = 6.0) -> dict[str, Any]:
    """The agent's own answer for `name` A, as a pod gets it."""
    import dns.exception
    import dns.message
    import dns.query
    import dns.rcode

    q = dns.message.make_query(name, "A")
    t0 = time.monotonic()
    try:
        r = dns.query.udp(q, ip, port=port, timeout=timeout)
    except (dns.exception.DNSException, OSError) as e:
        return {"server": format_hostport((ip, port)), "ok": False, "error": str(e) or type(e).__name__}
    return {"server": format_hostport((ip, port)), "ok": True, "ms": round((time.monotonic() - t0) * 1000, 1),
            "rcode": dns.rcode.to_text(r.rcode()),
            "answer": [ln for rr in r.answer for ln in rr.to_text().splitlines()]}


def gather(socket_path: str, name: str = "", cfg: Config | None = None, config_from: str = "",
           runner: Runner | None = None, resolv_conf: str = "/etc/resolv.conf", probe_timeout: float = 2.0) -> Facts:
    """Look at everything, read-only. Each step that cannot look says why in the Facts."""
    from nodelocal.cli.control import one

    runner = runner or CommandRunner(timeout=5.0)
    f = Facts(root=os.geteuid() == 0, socket=socket_path, name=name)
    try:
        f.status = one(socket_path, {"op": "status"}, timeout=15.0)["status"]
    except ControlError as e:
        f.status_error = str(e)
    st = f.status
    if st is not None:
        f.localips, f.port = st["listen"]["localip"], st["listen"]["port"]
        f.setup, f.interface = st["setup"], st["netsetup"]["interface"]
        f.groups = {g: {"servers": [s for s in v["servers"]], "transport": v["transport"]}
                    for g, v in st["groups"].items()}
        f.cluster_domain, f.health_addr = st["cluster_domain"], st["health_addr"]
    elif cfg is not None:
        f.config_from = config_from
        f.localips, f.port = list(cfg.listen.localip), cfg.listen.port
        f.setup, f.interface = cfg.setup, cfg.netsetup.interface_name
        f.groups = {g: {"servers": list(v.servers), "transport": v.transport} for g, v in cfg.upstreams.items()}
        f.cluster_domain, f.health_addr = cfg.cluster_domain, format_hostport(cfg.health_address())
    # /ready, as the kubelet reads it.
    if f.health_addr:
        try:
            f.ready = read_ready(f.health_addr, 6.0 if f.status is not None else 1.5)
        except (OSError, ValueError) as e:
            f.ready_error = f"nothing answers on http://{f.health_addr}/ready ({getattr(e, 'reason', e)})"
    # Local IPs and the interface.
    try:
        f.addresses, f.links = local_addresses()
    except Exception as e:  # netlink unavailable
        f.addresses_error = f"cannot read the local addresses (netlink): {e}"
    # Port 53.
    try:
        f.port_holders = port_holders(f.port)
        if not f.root:
            f.port_error = "not root: the processes of other users' sockets are not visible"
    except OSError as e:
        f.port_error = f"cannot read /proc/net: {e}"
    # kube-proxy and the rules.
    if f.root:
        f.kube_proxy_mode, f.kube_proxy_mode_why, f.kube_proxy_backend, f.kube_proxy_backend_why = \
            kube_proxy_view(runner, f.links, _fetch)
        for backend in ("nft", "iptables-nft", "iptables-legacy"):
            try:
                f.rules[backend], missing = our_rules(runner, backend)
                if missing:
                    f.rules_missing[backend] = missing
            except NodelocalError as e:
                f.rules[backend] = None
                f.rules_errors[backend] = str(e)
    # Resolver configuration: the node's, systemd-resolved's, the kubelet's.
    try:
        f.resolv_conf = read_resolv_conf(resolv_conf)
    except OSError as e:
        f.resolv_error = f"cannot read {resolv_conf}: {e.strerror}"
    if any(ip.startswith("127.0.0.53") for ip in f.resolv_conf or []):
        try:
            f.resolved_upstreams = read_resolv_conf("/run/systemd/resolve/resolv.conf")
        except OSError:
            f.resolved_upstreams = None
    for path in KUBELET_CONFIGS:
        try:
            f.kubelet_dns, f.kubelet_path = read_kubelet_dns(Path(path).read_text()), path
            break
        except OSError:
            continue
        except Exception as e:  # not YAML
            f.kubelet_error = f"{path}: {e}"
            break
    else:
        f.kubelet_error = f"no kubelet config at {', '.join(KUBELET_CONFIGS)}"
    # Upstreams, all probed at once.
    if f.groups:
        f.probes = asyncio.run(probe_all(f.groups, f.cluster_domain, probe_timeout))
    # One name's path.
    if name and f.status is not None:
        try:
            f.route = one(socket_path, {"op": "route", "name": name}, timeout=15.0)["route"]
        except ControlError as e:
            f.route_error = str(e)
    if name and f.localips:
        f.answer = ask_agent(f.localips[0], f.port, name)
    return f


# --------------------------------------------------------------------------------------------------
# Judging: facts in, findings out (pure; tests/unit/cli/test_doctor.py)


def _dur(seconds: float) -> str:
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _own(f: Facts) -> set[str]:
    return {ipaddress.ip_address(ip).compressed for ip in f.localips}


def judge(f: Facts) -> list[Finding]:
    out: list[Finding] = []
    out += _agent(f)
    out += _ready(f)
    out += _local_ips(f)
    out += _ports(f)
    out += _rules(f)
    out += _kube_proxy(f)
    out += _loops(f)
    out += _upstreams(f)
    if f.name:
        out += _route(f)
    return out


def _agent(f: Facts) -> list[Finding]:
    st = f.status
    if st is None:
        if "permission denied" in f.status_error:
            return [Finding("agent", SKIP, f.status_error, "run doctor as root on the node")]
        where = f" (the checks below use {f.config_from})" if f.config_from else ""
        return [Finding("agent", PROBLEM, f"{f.status_error}{where}",
                        "start the agent (kubectl -n kube-system get pods -l k8s-app=nodelocal -o wide; its log "
                        "says why it stopped), or point doctor at its socket with --socket")]
    cfg = st["config"]
    source = f"{cfg['kind']} {cfg['path']}" if cfg.get("path") else "defaults and flags"
    listeners = ", ".join(f"{x['proto']} {x['address']}" for x in st["listeners"])
    found = [Finding("agent", OK, f"nodelocal {st['version']}, pid {st['pid']}, up {_dur(st['uptime'])}, "
                                  f"config from {source}; listening on {listeners}")]
    if st.get("stopping") or st.get("leaving"):
        found.append(Finding("agent", WARN, f"the agent is leaving: {st.get('leaving') or 'shutting down'}",
                             "a rolling update or a stop is under way; the next agent takes over"))
    return found


def _ready(f: Facts) -> list[Finding]:
    if f.ready is None:
        if not f.health_addr:
            return [Finding("ready", SKIP, "no health address known (no agent, no --config)")]
        return [Finding("ready", PROBLEM if f.status is not None else SKIP, f.ready_error,
                        "the agent serves /health and /ready on health_addr; is that address reachable here?")]
    code, text = f.ready
    if code == 200:
        return [Finding("ready", OK, f"/ready {code} on {f.health_addr}: {READY_MEANS}")]
    return [Finding("ready", PROBLEM, f"/ready {code} on {f.health_addr}: \"{text}\" (ready means: it {READY_MEANS})",
                    _ready_fix(text))]


def _ready_fix(text: str) -> str:
    t = text.lower()
    if "shut" in t or "handover" in t or "leav" in t:
        return "the agent is stopping or handing over: wait for its successor, or look at why it was stopped"
    if "listener" in t or "listening" in t or "self" in t:
        return "a DNS listener does not answer its self-query: look at the agent's log; restart the pod"
    if "upstream" in t or "down" in t or "group" in t:
        return ("the cluster DNS (kube-dns-upstream) does not answer and nothing is cached: check CoreDNS and its "
                "Service's endpoints (the upstream probes below)")
    return "see the agent's log"


def _local_ips(f: Facts) -> list[Finding]:
    if not f.localips:
        return [Finding("local IPs", SKIP, "no agent and no config: the local IPs are unknown (--config FILE)")]
    if f.addresses is None:
        return [Finding("local IPs", SKIP, f.addresses_error)]
    bound: set[tuple[str, str]] = set()
    if f.status is not None:
        for x in f.status["listeners"]:
            if x["proto"] in ("udp", "tcp"):
                host, _port = parse_hostport(x["address"], 53, "listener")
                bound.add((x["proto"], host))
    out = []
    for ip in f.localips:
        canon = ipaddress.ip_address(ip).compressed
        links = f.addresses.get(canon, [])
        protos = [p for p in ("udp", "tcp") if (p, canon) in bound]
        where = f"on {', '.join(links)}" if links else "on no interface"
        state = f"{'+'.join(protos)} :{f.port} bound by the agent" if protos else "not bound by the agent"
        line = f"{ip}: {where}, {state}"
        if not links:
            fix = (f"the agent puts it on {f.interface} at start and every sync_interval: is the agent running "
                   f"with setup on?" if f.setup else f"setup is off: put {ip} on an interface, or turn setup on")
            out.append(Finding("local IPs", PROBLEM, line, fix))
        elif f.status is not None and len(protos) < 2:
            out.append(Finding("local IPs", PROBLEM, line, "the agent could not bind it: see its log (bind errors "
                                                            "name the holder or the missing capability)"))
        elif f.setup and f.interface not in links:
            out.append(Finding("local IPs", WARN, f"{line} (not on {f.interface}, the agent's interface)",
                               "another link holds it: the agent neither adds nor removes it there"))
        else:
            out.append(Finding("local IPs", OK, line))
    return out


def _ports(f: Facts) -> list[Finding]:
    if f.port_holders is None:
        return [Finding("port 53", SKIP, f.port_error)]
    agent_pid = f.status["pid"] if f.status is not None else None
    own = _own(f)
    out = []
    others: dict[tuple[Any, Any], list[str]] = {}
    for h in f.port_holders:
        if agent_pid is not None and h["pid"] == agent_pid:
            continue
        others.setdefault((h["pid"], h["comm"]), []).append(f"{h['proto']} {format_hostport((h['ip'], h['port']))}")
    for (pid, comm), addrs in sorted(others.items(), key=lambda kv: str(kv[0])):
        who = f"{comm} (pid {pid})" if pid is not None else "a process doctor cannot see (not root?)"
        ips = {parse_hostport(a.split(" ", 1)[1], 53, "x")[0] for a in addrs}
        clash = sorted(ip for ip in ips if ip in own or ip in ("0.0.0.0", "::"))
        text = f"{who} holds {', '.join(sorted(addrs))}"
        if clash:
            what = ("systemd-resolved's stub listener" if comm == "systemd-resolve" else "another DNS server")
            out.append(Finding("port 53", PROBLEM, f"{text}: {what} on {'/'.join(clash)}, where the agent must answer",
                               f"stop it or bind it elsewhere (systemd-resolved: DNSStubListener=no, or "
                               f"DNSStubListenerExtra on another address; dnsmasq: --bind-interfaces with "
                               f"--except-interface={f.interface}); then restart the agent"))
        else:
            kind = "systemd-resolved's stub" if comm == "systemd-resolve" else "another DNS listener"
            out.append(Finding("port 53", NOTE, f"{text} ({kind}, on addresses the agent does not use)"))
    if not out:
        out.append(Finding("port 53", OK, f"no other process holds port {f.port}"
                           + (f" ({f.port_error})" if f.port_error else "")))
    return out


def _rules(f: Facts) -> list[Finding]:
    if not f.setup:
        return [Finding("rules", NOTE, "setup is off: the agent manages no interface or rules here")]
    if not f.root:
        return [Finding("rules", SKIP, "not root: nft and iptables-save need root")]
    st = f.status
    ns = st["netsetup"] if st is not None else {}
    in_use = ns.get("backend_in_use") or (f.kube_proxy_backend if ns.get("rules_backend", "auto") == "auto"
                                          else ns.get("rules_backend"))
    present = [b for b, there in f.rules.items() if there or b in f.rules_missing]
    out = []
    if in_use is None:
        in_use = present[0] if present else "nft"
    if f.rules.get(in_use) is None and in_use in f.rules_errors:
        out.append(Finding("rules", SKIP, f"{in_use}: {f.rules_errors[in_use]}"))
    elif in_use in f.rules_missing and st is not None:
        out.append(Finding("rules", PROBLEM, f"the agent's rules in {in_use} are incomplete "
                                             f"({f.rules_missing[in_use]}): DNS to the local IPs is tracked by "
                                             f"conntrack again",
                           "the agent puts them back within netsetup.sync_interval; at once: restart it. Look for "
                           "what removes them (an iptables-restore without --noflush, a firewall reload)"))
    elif f.rules.get(in_use) or in_use in f.rules_missing:
        if st is None:
            out.append(Finding("rules", NOTE, f"the agent's rules are in {in_use} but no agent runs: they fail open "
                                              f"(NOTRACK only while a socket is bound; the heartbeat expired), so "
                                              f"pods reach CoreDNS through kube-proxy"))
        else:
            out.append(Finding("rules", OK, f"conntrack-bypass rules in place ({in_use} backend)"))
    elif st is not None:
        out.append(Finding("rules", PROBLEM, f"the agent's rules are not in {in_use} (removed by hand or by another "
                                             f"tool?): DNS to the local IPs is tracked by conntrack again",
                           "the agent puts them back within netsetup.sync_interval; at once: restart it. Look for "
                           "what flushes the ruleset (an iptables-restore without --noflush, a firewall reload)"))
    else:
        out.append(Finding("rules", NOTE, f"no agent and no rules of its own in {in_use}: DNS takes the kube-dns "
                                          f"path as without the agent"))
    for b in present:
        if b != in_use:
            out.append(Finding("rules", WARN, f"rules of the agent are also in {b}, a backend it does not use now",
                               f"left by an earlier agent with another backend; they do no harm while they fail "
                               f"open, `nodelocal serve --rules-backend {b}` then stop removes them"))
    failopen = ns.get("failopen", {})
    for ip, path in sorted(failopen.items()):
        if path == PATH_NONE:
            out.append(Finding("fail-open", PROBLEM, f"{ip} has no path to CoreDNS while the agent is down",
                               "set netsetup.kube_dns_ips to the kube-dns ClusterIP (or give the pod "
                               "$KUBE_DNS_SERVICE_HOST); with iptables, kube-proxy must list the kube-dns endpoints"))
        else:
            out.append(Finding("fail-open", OK, f"{ip}: falls open by {path}"))
    return out


def _kube_proxy(f: Facts) -> list[Finding]:
    if not f.root:
        return [Finding("kube-proxy", SKIP, "not root: its rules cannot be read")]
    if f.kube_proxy_mode is None:
        return [Finding("kube-proxy", SKIP, f"mode unknown: {f.kube_proxy_mode_why}")]
    line = f"mode {f.kube_proxy_mode} ({f.kube_proxy_mode_why})"
    if f.kube_proxy_backend:
        line += f", rules in {f.kube_proxy_backend}"
    out = [Finding("kube-proxy", OK, line)]
    st = f.status
    in_use = st["netsetup"].get("backend_in_use") if st is not None else None
    if in_use and f.kube_proxy_backend and in_use != f.kube_proxy_backend:
        out.append(Finding("kube-proxy", PROBLEM, f"the agent's rules are in {in_use}, kube-proxy's in "
                                                  f"{f.kube_proxy_backend}: mixing backends (kubernetes/dns #338)",
                           f"netsetup.rules_backend: auto (or {f.kube_proxy_backend}), then restart the agent"))
    return out


def _loops(f: Facts) -> list[Finding]:
    out = []
    own = _own(f)
    port_own = {format_hostport((ip, f.port)) for ip in own}
    st = f.status
    for to, group in sorted((st or {}).get("loops", {}).items()):
        out.append(Finding("loop", PROBLEM, f"upstream {to} (group {group}) sends queries back to the agent: it "
                                            f"was taken out", "fix the group's servers (see /etc/resolv.conf below)"))
    if f.resolv_conf is None:
        out.append(Finding("resolv.conf", SKIP, f.resolv_error))
    else:
        mine = [ns for ns in f.resolv_conf if ns in own]
        host = f.groups.get("host", {}).get("servers", [])
        host_real = [s for s in host if s not in port_own and parse_hostport(s, 53, "x")[0] not in own]
        if mine and not host_real:
            out.append(Finding("resolv.conf", PROBLEM,
                               f"/etc/resolv.conf names the agent ({', '.join(mine)}) and the host group has no "
                               f"other server: names outside the cluster would loop back to the agent",
                               "give the host group the node's real resolvers (upstreams.host.servers, --upstream), "
                               "or point the node's /etc/resolv.conf elsewhere"))
        elif mine:
            out.append(Finding("resolv.conf", OK, f"/etc/resolv.conf names the agent ({', '.join(mine)}); the host "
                                                  f"group uses {', '.join(host_real)}, so no loop"))
        else:
            out.append(Finding("resolv.conf", OK, f"/etc/resolv.conf: {', '.join(f.resolv_conf) or 'no nameserver'} "
                                                  f"(not the agent)"))
        if f.resolved_upstreams is not None:
            via = [ns for ns in f.resolved_upstreams if ns in own]
            if via and any(s.startswith("127.0.0.53") for s in host):
                out.append(Finding("resolv.conf", PROBLEM, f"systemd-resolved (127.0.0.53) forwards to the agent "
                                                           f"({', '.join(via)}) and the host group asks it: a loop",
                                   "give the host group the real resolvers (upstreams.host.servers)"))
    if f.kubelet_dns is None:
        out.append(Finding("kubelet", SKIP, f"clusterDNS unknown: {f.kubelet_error}"))
    else:
        dns = f.kubelet_dns
        via_agent = [ip for ip in dns if ip in own]
        cluster = f.groups.get("cluster", {}).get("servers", [])
        loops = [s for s in cluster if parse_hostport(s, 53, "x")[0] in dns and parse_hostport(s, 53, "x")[0] in own]
        if loops:
            out.append(Finding("kubelet", PROBLEM, f"the cluster group forwards to {', '.join(loops)}, the kubelet's "
                                                   f"clusterDNS, which the agent itself answers: a loop",
                               "forward to the kube-dns-upstream Service's ClusterIP (not kube-dns)"))
        elif via_agent:
            out.append(Finding("kubelet", OK, f"clusterDNS {', '.join(dns)} ({f.kubelet_path}): pods ask the agent"))
        else:
            out.append(Finding("kubelet", NOTE, f"clusterDNS {', '.join(dns) or '(none)'} ({f.kubelet_path}): "
                                                f"pods reach the agent only in iptables mode (it binds the kube-dns "
                                                f"ClusterIP) or through their own dnsConfig"))
    return out


def _upstreams(f: Facts) -> list[Finding]:
    if not f.probes:
        return [Finding("upstreams", SKIP, "no upstream known (no agent and no --config)")]
    agent_view = {(u["group"], u["server"]): u for u in (f.status or {}).get("upstreams", [])}
    out = []
    by_group: dict[str, list[dict[str, Any]]] = {}
    for p in f.probes:
        by_group.setdefault(p["group"], []).append(p)
        seen = agent_view.get((p["group"], p["server"]))
        mark = ""
        if seen is not None and seen["down"]:
            mark = f"; the agent has it down for {_dur(seen['down_for'])}"
        text = (f"{p['group']} {p['server']} ({p['transport']}): "
                + (f"answers in {p['ms']:.1f} ms ({p['asked']}: {p['detail']})" if p["ok"]
                   else f"no answer ({p['detail']}, {p['asked']})") + mark)
        if p["ok"]:
            out.append(Finding("upstreams", WARN if mark else OK, text))
        else:
            fix = ("CoreDNS through the kube-dns-upstream Service: does the Service have endpoints "
                   "(kubectl -n kube-system get endpointslices -l kubernetes.io/service-name=kube-dns-upstream)? "
                   "are the CoreDNS pods ready?" if p["group"] == "cluster" else
                   "the node's resolver: reachable from the host network? (a firewall, a dead server in "
                   "/etc/resolv.conf)")
            out.append(Finding("upstreams", PROBLEM, text, fix))
    for gname, rows in by_group.items():
        if len(rows) > 1 and not any(r["ok"] for r in rows):
            effect = ("cluster names get SERVFAIL unless stale answers are held" if gname == "cluster"
                      else "its zones fall through to the next group, or fail")
            out.append(Finding("upstreams", PROBLEM, f"group {gname}: no server answers; {effect}",
                               "see the servers above"))
    empty = [g for g, v in f.groups.items() if not v["servers"]]
    for g in empty:
        out.append(Finding("upstreams", PROBLEM if g == "cluster" else WARN, f"group {g} has no servers",
                           f"set upstreams.{g}.servers (cluster: --cluster-dns, or $KUBE_DNS_UPSTREAM_SERVICE_HOST)"))
    return out


def _route(f: Facts) -> list[Finding]:
    out = []
    r = f.route
    if r is None:
        out.append(Finding("name", SKIP, f.route_error or "no agent: the zone routing is the agent's"))
    else:
        def servers(g: dict[str, Any]) -> str:
            return ", ".join(s["server"] + (" (down)" if s["down"] else "") for s in g["servers"]) or "no servers"
        order = " -> ".join(f"{g['group']} [{servers(g)}]" for g in r["groups"])
        out.append(Finding("name", OK, f"{r['name']}: zone {r['zone']}; a miss goes to {order}"))
        if not r["entries"]:
            out.append(Finding("name", OK, "not in the cache (before doctor asked)"))
        for e in r["entries"]:
            state = f"stale for {e['stale_for']}s" if e["stale"] else f"{e['remaining']}s of {e['ttl']}s left"
            records = "; ".join(e["answer"] or e["authority"]) or "no records"
            out.append(Finding("name", OK, f"cached {e['type']} {e['rcode']} ({e['kind']}), {state}: "
                                                     f"{records}"))
    a = f.answer
    if a is not None:
        if a["ok"]:
            status = OK if a["rcode"] in ("NOERROR", "NXDOMAIN") else PROBLEM
            out.append(Finding("name", status, f"the agent at {a['server']} answers {a['rcode']} in "
                                                         f"{a['ms']:.1f} ms: {'; '.join(a['answer']) or 'no records'}",
                               "" if status == OK else "the upstreams above say why (SERVFAIL: none answered)"))
        else:
            out.append(Finding("name", PROBLEM, f"the agent at {a['server']} does not answer: {a['error']}",
                               "see the agent and local IP lines above"))
    return out


# --------------------------------------------------------------------------------------------------
# Showing


def render(f: Facts, findings: list[Finding], out: TextIO) -> None:
    width = max(len(x.area) for x in findings) if findings else 10
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    out.write(f"nodelocal doctor: this node's DNS path ({stamp}{', not root' if not f.root else ''})\n\n")
    for x in findings:
        out.write(f"{x.area:<{width}}  {x.status:<11}  {x.summary}\n")
    problems = [x for x in findings if x.status == PROBLEM]
    skipped = [x for x in findings if x.status == SKIP]
    out.write("\n")
    if problems:
        out.write(f"verdict: {len(problems)} problem{'s' if len(problems) != 1 else ''}\n")
        for x in problems:
            out.write(f"  PROBLEM {x.area}: {x.summary}\n          do: {x.fix}\n")
    else:
        out.write("verdict: no problem found\n")
    if skipped:
        out.write("not checked:\n")
        for x in skipped:
            out.write(f"  {x.area}: {x.summary}\n")


def run(socket_path: str, name: str, as_json: bool, cfg: Config | None, config_from: str,
        out: TextIO | None = None) -> int:
    out = out or sys.stdout
    f = gather(socket_path, name, cfg, config_from)
    findings = judge(f)
    if as_json:
        json.dump({"findings": [asdict(x) for x in findings],
                   "problems": sum(1 for x in findings if x.status == PROBLEM),
                   "facts": asdict(f)}, out, indent=1, default=str)
        out.write("\n")
    else:
        render(f, findings, out)
    return 1 if any(x.status == PROBLEM for x in findings) else 0

