"""Reads node-local-dns's Corefile (the subset its ConfigMap uses) into nodelocal's config: the migration path.

Three steps, each testable alone:
  tokenize()   Caddyfile lexing: words, quotes, comments, braces, line numbers, {$ENV} references
  fill()       node-cache's __PILLAR__ placeholders, from flags and environment (node-cache's
               updateCorefile: LOCAL__DNS = the -localip list, DNS__SERVER = removed, CLUSTER__DNS =
               $<UPSTREAMSVC>_SERVICE_HOST, UPSTREAM__SERVERS = the kube-dns ConfigMap's
               upstreamNameservers, else /etc/resolv.conf)
  parse()      server blocks and their directives
  translate()  the config tree as plain data, for config.load(), plus notes on what is read but not acted on

Every directive outside the subset, every unknown option and every syntax error is reported with its
line, all of them at once (CorefileError), never silently ignored.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nodelocal import ConfigError, CorefileError
from nodelocal.config import format_hostport, parse_hostport, resolv_conf_nameservers
from nodelocal.config.model import CLUSTER_SERVE_STALE
from nodelocal.dns.names import zone_name

# node-cache's placeholders (cmd/node-cache/app/configmap.go) and __PILLAR__DNS__DOMAIN__, which the
# add-on's install instructions fill with sed; here it takes the cluster domain.
LOCAL_DNS = "__PILLAR__LOCAL__DNS__"
DNS_SERVER = "__PILLAR__DNS__SERVER__"
CLUSTER_DNS = "__PILLAR__CLUSTER__DNS__"
UPSTREAM_SERVERS = "__PILLAR__UPSTREAM__SERVERS__"
DNS_DOMAIN = "__PILLAR__DNS__DOMAIN__"
_PILLAR = re.compile(r"__PILLAR__[A-Z_]+?__(?![A-Z])")
_ENV = re.compile(r"\{\$([A-Za-z_][A-Za-z0-9_]*)\}")

# CoreDNS cache's defaults when `cache` is given without a TTL (plugin/cache/setup.go).
CACHE_CAPACITY = 9984
CACHE_SUCCESS_MAX_TTL = 3600
CACHE_DENIAL_MAX_TTL = 1800
CACHE_MIN_TTL = 5
CACHE_SERVFAIL_TTL = 5
# CoreDNS cache's defaults for `serve_stale` without a duration, and for `prefetch AMOUNT` without a percentage.
STALE_DEFAULT = 3600.0
PREFETCH_PERCENT_DEFAULT = 10

# Directives read and acted on, and those read but only noted (the rest is an error).
DIRECTIVES = ("bind", "cache", "forward", "health", "prometheus", "reload", "loop", "errors", "log", "ready", "acl",
              "any")


@dataclass(frozen=True)
class Token:
    """One word of the Corefile, its line, and the placeholder it came from ('' for literal text)."""

    text: str
    line: int
    origin: str = ""


@dataclass
class Directive:
    """A directive line, e.g. `forward . 10.0.0.10 {` with the lines of its block (None: no block)."""

    name: str
    args: list[Token]
    line: int
    block: list[Directive] | None = None


@dataclass
class ServerBlock:
    """`zone[:port] ... { directives }`."""

    keys: list[Token]
    line: int
    directives: list[Directive] = field(default_factory=list)


@dataclass
class Pillars:
    """What fills node-cache's placeholders; None where the flag or variable behind it is not set."""

    local_ips: tuple[str, ...] | None = None  # -localip
    cluster_dns: str | None = None  # $<UPSTREAMSVC>_SERVICE_HOST (or --cluster-dns)
    cluster_dns_source: str = "$KUBE_DNS_UPSTREAM_SERVICE_HOST"
    upstream_servers: tuple[str, ...] = ()  # the kube-dns ConfigMap's upstreamNameservers
    cluster_domain: str = "cluster.local"


@dataclass
class Result:
    """A translated Corefile: config data for config.load(), and what was read but not acted on."""

    data: dict[str, Any]
    notes: list[str]


class _Problems:
    def __init__(self, source: str) -> None:
        self.source = source
        self.items: list[tuple[int, str]] = []

    def add(self, line: int, message: str) -> None:
        self.items.append((line, message))

    def raise_if_any(self) -> None:
        if self.items:
            raise CorefileError(self.source, sorted(self.items))


# --------------------------------------------------------------------------------------------------
# Lexing


def tokenize(text: str, source: str = "Corefile", env: Mapping[str, str] | None = None) -> list[list[Token]]:
    """The Corefile's non-empty lines as token lists. Quotes keep spaces; `#` starts a comment."""
    problems = _Problems(source)
    lines: list[list[Token]] = []
    current: list[Token] = []
    i, n, line = 0, len(text), 1
    while i < n:
        c = text[i]
        if c == "\n":
            if current:
                lines.append(current)
                current = []
            line += 1
            i += 1
        elif c in " \t\r":
            i += 1
        elif c == "#":
            while i < n and text[i] != "\n":
                i += 1
        elif c in "\"`":
            start_line = line
            i += 1
            buf = []
            while i < n and text[i] != c:
                if text[i] == "\\" and c == '"' and i + 1 < n and text[i + 1] in '"\\':
                    i += 1
                if text[i] == "\n":
                    line += 1
                buf.append(text[i])
                i += 1
            if i >= n:
                problems.add(start_line, f"unclosed quote {c}")
                break
            i += 1
            current.append(Token("".join(buf), start_line))
        else:
            start = i
            while i < n and text[i] not in " \t\r\n":
                i += 1
            word = text[start:i]
            if env is not None and "{$" in word:
                word = _ENV.sub(lambda m: env.get(m.group(1), ""), word)
            current.append(Token(word, line))
    if current:
        lines.append(current)
    problems.raise_if_any()
    return lines


def fill(lines: list[list[Token]], pillars: Pillars, source: str = "Corefile") -> list[list[Token]]:
    """Replace node-cache's placeholders inside tokens; a value with spaces becomes several tokens."""
    problems = _Problems(source)
    values: dict[str, str | None] = {
        LOCAL_DNS: " ".join(pillars.local_ips) if pillars.local_ips is not None else None,
        DNS_SERVER: "",
        CLUSTER_DNS: pillars.cluster_dns,
        UPSTREAM_SERVERS: " ".join(pillars.upstream_servers) or "/etc/resolv.conf",
        DNS_DOMAIN: pillars.cluster_domain,
    }
    where = {
        LOCAL_DNS: "-localip (--localip)",
        CLUSTER_DNS: f"{pillars.cluster_dns_source} (-upstreamsvc names the Service; or --cluster-dns)",
    }
    out: list[list[Token]] = []
    for toks in lines:
        new: list[Token] = []
        for t in toks:
            found = _PILLAR.findall(t.text)
            if not found:
                new.append(t)
                continue
            text = t.text
            for name in found:
                if name not in values:
                    problems.add(t.line, f"unknown placeholder {name}")
                    continue
                value = values[name]
                if value is None:
                    problems.add(t.line, f"{name} is not set: it comes from {where[name]}")
                    continue
                text = text.replace(name, value)
            origin = found[0]
            new.extend(Token(w, t.line, origin) for w in text.split())
        if new:
            out.append(new)
    problems.raise_if_any()
    return out


# --------------------------------------------------------------------------------------------------
# Parsing


def parse(lines: list[list[Token]], source: str = "Corefile") -> list[ServerBlock]:
    """Server blocks from token lines. Braces end a line to open a block; `}` alone closes it."""
    problems = _Problems(source)
    blocks: list[ServerBlock] = []
    block: ServerBlock | None = None
    sub: Directive | None = None
    for toks in lines:
        words = [t.text for t in toks]
        ln = toks[0].line
        if "{" in words[:-1] or "}" in words[1:]:
            problems.add(ln, "a brace must end the line that opens a block, and '}' stand alone on its line")
            continue
        if words == ["}"]:
            if sub is not None:
                sub = None
            elif block is not None:
                blocks.append(block)
                block = None
            else:
                problems.add(ln, "'}' closes no block")
            continue
        opens = words[-1] == "{"
        body = toks[:-1] if opens else toks
        if block is None:
            if not opens:
                problems.add(ln, f"expected a server block ('ZONE[:PORT] {{'), got {' '.join(words)!r}")
                continue
            keys = [Token(t.text.rstrip(","), t.line, t.origin) for t in body if t.text.rstrip(",")]
            if not keys:
                problems.add(ln, "a server block needs at least one zone before '{'")
            block = ServerBlock(keys, ln)
            continue
        if not body:
            problems.add(ln, "a block opened without a directive")
            continue
        d = Directive(body[0].text, list(body[1:]), ln, [] if opens else None)
        if sub is not None:
            if opens:
                problems.add(ln, f"'{d.name}' opens a block inside '{sub.name}'s block: nesting this deep is "
                                 "not part of the Corefile subset")
            assert sub.block is not None
            sub.block.append(d)
        else:
            block.directives.append(d)
            if opens:
                sub = d
    if block is not None:
        problems.add(block.line, "server block not closed (missing '}')")
    problems.raise_if_any()
    return blocks


# --------------------------------------------------------------------------------------------------
# Translating into nodelocal's config


def parse_duration(text: str) -> float:
    """Go durations ('30s', '1m30s', '500ms', '2h') and bare seconds ('30'); ValueError otherwise."""
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    units = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)", text)
    if not parts or "".join(a + u for a, u in parts) != text:
        raise ValueError(f"not a duration: {text!r}")
    return sum(float(a) * units[u] for a, u in parts)


def _zone_of(key: str) -> tuple[str, int | None, str | None]:
    """'dns://cluster.local.:53' -> ('cluster.local', 53, None); the error text when it is no zone."""
    k = key
    if "://" in k:
        scheme, _, k = k.partition("://")
        if scheme != "dns":
            return "", None, f"{scheme}:// server blocks are not supported (plain DNS only)"
    port: int | None = None
    if k.count(":") == 1:
        k, _, p = k.partition(":")
        if not p.isdigit():
            return "", None, f"bad port {p!r}"
        port = int(p)
    if "/" in k:
        return "", None, "CIDR server blocks are not supported: write the reverse zone (e.g. 10.in-addr.arpa)"
    try:
        return zone_name(k), port, None
    except ValueError as e:
        return "", None, f"not a zone name: {e}"


@dataclass
class _Forward:
    servers: list[str]
    transport: str
    policy: str
    origin: str  # placeholder of the targets: CLUSTER_DNS, UPSTREAM_SERVERS, or "" (literal)
    from_resolv_conf: bool
    line: int
    randomize_case: bool = True


@dataclass
class _Zone:
    name: str
    cache: dict[str, Any]
    forward: _Forward | None
    line: int


def _cache(d: Directive, p: _Problems, notes: list[str], src: str) -> dict[str, Any]:
    """CoreDNS `cache [TTL] { success CAP [TTL [MINTTL]]; denial ...; prefetch; serve_stale; servfail; disable }`."""
    c: dict[str, Any] = {
        "success_capacity": CACHE_CAPACITY, "denial_capacity": CACHE_CAPACITY, "min_ttl": CACHE_MIN_TTL,
        "success_max_ttl": CACHE_SUCCESS_MAX_TTL, "denial_max_ttl": CACHE_DENIAL_MAX_TTL,
        "servfail_ttl": CACHE_SERVFAIL_TTL,
    }

    def num(t: Token, what: str) -> int | None:
        if not t.text.isdigit():
            p.add(t.line, f"cache: {what} must be a whole number, got {t.text!r}")
            return None
        return int(t.text)

    if d.args:
        ttl = num(d.args[0], "TTL")
        if ttl is not None:
            c["success_max_ttl"] = c["denial_max_ttl"] = ttl
        if len(d.args) > 1:
            p.add(d.line, "cache: a zone list after the TTL is not supported (the cache covers the block's zones)")
    mins: dict[str, int] = {}
    for s in d.block or []:
        a = s.args
        if s.name in ("success", "denial"):
            if not 1 <= len(a) <= 3:
                p.add(s.line, f"cache: {s.name} CAPACITY [TTL [MINTTL]]")
                continue
            vals = [num(t, f"{s.name} value") for t in a]
            if vals[0] is not None:
                c[f"{s.name}_capacity"] = vals[0]
            if len(vals) > 1 and vals[1] is not None:
                c[f"{s.name}_max_ttl"] = vals[1]
            if len(vals) > 2 and vals[2] is not None:
                mins[s.name] = vals[2]
        elif s.name == "servfail":
            if len(a) != 1:
                p.add(s.line, "cache: servfail DURATION")
                continue
            try:
                c["servfail_ttl"] = int(parse_duration(a[0].text))
            except ValueError as e:
                p.add(s.line, f"cache: servfail: {e}")
        elif s.name == "disable":
            if not a or a[0].text not in ("success", "denial"):
                p.add(s.line, "cache: disable success|denial")
                continue
            if len(a) > 1:
                p.add(s.line, "cache: disable with a zone list is not supported")
            c[f"{a[0].text}_capacity"] = 0
        elif s.name == "serve_stale":
            # serve_stale [DURATION] [immediate|verify]: immediate answers stale at once and refreshes in
            # the background; verify asks upstream first (here: for the client timer, 1.8 s).
            if len(a) > 2:
                p.add(s.line, "cache: serve_stale [DURATION] [immediate|verify]")
                continue
            try:
                c["serve_stale"] = parse_duration(a[0].text) if a else STALE_DEFAULT
            except ValueError as e:
                p.add(s.line, f"cache: serve_stale: {e}")
                continue
            if len(a) == 2:
                if a[1].text not in ("immediate", "verify"):
                    p.add(s.line, f"cache: serve_stale: refresh mode must be immediate or verify, got {a[1].text!r}")
                elif a[1].text == "immediate":
                    c["stale_client_timeout"] = 0.0
        elif s.name == "serve_stale_policy":
            if len(a) != 1 or a[0].text != "prefer_positive":
                p.add(s.line, "cache: serve_stale_policy prefer_positive")
                continue
            c["prefer_stale"] = True
        elif s.name == "prefetch":
            # prefetch AMOUNT [[DURATION] [PERCENTAGE%]]: AMOUNT hits (CoreDNS counts them within DURATION;
            # nodelocal within the entry's lifetime, which is at most its TTL).
            if not 1 <= len(a) <= 3:
                p.add(s.line, "cache: prefetch AMOUNT [[DURATION] [PERCENTAGE%]]")
                continue
            amount = num(a[0], "prefetch AMOUNT")
            if amount is None:
                continue
            c["prefetch_hits"], c["prefetch_percent"] = amount, PREFETCH_PERCENT_DEFAULT
            for t in a[1:]:
                if t.text.endswith("%"):
                    pct = t.text[:-1]
                    if not (pct.isdigit() and 1 <= int(pct) <= 99):
                        p.add(s.line, f"cache: prefetch PERCENTAGE must be 1%..99%, got {t.text!r}")
                        continue
                    c["prefetch_percent"] = int(pct)
                else:
                    notes.append(f"{src}:{s.line}: cache prefetch DURATION {t.text}: nodelocal counts hits over the "
                                 "entry's lifetime")
        elif s.name == "keepttl":
            notes.append(f"{src}:{s.line}: cache keepttl: read, not acted on (nodelocal does not keep upstream TTLs)")
        else:
            p.add(s.line, f"cache: unknown option {s.name!r} (known: success, denial, prefetch, serve_stale, "
                          "serve_stale_policy, servfail, disable, keepttl)")
    if mins:
        c["min_ttl"] = min(mins.values())
        if len(set(mins.values())) > 1:
            notes.append(f"{src}:{d.line}: cache: success and denial MINTTL differ; nodelocal has one min_ttl "
                         f"per zone and takes the smaller, {c['min_ttl']}")
    return c


def _acl(d: Directive, zones: list[str], p: _Problems) -> dict[str, Any] | None:
    """CoreDNS `acl [ZONES] { ACTION [type ...] [net ...] }` as nodelocal's one access list: any number of
    `allow net CIDR...` rules, then at most one final `block` or `drop` for every other source (no `net`,
    or `net *`). Rules are tried in order and an unmatched query is allowed (CoreDNS's semantics), so without
    that final rule everyone is answered. Exactly what it says: the node's ranges are not added."""
    for t in d.args:
        if zone_name(t.text) not in (".", *zones):
            p.add(t.line, f"acl: zone {t.text!r}: nodelocal has one access list for every zone of the block")
            return None
    allow: list[str] = []
    action: str | None = None
    for rule in d.block or []:
        words = [t.text for t in rule.args]
        if action is not None:
            p.add(rule.line, "acl: a rule after the final block/drop is never reached")
            return None
        if "type" in words:
            p.add(rule.line, "acl: per-type rules are not supported (ANY over UDP gets a minimal answer anyway)")
            return None
        nets = words[1:] if words[:1] == ["net"] else None
        if words and nets is None:
            p.add(rule.line, f"acl: expected `{rule.name} [net SOURCE...]`, got {' '.join(words)!r}")
            return None
        if rule.name == "allow":
            if not nets:
                p.add(rule.line, "acl: allow needs `net SOURCE...`")
                return None
            for n in nets:
                if n == "*":
                    allow += ["0.0.0.0/0", "::/0"]
                    continue
                try:
                    allow.append(str(ipaddress.ip_network(n, strict=False)))
                except ValueError:
                    p.add(rule.line, f"acl: {n!r} is not a CIDR")
                    return None
        elif rule.name in ("block", "drop"):
            if nets not in (None, ["*"]):
                p.add(rule.line, f"acl: {rule.name} takes every other source (no net, or net *): nodelocal's access "
                                 "list allows listed ranges and refuses or drops the rest")
                return None
            action = "refuse" if rule.name == "block" else "drop"
        else:
            p.add(rule.line, f"acl: action {rule.name!r} is not supported (allow, then a final block or drop)")
            return None
    if action is None:
        allow = ["0.0.0.0/0", "::/0"]  # nothing is blocked: every source is answered
    return {"allow": allow, "node_ranges": False, "action": action or "refuse"}


def _forward(d: Directive, zones: list[str], p: _Problems, notes: list[str], src: str,
             resolv_conf: str, max_concurrent: list[int]) -> _Forward | None:
    """CoreDNS `forward FROM TO... { force_tcp | prefer_udp | policy P | max_concurrent N | ... }`, and ours:
    `randomize_case on|off` (0x20; off for servers that do not preserve case)."""
    if len(d.args) < 2:
        p.add(d.line, "forward FROM TO... (at least one upstream)")
        return None
    frm = d.args[0].text.lower().rstrip(".") or "."
    if frm != "." and frm not in zones:
        p.add(d.line, f"forward: FROM {d.args[0].text!r} must be '.' or the block's zone (forwarding part of a "
                      "zone elsewhere needs a zone of its own)")
    servers: list[str] = []
    from_file = False
    origins = {t.origin for t in d.args[1:]}
    for t in d.args[1:]:
        target = t.text
        if target.startswith("/"):
            from_file = True
            path = resolv_conf if target == "/etc/resolv.conf" else target
            found = resolv_conf_nameservers(path)
            if not found:
                p.add(t.line, f"forward: no nameserver lines in {target}")
            servers.extend(format_hostport(parse_hostport(s, 53, "forward")) for s in found)
            continue
        if "://" in target:
            scheme, _, target = target.partition("://")
            if scheme != "dns":
                p.add(t.line, f"forward: {scheme}:// upstreams are not supported (plain DNS only)")
                continue
        try:
            servers.append(format_hostport(parse_hostport(target, 53, "forward")))
        except ConfigError as e:
            p.add(t.line, f"forward: {t.text!r}: {e.reason}")
    transport, policy = "udp", "random"  # CoreDNS forward's defaults
    randomize = True
    for s in d.block or []:
        if s.name == "force_tcp" and not s.args:
            transport = "tcp"
        elif s.name == "prefer_udp" and not s.args:
            transport = "udp"
        elif s.name == "policy" and len(s.args) == 1 and s.args[0].text in ("random", "round_robin", "sequential"):
            policy = s.args[0].text
        elif s.name == "randomize_case" and len(s.args) == 1 and s.args[0].text in ("on", "off"):
            randomize = s.args[0].text == "on"
        elif s.name == "max_concurrent" and len(s.args) == 1 and s.args[0].text.isdigit():
            max_concurrent.append(int(s.args[0].text))
        elif s.name in ("max_fails", "expire", "health_check", "failfast_all_unhealthy_upstreams"):
            notes.append(f"{src}:{s.line}: forward {s.name}: read, not acted on (nodelocal marks a server down "
                         "after 2 tries without a reply and keeps no connection older than its idle timeout)")
        elif s.name in ("force_tcp", "prefer_udp", "policy", "max_concurrent", "randomize_case"):
            p.add(s.line, f"forward: bad arguments for {s.name}: {' '.join(t.text for t in s.args)!r}")
        else:
            p.add(s.line, f"forward: option {s.name!r} is not supported (supported: force_tcp, prefer_udp, "
                          "policy, max_concurrent, randomize_case; read and noted: max_fails, expire, health_check)")
    origin = CLUSTER_DNS if CLUSTER_DNS in origins else UPSTREAM_SERVERS if UPSTREAM_SERVERS in origins else ""
    return _Forward(servers, transport, policy, origin, from_file, d.line, randomize)


def translate(blocks: Sequence[ServerBlock], *, source: str = "Corefile", resolv_conf: str = "/etc/resolv.conf",
              cluster_domain: str = "cluster.local", upstream_override: bool = False) -> Result:
    """The config tree (plain data) a parsed Corefile stands for; CorefileError lists every problem.

    upstream_override: the kube-dns ConfigMap set upstreamNameservers, so the forward that takes them
    speaks UDP whatever its block says (node-cache swaps the force_tcp block for a plain one).
    """
    p = _Problems(source)
    notes: list[str] = []
    zones: list[_Zone] = []
    binds: list[str] = []
    ports: dict[int, int] = {}
    health: list[tuple[str, int]] = []
    metrics: list[tuple[str, int]] = []
    max_concurrent: list[int] = []
    loop = False
    query_log: list[int] = []  # lines of `log` directives
    acls: list[tuple[dict[str, Any], int]] = []
    for b in blocks:
        names: list[str] = []
        for k in b.keys:
            zone, port, err = _zone_of(k.text)
            if err:
                p.add(k.line, f"server block {k.text!r}: {err}")
                continue
            names.append(zone)
            ports.setdefault(port or 53, k.line)
        cache: dict[str, Any] = {"success_capacity": 0, "denial_capacity": 0}  # no `cache`: nothing cached
        fwd: _Forward | None = None
        seen: dict[str, int] = {}
        for d in b.directives:
            if d.name in seen and d.name in ("cache", "forward", "bind", "health", "prometheus"):
                p.add(d.line, f"{d.name} given twice in one server block (first on line {seen[d.name]})")
                continue
            seen.setdefault(d.name, d.line)
            if d.block is not None and d.name not in ("cache", "forward", "health", "errors", "reload", "acl"):
                p.add(d.line, f"{d.name} takes no block here")
            if d.name == "bind":
                for t in d.args:
                    try:
                        ipaddress.ip_address(t.text)
                    except ValueError:
                        p.add(t.line, f"bind: {t.text!r} is not an IP address (interface names are not supported)")
                        continue
                    if t.text not in binds:
                        binds.append(t.text)
                if not d.args:
                    p.add(d.line, "bind needs at least one address")
            elif d.name == "cache":
                cache = _cache(d, p, notes, source)
            elif d.name == "forward":
                fwd = _forward(d, names, p, notes, source, resolv_conf, max_concurrent)
            elif d.name in ("health", "prometheus", "ready"):
                if len(d.args) > 1:
                    p.add(d.line, f"{d.name} takes one address, got {' '.join(t.text for t in d.args)!r}")
                    continue
                text = d.args[0].text if d.args else ""
                if d.name == "ready":
                    notes.append(f"{source}:{d.line}: ready: nodelocal serves /ready beside /health")
                    continue
                default = 8080 if d.name == "health" else 9153
                try:
                    addr = parse_hostport("0.0.0.0" + text if text.startswith(":") else text or "0.0.0.0",
                                          default, d.name)
                except ConfigError as e:
                    p.add(d.line, f"{d.name}: {text!r}: {e.reason}")
                    continue
                if d.name == "prometheus" and (not text or text.startswith(":")):
                    # CoreDNS binds every interface here; nodelocal's empty host is the node's own address and
                    # loopback (metrics_addr): the live page beside /metrics shows clients and names.
                    addr = ("", addr[1])
                    notes.append(f"{source}:{d.line}: prometheus {text or ':9153'}: served on the node's own "
                                 "address and 127.0.0.1, not every interface (metrics_addr 0.0.0.0:PORT for that)")
                (health if d.name == "health" else metrics).append(addr)
                if d.name == "health" and d.block:
                    notes.append(f"{source}:{d.line}: health lameduck: read, not acted on (the agent drains "
                                 "for up to 5 s on SIGTERM)")
            elif d.name == "loop":
                loop = True
            elif d.name == "acl":
                acl = _acl(d, names, p)
                if acl is not None:
                    acls.append((acl, d.line))
            elif d.name == "any":
                if d.args:
                    p.add(d.line, "any takes no arguments")
                # RFC 8482 minimal ANY answers are nodelocal's default (resolve.minimal_any): nothing to map.
            elif d.name == "log":
                # CoreDNS's query log: one log for every zone here, in its default format (log.queries).
                query_log.append(d.line)
                if d.args:
                    notes.append(f"{source}:{d.line}: log {' '.join(t.text for t in d.args)}: the query log is on "
                                 "for every zone, in CoreDNS's default format (log.format json for JSON); names "
                                 "and a custom format are not read")
            elif d.name in ("errors", "reload"):
                pass  # errors are always logged; config changes are always picked up (ConfigMap ..data, SIGHUP)
            else:
                p.add(d.line, f"directive {d.name!r} is not supported (the Corefile subset: "
                              f"{', '.join(DIRECTIVES)})")
        for name in names:
            if any(z.name == name for z in zones):
                p.add(b.line, f"zone {name!r} is served by two server blocks")
                continue
            zones.append(_Zone(name, cache, fwd, b.line))
            if fwd is None:
                p.add(b.line, f"zone {name!r} has no forward: nodelocal answers every zone from upstreams")
    if len({str(a) for a, _line in acls}) > 1:
        p.add(acls[1][1], "acl differs between server blocks: nodelocal has one access list for every zone")
    if acls and len(acls) < len(blocks):
        p.add(acls[0][1], "acl in some server blocks only: nodelocal has one access list, give it in every block")
    if len(ports) > 1:
        p.add(max(ports.values()), f"server blocks on different ports ({', '.join(map(str, sorted(ports)))}): "
                                   "nodelocal listens on one port")
    if zones and not any(z.name == "." for z in zones):
        p.add(blocks[-1].line if blocks else 1, "no '.' server block: names outside the Corefile's zones would "
                                                  "have no upstream")
    if not blocks:
        p.add(1, "no server block")
    p.raise_if_any()

    groups: dict[str, dict[str, Any]] = {}
    keys: dict[tuple[Any, ...], str] = {}
    zone_data: dict[str, Any] = {}
    # The cluster group first: named so that metrics and readiness treat it as the cluster DNS.
    def cluster_first(z: _Zone) -> tuple[bool, bool]:
        return (z.forward is None or z.forward.origin != CLUSTER_DNS, z.name != cluster_domain)

    ordered = sorted((z for z in zones if z.forward), key=cluster_first)
    for z in ordered:
        f = z.forward
        assert f is not None
        transport = "udp" if (f.origin == UPSTREAM_SERVERS and upstream_override) else f.transport
        if transport != f.transport:
            notes.append(f"{source}:{f.line}: forward: upstreamNameservers from the kube-dns ConfigMap are asked "
                         "over UDP (as node-cache does)")
        key = (tuple(f.servers), transport, f.policy, f.randomize_case)
        found = keys.get(key)
        if found is not None:
            name = found
        else:
            if "cluster" not in groups and (f.origin == CLUSTER_DNS or z.name == cluster_domain):
                name = "cluster"
            elif "host" not in groups and (f.origin == UPSTREAM_SERVERS or f.from_resolv_conf):
                name = "host"
            else:
                name = z.name if z.name not in groups and z.name not in ("cluster", "host") else f"forward-{z.name}"
            keys[key] = name
            groups[name] = {"servers": list(f.servers), "transport": transport, "policy": f.policy}
            if not f.randomize_case:
                groups[name]["randomize_case"] = False
        cache = dict(z.cache)
        if z.name == cluster_domain and "serve_stale" not in cache:
            cache["serve_stale"] = CLUSTER_SERVE_STALE  # pod IPs move: the cluster zone's shorter default
        zone_data[z.name] = {"forward": [name], "cache": cache}
    data: dict[str, Any] = {
        "upstreams": groups,
        "zones": {z.name: zone_data[z.name] for z in zones},
        "resolve": {"loop_detect": loop},
    }
    if acls:
        data["acl"] = acls[0][0]
    if query_log:
        data["log"] = {"queries": True}
        if len(query_log) < len(blocks):
            notes.append(f"{source}:{query_log[0]}: log in some server blocks only: nodelocal's query log covers "
                         "every zone")
    if binds:
        data["listen"] = {"localip": binds}
    port = next(iter(ports), 53)
    if port != 53:
        data.setdefault("listen", {})["port"] = port
    if max_concurrent:
        data["resolve"]["max_concurrent"] = max(max_concurrent)
        if len(set(max_concurrent)) > 1:
            notes.append(f"{source}: forward max_concurrent differs between blocks; nodelocal has one bound for "
                         f"all zones and takes the largest, {max(max_concurrent)}")
    if health:
        data["health_addr"] = format_hostport(health[0])
    if metrics:
        data["metrics_addr"] = format_hostport(metrics[0])
        if len(set(metrics)) > 1:
            notes.append(f"{source}: prometheus addresses differ between blocks; all metrics are served on "
                         f"{format_hostport(metrics[0])}")
    return Result(data, notes)


def looks_like_corefile(text: str) -> bool:
    """True when the first meaningful line opens a server block ('ZONE[:PORT] ... {'), not a YAML mapping."""
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            return line.endswith("{") and not line.startswith("{") and not re.match(r"^[A-Za-z_][\w-]*:\s", line)
    return False


def read(path: str, pillars: Pillars, *, env: Mapping[str, str] | None = None,
         resolv_conf: str = "/etc/resolv.conf") -> Result:
    """Read, fill, parse and translate one Corefile; ConfigError when it cannot be read."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ConfigError("-conf", path, f"cannot read: {e.strerror}") from None
    return load_text(text, pillars, source=path, env=env, resolv_conf=resolv_conf)


def load_text(text: str, pillars: Pillars, *, source: str = "Corefile", env: Mapping[str, str] | None = None,
              resolv_conf: str = "/etc/resolv.conf") -> Result:
    lines = fill(tokenize(text, source, env if env is not None else {}), pillars, source)
    return translate(parse(lines, source), source=source, resolv_conf=resolv_conf,
                     cluster_domain=pillars.cluster_domain, upstream_override=bool(pillars.upstream_servers))
