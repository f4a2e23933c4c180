"""Rules backends `iptables-nft` and `iptables-legacy`: chains of our own, one jump each, written atomically.

Per family (iptables / ip6tables) and table (raw, filter, nat) our rules live in `NODELOCAL-*` chains,
reached by one jump from the built-in chain, at its top, as node-cache prepends its rules. A write is
one `iptables-restore --noflush`: declaring our chains flushes them and the rules go back in the same
commit, so there is never half a set and never a duplicate (kubernetes/dns #568). ensure() compares our
part of `iptables-save` with what it saw right after its last write and writes only on a difference;
rules of others are never deleted or rewritten (ours are the NODELOCAL-* chains and the rules in
built-in chains whose comment starts with "nodelocal").

Fail-open, as in the nft backend, with iptables' means:
- pods: `-m socket` (which ignores wildcard listeners) makes NOTRACK conditional on a bound socket;
- host-network clients: iptables refuses `-m socket` in OUTPUT, so NOTRACK there matches an ipset with
  timeouts that the agent refreshes every second (a heartbeat);
- a non-ClusterIP local IP: iptables cannot rewrite a destination without NAT, and a DNAT to a ClusterIP
  that is not local is final (NAT is decided once per connection). So in iptables mode we DNAT to the
  endpoints kube-proxy itself lists for the ClusterIP (read from its KUBE-SVC/KUBE-SEP chains each
  sync; jumping into kube-proxy's chains instead would stop kube-proxy from deleting them). In IPVS mode
  the ClusterIP is local and a plain DNAT to it reaches IPVS.
"""

from __future__ import annotations

import logging
import shlex
from dataclasses import dataclass, field

from nodelocal.netsetup.plan import PATH_DNAT_CLUSTERIP, PATH_DNAT_ENDPOINTS, PATH_NONE, Plan, family
from nodelocal.netsetup.runner import LOCK_WAIT, Runner, check

log = logging.getLogger("nodelocal.netsetup")

PREFIX = "NODELOCAL-"
COMMENT = "nodelocal"
JUMP_COMMENT = "nodelocal: NodeLocal DNS agent rules"
# table -> built-in chains we hook, each into NODELOCAL-<chain>
HOOKS = {
    "raw": ("PREROUTING", "OUTPUT"),
    "filter": ("INPUT", "OUTPUT"),
    "nat": ("PREROUTING", "OUTPUT", "POSTROUTING"),
}


def ipset_name(fam: int) -> str:
    return f"nodelocal-alive{fam}"


# --------------------------------------------------------------------------------------------------
# Reading iptables-save


@dataclass
class Table:
    """One table of `iptables-save`: its chains and its rules as (chain, the rule's argument list)."""

    chains: set[str] = field(default_factory=set)
    rules: list[tuple[str, list[str]]] = field(default_factory=list)


def parse_save(text: str) -> dict[str, Table]:
    tables: dict[str, Table] = {}
    cur: Table | None = None
    for line in text.splitlines():
        if line.startswith("*"):
            cur = tables.setdefault(line[1:].strip(), Table())
        elif cur is None or not line or line.startswith("#") or line == "COMMIT":
            continue
        elif line.startswith(":"):
            cur.chains.add(line[1:].split()[0])
        elif line.startswith("-A "):
            args = shlex.split(line)
            cur.rules.append((args[1], args[2:]))
    return tables


def _opt(args: list[str], name: str) -> str | None:
    for i, a in enumerate(args[:-1]):
        if a == name:
            return args[i + 1]
    return None


def _is_ours(chain: str, args: list[str]) -> bool:
    comment = _opt(args, "--comment") or ""
    target = _opt(args, "-j") or ""
    return chain.startswith(PREFIX) or comment.startswith(COMMENT) or target.startswith(PREFIX)


def kube_proxy_endpoints(nat: Table | None, cluster_ip: str, port: int, proto: str) -> list[str]:
    """The DNAT destinations (`IP:PORT`, `[IP6]:PORT`) kube-proxy (iptables mode) uses for cluster_ip:port/proto.

    KUBE-SERVICES has `-d <ClusterIP>/32 -p udp ... --dport 53 -j KUBE-SVC-…`; that chain jumps (maybe
    through KUBE-SVL-/KUBE-EXT-) to KUBE-SEP-… chains, each ending in `-j DNAT --to-destination`.
    """
    if nat is None:
        return []
    by_chain: dict[str, list[list[str]]] = {}
    for chain, args in nat.rules:
        by_chain.setdefault(chain, []).append(args)
    bits = 32 if family(cluster_ip) == 4 else 128
    start = []
    for args in by_chain.get("KUBE-SERVICES", []):
        if _opt(args, "-d") not in (cluster_ip, f"{cluster_ip}/{bits}"):
            continue
        if _opt(args, "-p") == proto and _opt(args, "--dport") == str(port):
            target = _opt(args, "-j")
            if target:
                start.append(target)
    out: list[str] = []
    seen: set[str] = set()
    todo = list(start)
    while todo:
        chain = todo.pop(0)
        if chain in seen or not chain.startswith("KUBE-") or chain.startswith("KUBE-MARK-"):
            continue
        seen.add(chain)
        for args in by_chain.get(chain, []):
            target = _opt(args, "-j")
            if target == "DNAT":
                dest = _opt(args, "--to-destination")
                if dest and dest not in out:
                    out.append(dest)
            elif target:
                todo.append(target)
    return out


# --------------------------------------------------------------------------------------------------
# Rendering


def _cm(text: str) -> list[str]:
    return ["-m", "comment", "--comment", f"{COMMENT}: {text}"]


def _dest(ip: str, port: int | None = None) -> str:
    if port is None:
        return ip
    return f"[{ip}]:{port}" if family(ip) == 6 else f"{ip}:{port}"


def render(plan: Plan, fam: int, nat_now: Table | None) -> tuple[dict[str, dict[str, list[list[str]]]], dict[str, str]]:
    """table -> our chain -> rules (argument lists, without `-A CHAIN`), and each redirected IP's path."""
    p = str(plan.port)
    ips = plan.ips(fam)
    chains: dict[str, dict[str, list[list[str]]]] = {t: {PREFIX + c: [] for c in hooks} for t, hooks in HOOKS.items()}
    raw, flt, nat = chains["raw"], chains["filter"], chains["nat"]
    paths: dict[str, str] = {}
    for proto in ("udp", "tcp"):
        if ips:
            raw[PREFIX + "OUTPUT"].append(
                ["-p", proto, "-m", proto, "--dport", p, "-m", "set", "--match-set", ipset_name(fam), "dst",
                 *_cm("skip conntrack for host-network clients while the agent is alive"), "-j", "NOTRACK"])
    for ip in ips:
        for proto in ("udp", "tcp"):
            d = ["-d", ip, "-p", proto, "-m", proto, "--dport", p]
            s = ["-s", ip, "-p", proto, "-m", proto, "--sport", p]
            raw[PREFIX + "PREROUTING"].append([*d, "-m", "socket", *_cm("skip conntrack while the agent listens"),
                                               "-j", "NOTRACK"])
            raw[PREFIX + "OUTPUT"].append([*s, *_cm("skip conntrack for answers"), "-j", "NOTRACK"])
            flt[PREFIX + "INPUT"].append([*d, *_cm("allow DNS to the agent"), "-j", "ACCEPT"])
            flt[PREFIX + "OUTPUT"].append([*s, *_cm("allow DNS from the agent"), "-j", "ACCEPT"])
        if plan.health_port:
            hp = str(plan.health_port)
            for side in (["-d", ip, "-p", "tcp", "-m", "tcp", "--dport", hp],
                         ["-s", ip, "-p", "tcp", "-m", "tcp", "--sport", hp]):
                raw[PREFIX + "OUTPUT"].append([*side, *_cm("skip conntrack for health checks"), "-j", "NOTRACK"])
        nat[PREFIX + "POSTROUTING"].append(
            ["-s", ip, "-m", "conntrack", "--ctstate", "DNAT",
             *_cm("fail-open flows from a local IP leave with the node address"), "-j", "MASQUERADE"])
    for r in plan.redirects:
        if family(r.local) != fam:
            continue
        rules: list[list[str]] = []
        if r.target_local:
            for proto in ("udp", "tcp"):
                rules.append(["-d", r.local, "-p", proto, "-m", proto, "--dport", p,
                              *_cm(f"fail open to kube-dns {r.target} (IPVS)"),
                              "-j", "DNAT", "--to-destination", _dest(r.target)])
            paths[r.local] = PATH_DNAT_CLUSTERIP
        else:
            found = {proto: kube_proxy_endpoints(nat_now, r.target, plan.port, proto) for proto in ("udp", "tcp")}
            for proto, eps in found.items():
                for i, ep in enumerate(eps):
                    stat = [] if i == len(eps) - 1 else [
                        "-m", "statistic", "--mode", "random", "--probability", f"{1 / (len(eps) - i):.11f}"]
                    rules.append(["-d", r.local, "-p", proto, "-m", proto, "--dport", p, *stat,
                                  *_cm(f"fail open to kube-dns {r.target} endpoint"),
                                  "-j", "DNAT", "--to-destination", ep])
            paths[r.local] = PATH_DNAT_ENDPOINTS if found["udp"] or found["tcp"] else PATH_NONE
        nat[PREFIX + "PREROUTING"].extend(rules)
        nat[PREFIX + "OUTPUT"].extend(rules)
    return chains, paths


def _quote(arg: str) -> str:
    """iptables-restore's quoting: double quotes only (single quotes are taken literally)."""
    if arg and not any(c.isspace() or c in "\"'\\" for c in arg):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _line(chain: str, args: list[str], op: str = "-A") -> str:
    """A restore line; `-I` inserts at the top of the chain."""
    head = [op, chain, "1"] if op == "-I" else [op, chain]
    return " ".join([*head, *(_quote(a) for a in args)])


# --------------------------------------------------------------------------------------------------
# The backend


class IptablesRules:
    """The iptables backends (variant `nft` or `legacy`). ensure() returns (changed, fail-open path per IP)."""

    def __init__(self, runner: Runner, variant: str, ipset: str = "ipset") -> None:
        if variant not in ("nft", "legacy"):
            raise ValueError(variant)
        self.runner = runner
        self.variant = variant
        self.name = f"iptables-{variant}"
        self.ipset = ipset
        self._written: dict[int, tuple[object, object]] = {}  # family -> (rendered, ours as saved after writing)

    def _bin(self, fam: int, tool: str) -> str:
        return f"{'ip6tables' if fam == 6 else 'iptables'}-{self.variant}-{tool}"

    def save(self, fam: int) -> dict[str, Table]:
        return parse_save(check(self.runner, [self._bin(fam, "save")]))

    @staticmethod
    def ours(tables: dict[str, Table]) -> dict[str, list[tuple[str, list[str]]]]:
        return {name: [(c, a) for c, a in t.rules if _is_ours(c, a)] for name, t in tables.items()}

    def ensure(self, plan: Plan) -> tuple[bool, dict[str, str]]:
        changed = False
        paths: dict[str, str] = {}
        for fam in (4, 6):
            if not plan.ips(fam):
                changed |= self._remove_family(fam)
                continue
            check(self.runner, [self.ipset, "create", ipset_name(fam), "hash:ip", "family",
                                "inet" if fam == 4 else "inet6", "timeout", "0", "-exist"])
            tables = self.save(fam)
            chains, fam_paths = render(plan, fam, tables.get("nat"))
            paths.update(fam_paths)
            ours = self.ours(tables)
            if self._written.get(fam) == (chains, ours) and all(
                    PREFIX + c in tables.get(t, Table()).chains for t, hooks in HOOKS.items() for c in hooks):
                continue
            check(self.runner, [self._bin(fam, "restore"), "-w", LOCK_WAIT, "--noflush"],
                  self._restore_input(chains, tables))
            self._written[fam] = (chains, self.ours(self.save(fam)))
            changed = True
        return changed, paths

    @staticmethod
    def _restore_input(chains: dict[str, dict[str, list[list[str]]]], tables: dict[str, Table]) -> str:
        lines: list[str] = []
        for tname, hooks in HOOKS.items():
            lines.append(f"*{tname}")
            lines += [f":{PREFIX}{c} - [0:0]" for c in hooks]  # declared -> created or flushed
            # Our rules in built-in chains: keep exactly one jump per hook, at the top.
            have = tables.get(tname, Table())
            for c in hooks:
                mine = [a for ch, a in have.rules if ch == c and _is_ours(ch, a)]
                good = [a for a in mine if _opt(a, "-j") == PREFIX + c and _opt(a, "--comment") == JUMP_COMMENT]
                if len(mine) == 1 and len(good) == 1:
                    continue
                lines += [_line(c, a, "-D") for a in mine]
                lines.append(_line(c, ["-m", "comment", "--comment", JUMP_COMMENT, "-j", PREFIX + c], "-I"))
            for chain, rules in chains[tname].items():
                lines += [_line(chain, a) for a in rules]
            lines.append("COMMIT")
        return "\n".join(lines) + "\n"

    def heartbeat(self, plan: Plan) -> None:
        lines = [f"add {ipset_name(family(ip))} {ip} timeout {plan.heartbeat_timeout}" for ip in plan.localips]
        if lines:
            check(self.runner, [self.ipset, "-exist", "restore"], "\n".join(lines) + "\n")

    def _remove_family(self, fam: int) -> bool:
        self._written.pop(fam, None)
        r = self.runner([self._bin(fam, "save")])
        if r.rc != 0:  # no such tool or no tables: nothing of ours can be there
            return False
        tables = parse_save(r.out)
        lines: list[str] = []
        for tname in HOOKS:
            t = tables.get(tname)
            if t is None:
                continue
            mine_builtin = [(c, a) for c, a in t.rules if not c.startswith(PREFIX) and _is_ours(c, a)]
            mine_chains = sorted(c for c in t.chains if c.startswith(PREFIX))
            if not mine_builtin and not mine_chains:
                continue
            lines.append(f"*{tname}")
            lines += [f":{c} - [0:0]" for c in mine_chains]
            lines += [_line(c, a, "-D") for c, a in mine_builtin]
            lines += [f"-X {c}" for c in mine_chains]
            lines.append("COMMIT")
        removed = False
        if lines:
            check(self.runner, [self._bin(fam, "restore"), "-w", LOCK_WAIT, "--noflush"], "\n".join(lines) + "\n")
            removed = True
        r = self.runner([self.ipset, "list", "-n"])
        if r.rc == 0 and ipset_name(fam) in r.out.split():
            check(self.runner, [self.ipset, "destroy", ipset_name(fam)])
            removed = True
        return removed

    def remove(self) -> bool:
        removed = False
        for fam in (4, 6):
            removed |= self._remove_family(fam)
        return removed
