"""One typed, frozen config tree: defaults beside each field, loaded from YAML and flags, validated once.

Every error names the field path and the bad value (`upstreams.cluster.try_timeout: must be > 0`).
config/nodelocal.yaml documents every field; tests/unit/config/test_model.py checks it loads to these defaults.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nodelocal import ConfigError
from nodelocal.dns.names import zone_name

Address = tuple[str, int]


def parse_hostport(text: str, default_port: int, path: str) -> Address:
    """'1.2.3.4', '1.2.3.4:53', '::1', '[::1]:53' -> (ip, port). Only IP literals: no lookups at start.

    The IP comes back in canonical form ('FD00:0::53' -> 'fd00::53'), as the kernel reports addresses:
    a reply's source, our own listen addresses and metric labels then compare as equal strings.
    """
    text = text.strip()
    host, port = text, default_port
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise ConfigError(path, text, "unclosed '[' in address")
        host, rest = text[1:close], text[close + 1 :]
        if rest:
            if not rest.startswith(":") or not (rest[1:].isascii() and rest[1:].isdigit()):
                raise ConfigError(path, text, "expected [IPv6]:PORT")
            port = int(rest[1:])
    elif text.count(":") == 1:
        host, _, p = text.partition(":")
        if not (p.isascii() and p.isdigit()):
            raise ConfigError(path, text, "port is not a number")
        port = int(p)
    try:
        host = ipaddress.ip_address(host).compressed
    except ValueError:
        raise ConfigError(path, text, "not an IP address (HOST[:PORT], IPv6 as [ADDR]:PORT)") from None
    if not 0 <= port <= 65535:
        raise ConfigError(path, text, "port out of range 0-65535")
    return host, port


def format_hostport(addr: Address) -> str:
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _check(path: str, value: Any, *, lo: float | None = None, hi: float | None = None,
           choices: tuple[str, ...] | None = None) -> None:
    if choices is not None and value not in choices:
        raise ConfigError(path, value, f"must be one of {', '.join(choices)}")
    if lo is not None and value < lo:
        raise ConfigError(path, value, f"must be >= {lo}")
    if hi is not None and value > hi:
        raise ConfigError(path, value, f"must be <= {hi}")


def _f(default: Any, doc: str, **check: Any) -> Any:
    """A config field: its default, a one-line meaning, and the bounds validation enforces."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"doc": doc, **check})
    return field(default=default, metadata={"doc": doc, **check})


@dataclass(frozen=True)
class ListenConfig:
    """Where and how clients reach the agent."""

    localip: tuple[str, ...] = _f(("169.254.20.10",), "addresses to answer on (IPv4 and IPv6 may mix)")
    port: int = _f(53, "UDP and TCP port", lo=0, hi=65535)
    max_udp_payload: int = _f(4096, "largest UDP reply sent, whatever the client's EDNS size", lo=512, hi=65535)
    tcp_idle_timeout: float = _f(10.0, "seconds an idle client TCP connection stays open", lo=0.1)
    tcp_max_connections: int = _f(1024, "open client TCP connections; new ones past this are closed", lo=1)
    tcp_max_pipelined: int = _f(64, "queries of one TCP connection answered at once", lo=1)
    udp_rcvbuf: int = _f(212992, "bytes of the UDP sockets' receive buffer (SO_RCVBUF; the kernel doubles it): "
                                 "room for a burst of milliseconds, not a queue of seconds; 0 = kernel default",
                         lo=0)
    client_timeout: float = _f(2.0, "seconds after which a client no longer waits for an answer: a query older "
                                    "than this is dropped, not answered (nodelocal_dropped_queries_total{reason="
                                    "\"late\"})", lo=0.05)
    max_pending: int = _f(2000, "client queries on the slow path at once (misses, TCP excluded); past it new "
                                "misses are dropped before any work (reason=\"busy\"); hits are still answered",
                          lo=1)


@dataclass(frozen=True)
class UpstreamGroup:
    """A set of nameservers tried together; zones list groups in the order they fall through."""

    servers: tuple[str, ...] = _f((), "HOST[:PORT] list")
    transport: str = _f("udp", "udp (retry over TCP when truncated) or tcp", choices=("udp", "tcp"))
    policy: str = _f("sequential", "order of servers within the group",
                     choices=("sequential", "random", "round_robin"))
    try_timeout: float = _f(2.0, "seconds to wait for one server's reply", lo=0.01)
    udp_sockets: int = _f(8, "UDP sockets per server, each on a random source port and carrying many queries; "
                             "each query takes one at random, each is replaced after 1000 queries or 60 s", lo=1)
    tcp_connections: int = _f(4, "persistent TCP connections per server, each carrying many queries", lo=1)
    tcp_idle_timeout: float = _f(10.0, "seconds an unused upstream TCP connection is kept", lo=0.1)
    max_fails: int = _f(2, "tries in a row without any reply that mark a server down (skipped while another "
                           "server of the group is up, probed until it answers); 0 = never", lo=0)
    health_check: float = _f(0.5, "seconds between probes (`. IN NS`) of a server marked down", lo=0.01)
    udp_retransmit: float = _f(0.4, "seconds of silence after which a UDP query is sent again within one try "
                                    "(at most twice, each leaving this long again for the reply); 0 = off", lo=0)
    randomize_case: bool = _f(True, "send each query's name in random case (0x20) and drop a reply that does not "
                                    "echo it exactly (a forger must guess the case as well as ID and port); "
                                    "false for servers that do not preserve case")

    def addresses(self) -> tuple[Address, ...]:
        return tuple(parse_hostport(s, 53, "servers") for s in self.servers)


@dataclass(frozen=True)
class ZoneCache:
    """Cache caps and TTL clamps of one zone (node-local-dns: `cache { success 9984 30; denial 9984 5 }`)."""

    success_capacity: int = _f(9984, "positive answers kept", lo=0)
    denial_capacity: int = _f(9984, "negative answers (NXDOMAIN, NODATA, SERVFAIL) kept", lo=0)
    min_ttl: int = _f(5, "seconds; shorter TTLs are raised to this for caching", lo=0)
    success_max_ttl: int = _f(30, "seconds; longer positive TTLs are cut to this", lo=0)
    denial_max_ttl: int = _f(30, "seconds; longer negative TTLs are cut to this", lo=0)
    servfail_ttl: int = _f(5, "seconds an upstream SERVFAIL is cached; 0 = never", lo=0)
    serve_stale: float = _f(86400.0, "seconds past expiry an entry may still answer while every upstream of the "
                                     "zone fails (RFC 8767 serve-stale); 0 = off", lo=0)
    stale_ttl: int = _f(30, "TTL of a stale answer (RFC 8767 §4: 30 s)", lo=1)
    stale_client_timeout: float = _f(1.8, "seconds a client waits for an upstream before it gets the stale "
                                          "answer; the refresh goes on (RFC 8767 §5: 1.8 s)", lo=0.0)
    stale_recheck: float = _f(30.0, "seconds a name whose refresh failed is answered stale without asking "
                                    "upstream again (RFC 8767 failure recheck timer)", lo=0.0)
    prefer_stale: bool = _f(False, "last-known-good: while the zone's upstreams are degraded, prefer a stale "
                                   "positive answer over a new NXDOMAIN, NODATA or SERVFAIL (never while healthy)")
    prefetch_hits: int = _f(2, "hits an entry needs in its lifetime to be refreshed before it expires; 0 = off",
                            lo=0)
    prefetch_percent: int = _f(10, "refresh when less than this share of the TTL is left", lo=1, hi=99)


@dataclass(frozen=True)
class Zone:
    """A zone: which upstream groups answer it, in order, and how its answers are cached."""

    forward: tuple[str, ...] = _f(("cluster", "host"), "upstream group names, tried in this order")
    cache: ZoneCache = _f(ZoneCache(), "cache caps and TTL clamps")


@dataclass(frozen=True)
class CacheConfig:
    """The one answer cache shared by all zones."""

    max_bytes: int = _f(32 * 1024 * 1024, "byte budget of the whole cache", lo=4096)
    sweep_interval: float = _f(10.0, "seconds between reclaiming expired entries", lo=0.1)
    memory_limit: int = _f(0, "bytes of resident memory the agent sheds under: past memory_shed_percent of it the "
                              "cache is halved and the reply memos cleared, past 95% (and growing) new misses are "
                              "refused (hits and stale answers still go); 0 = the cgroup's limit (memory.max, "
                              "memory.limit_in_bytes), none without one; -1 = never shed", lo=-1)
    memory_shed_percent: int = _f(85, "share of memory_limit at which the cache is halved", lo=10, hi=95)


@dataclass(frozen=True)
class ResolveConfig:
    """The miss path."""

    query_timeout: float = _f(5.0, "seconds a client query may take over all tries, then SERVFAIL", lo=0.01)
    max_concurrent: int = _f(1000, "distinct upstream queries in flight; past it clients get REFUSED", lo=1)
    loop_detect: bool = _f(False, "at start and on reload, send each upstream a probe and stop forwarding to one "
                                  "that sends it back to the agent (CoreDNS `loop`)")
    prefetch_rate: int = _f(100, "prefetch refreshes started per second at most, over all zones", lo=1)
    minimal_any: bool = _f(True, "ANY queries over UDP get a minimal answer (RFC 8482: an HINFO \"RFC8482\"), "
                                 "never the upstream's whole set; over TCP they are forwarded as usual")


@dataclass(frozen=True)
class NetSetupConfig:
    """Network setup (when `setup` is on): the interface holding the local IPs and the conntrack-bypass rules."""

    interface_name: str = _f("nodelocaldns", "link holding every local IP (dummy; a bridge where there is no dummy)")
    rules_backend: str = _f("auto", "auto (the one kube-proxy uses), nft, iptables-nft or iptables-legacy",
                            choices=("auto", "nft", "iptables-nft", "iptables-legacy"))
    sync_interval: float = _f(60.0, "seconds between re-checks that put back removed rules or addresses", lo=0.1)
    skip_teardown: bool = _f(False, "leave interface and rules in place on exit")
    notrack_health_port: bool = _f(True, "skip conntrack for the health port (TCP) of every local IP too")
    kube_dns_ips: tuple[str, ...] = _f((), "kube-dns ClusterIP(s), where a local IP falls open to when the agent "
                                           "is down; empty = $KUBE_DNS_SERVICE_HOST, else the non-link-local localips")


@dataclass(frozen=True)
class LogConfig:
    """The query log (CoreDNS `log`): one line per answered query, off by default."""

    queries: bool = _f(False, "log answered queries (a Corefile's `log` turns it on); fixed at start")
    format: str = _f("coredns", "coredns (CoreDNS log's default format) or json (one object a line)",
                     choices=("coredns", "json"))
    sample: int = _f(1, "log one answered query in N", lo=1)
    rate: int = _f(0, "at most this many lines a second (after sampling); 0 = no cap", lo=0)
    buffer: int = _f(10000, "lines waiting to be written at most; past it new lines are dropped and counted", lo=1)
    output: str = _f("stdout", "stdout, stderr, or a file path (appended to)")


@dataclass(frozen=True)
class ControlConfig:
    """The agent's local control endpoint (nodelocal cache, nodelocal doctor): a Unix socket only root reaches."""

    socket: str = _f("/run/nodelocal/control.sock", "path of the control socket (mode 0600, owned by the agent's "
                                                    "user: root); empty = no control endpoint")
    max_dump: int = _f(10000, "entries one `cache dump` sends at most; past it the dump says it was cut", lo=1)
    timeout: float = _f(5.0, "seconds a control client may take to send its request and read the reply", lo=0.1)


@dataclass(frozen=True)
class ACLConfig:
    """Which clients are answered (access control). Everything else gets REFUSED or is dropped, is counted
    (nodelocal_client_limited_total{reason="acl"}), and is never looked up, cached or forwarded."""

    allow: tuple[str, ...] = _f((), "CIDRs answered besides the node's ranges (0.0.0.0/0 and ::/0: everyone, "
                                    "warned at start)")
    node_ranges: bool = _f(True, "also answer loopback, the node's own addresses and subnets, and the destinations "
                                 "of its routes (pod ranges; the default route excluded), re-read every "
                                 "netsetup.sync_interval")
    action: str = _f("refuse", "what a client outside the allowed ranges gets: refuse (REFUSED) or drop (nothing)",
                     choices=("refuse", "drop"))


@dataclass(frozen=True)
class ClientsConfig:
    """Per-client fairness: what one source address may take of the agent."""

    max_pending: int = _f(100, "queries of one client on the slow path (misses) at once; past it the client "
                               "gets REFUSED at once (reason=\"pending\"); 0 = no per-client cap", lo=0)
    rate: int = _f(0, "responses per second to one client (prefix) over UDP, RRL-style; past it replies are "
                      "dropped but every `slip`-th is a truncated (TC) reply that sends the client to TCP; "
                      "0 = off", lo=0)
    burst: int = _f(0, "responses one client may get at once above `rate` (token bucket size); 0 = rate", lo=0)
    slip: int = _f(2, "every Nth rate-limited reply is sent truncated (TC=1) rather than dropped; 0 = drop all, "
                      "1 = truncate all", lo=0)
    ipv4_prefix: int = _f(32, "IPv4 clients sharing these leading bits share one rate limit", lo=1, hi=32)
    ipv6_prefix: int = _f(64, "IPv6 clients sharing these leading bits share one rate limit", lo=1, hi=128)
    max_tracked: int = _f(16384, "clients (prefixes) whose rate is tracked at once; past it the least recently "
                                 "seen is forgotten", lo=16)


@dataclass(frozen=True)
class HandoverConfig:
    """Zero-downtime restart and upgrade: a new agent takes the running one's sockets and cache."""

    socket: str = _f("/run/nodelocal/handover.sock", "Unix socket (in a host directory both pods mount) where the "
                                                     "running agent hands its listeners and cache to a successor; "
                                                     "empty = off")
    timeout: float = _f(5.0, "seconds each step of a handover may take; past it the waiting side gives up and "
                             "falls back (the old agent keeps serving, or the new one binds itself)", lo=0.1)
    bind_retry: float = _f(10.0, "seconds a new agent retries a bind that finds the address in use, when a "
                                 "predecessor was there but did not hand over", lo=0)
    cache: bool = _f(True, "send the cache to the successor (remaining TTLs, never extended)")
    linger: bool = _f(False, "after handing over, wait for SIGTERM instead of exiting (a DaemonSet's container: "
                             "the kubelet would restart one that exits)")
    snapshot: str = _f("", "file the cache is written to every snapshot_interval and at exit, and read at a start "
                           "without a handover (after a crash or kill -9); empty = none")
    snapshot_interval: float = _f(30.0, "seconds between cache snapshots", lo=1.0)
    snapshot_max_age: float = _f(600.0, "seconds after which a snapshot is too old to start from", lo=0)


@dataclass(frozen=True)
class Config:
    """The whole agent config."""

    listen: ListenConfig = _f(ListenConfig(), "client-facing listeners")
    cluster_domain: str = _f("cluster.local", "the cluster zone (kubelet --cluster-domain)")
    upstreams: dict[str, UpstreamGroup] = _f({}, "named upstream groups")
    zones: dict[str, Zone] = _f({}, "zone name -> forwarding and caching; longest suffix wins")
    cache: CacheConfig = _f(CacheConfig(), "the answer cache")
    resolve: ResolveConfig = _f(ResolveConfig(), "the miss path")
    acl: ACLConfig = _f(ACLConfig(), "which clients are answered")
    clients: ClientsConfig = _f(ClientsConfig(), "what one client may take")
    setup: bool = _f(True, "create the interface and conntrack rules (network setup)")
    netsetup: NetSetupConfig = _f(NetSetupConfig(), "how network setup works")
    handover: HandoverConfig = _f(HandoverConfig(), "handing listeners and cache to a successor")
    metrics_addr: str = _f(":9253", "HOST:PORT serving /metrics, the live page and /api/stats; without HOST (:PORT) "
                                    "the node's own address ($NODELOCAL_NODE_IP, else the default route's source "
                                    "address) and 127.0.0.1, not every interface")
    page: bool = _f(True, "serve the live page (/) and /api/stats on metrics_addr, sampling queries for "
                          "its top names and clients")
    health_addr: str = _f("", "HOST:PORT serving /health and /ready; empty = first localip:8080")
    reload_interval: float = _f(2.0, "seconds between checks of the config files for a change (a ConfigMap's "
                                     "..data swap); 0 = on SIGHUP only", lo=0)
    pidfile: str = _f("", "write the agent's PID here once every listener is bound (node-cache's -pidfile)")
    log_level: str = _f("info", "debug, info, warning or error",
                        choices=("debug", "info", "warning", "error"))
    control: ControlConfig = _f(ControlConfig(), "the local control endpoint")
    log: LogConfig = _f(LogConfig(), "the query log")
    require_cluster_dns: bool = _f(True, "refuse to serve (and refuse a reload) when the zone that answers "
                                         "cluster_domain has no upstream server, as node-cache exits; false: "
                                         "serve and warn (its names get SERVFAIL)")

    def health_address(self) -> Address:
        if self.health_addr:
            return parse_hostport(self.health_addr, 8080, "health_addr")
        return (self.listen.localip[0], 8080)

    def metrics_address(self) -> Address:
        """The first address /metrics is served on (the node's own when metrics_addr has no host)."""
        return self.metrics_addresses()[0]

    def metrics_addresses(self) -> tuple[Address, ...]:
        """Where /metrics, the live page and /api/stats are served: metrics_addr, or without a host the node's
        own address and loopback (the page shows client addresses and queried names: not every interface)."""
        if self.metrics_addr.startswith(":"):
            port = parse_hostport("127.0.0.1" + self.metrics_addr, 9253, "metrics_addr")[1]
            node = node_address()
            return ((node, port), ("127.0.0.1", port)) if node != "127.0.0.1" else (("127.0.0.1", port),)
        return (parse_hostport(self.metrics_addr, 9253, "metrics_addr"),)


# --------------------------------------------------------------------------------------------------
# Building the tree from plain data (YAML, flags), with a field path in every error.

def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(tp: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(path, value, "expected a mapping")
        return _build(tp, value, path)  # type: ignore[arg-type]
    if origin is tuple:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise ConfigError(path, value, "expected a list")
        (item_tp, _) = typing.get_args(tp)
        return tuple(_coerce(item_tp, v, f"{path}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(path, value, "expected a mapping")
        _k, v_tp = typing.get_args(tp)
        return {str(k): _coerce(v_tp, v, f"{path}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(path, value, "expected true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(path, value, "expected a whole number")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(path, value, "expected a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(path, value, "expected a string")
        return value
    if isinstance(tp, types.UnionType):
        raise ConfigError(path, value, "unsupported type")
    raise ConfigError(path, value, f"unsupported type {tp}")


def _build(cls: type, data: dict[str, Any], path: str) -> Any:
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        sub = f"{path}.{key}" if path else str(key)
        f = fields.get(str(key))
        if f is None:
            raise ConfigError(sub, value, f"unknown field (known: {', '.join(fields)})")
        v = _coerce(hints[f.name], value, sub)
        check = {k: f.metadata[k] for k in ("lo", "hi", "choices") if k in f.metadata}
        if check:
            _check(sub, v, **check)
        kwargs[f.name] = v
    return cls(**kwargs)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


NODE_IP_ENV = "NODELOCAL_NODE_IP"  # the DaemonSet sets it from the downward API (status.hostIP)


def node_address(env: typing.Mapping[str, str] | None = None) -> str:
    """The node's own address: $NODELOCAL_NODE_IP, else the source address of the route to a documentation
    address (a UDP connect sends nothing), else 127.0.0.1 when the node has no such route."""
    env = os.environ if env is None else env
    ip = env.get(NODE_IP_ENV, "").strip()
    if ip:
        try:
            return ipaddress.ip_address(ip).compressed
        except ValueError:
            raise ConfigError(f"${NODE_IP_ENV}", ip, "not an IP address") from None
    import socket

    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))  # RFC 5737 TEST-NET-1: only the route lookup, no packet
            return str(s.getsockname()[0])
    except OSError:
        return "127.0.0.1"


def resolv_conf_nameservers(path: str = "/etc/resolv.conf") -> tuple[str, ...]:
    """The `nameserver` lines of a resolv.conf, as the node's own resolvers."""
    try:
        text = Path(path).read_text()
    except OSError:
        return ()
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            out.append(parts[1].split("%")[0])
    return tuple(out)


def cluster_dns_from_env(env: typing.Mapping[str, str], service: str = "kube-dns-upstream") -> tuple[str, ...]:
    """`<SERVICE>_SERVICE_HOST[_PORT]` as Kubernetes injects it (node-cache's -upstreamsvc)."""
    prefix = service.upper().replace("-", "_")
    host = env.get(f"{prefix}_SERVICE_HOST", "")
    if not host:
        return ()
    port = env.get(f"{prefix}_SERVICE_PORT", "53")
    if not (port.isascii() and port.isdigit()):
        raise ConfigError(f"${prefix}_SERVICE_PORT", port, "not a port number")
    return (format_hostport((host, int(port))),)


# The two groups every config has. The cluster DNS is spoken to over TCP (node-local-dns's force_tcp:
# no conntrack entry per query, no UDP races on the way to CoreDNS); the host nameservers over UDP.
GROUP_DEFAULTS: dict[str, Any] = {"upstreams": {"cluster": {"transport": "tcp"}, "host": {"transport": "udp"}}}


# Pod IPs move: a stale cluster answer is served for 10 minutes at most (the other zones: a day).
CLUSTER_SERVE_STALE = 600.0


def default_zones(cluster_domain: str) -> dict[str, Any]:
    """The zones node-local-dns's default Corefile defines (cluster domain, the two reverse zones, '.'),
    as plain data."""
    return {
        cluster_domain: {"forward": ["cluster"], "cache": {"denial_max_ttl": 5, "serve_stale": CLUSTER_SERVE_STALE}},
        "in-addr.arpa": {"forward": ["cluster"]},
        "ip6.arpa": {"forward": ["cluster"]},
        ".": {"forward": ["cluster", "host"]},
    }


def load(
    file: str | None = None,
    overrides: dict[str, Any] | None = None,
    env: typing.Mapping[str, str] | None = None,
    resolv_conf: str = "/etc/resolv.conf",
) -> Config:
    """Load file (YAML), apply flag overrides, fill environment defaults, validate; ConfigError if bad."""
    data: dict[str, Any] = {}
    if file is not None:
        try:
            raw = yaml.safe_load(Path(file).read_text())
        except OSError as e:
            raise ConfigError("--config", file, f"cannot read: {e.strerror}") from None
        except yaml.YAMLError as e:
            raise ConfigError("--config", file, f"not valid YAML: {e}") from None
        if raw is not None and not isinstance(raw, dict):
            raise ConfigError("(top level)", raw, "expected a mapping")
        data = raw or {}
    data = _merge(_merge(GROUP_DEFAULTS, data), overrides or {})
    env = os.environ if env is None else env

    cfg: Config = _build(Config, data, "")
    groups = dict(cfg.upstreams)
    if not groups["cluster"].servers:
        groups["cluster"] = dataclasses.replace(groups["cluster"], servers=cluster_dns_from_env(env))
    if not groups["host"].servers:
        groups["host"] = dataclasses.replace(groups["host"], servers=resolv_conf_nameservers(resolv_conf))
    zones = cfg.zones or _coerce(dict[str, Zone], default_zones(cfg.cluster_domain), "zones")
    cfg = dataclasses.replace(cfg, upstreams=groups, zones=zones)
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Cross-field checks the types cannot express."""
    if not cfg.listen.localip:
        raise ConfigError("listen.localip", cfg.listen.localip, "at least one address is needed")
    for i, ip in enumerate(cfg.listen.localip):
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            raise ConfigError(f"listen.localip[{i}]", ip, "not an IP address") from None
    for name, g in cfg.upstreams.items():
        for i, s in enumerate(g.servers):
            parse_hostport(s, 53, f"upstreams.{name}.servers[{i}]")
    for zname, z in cfg.zones.items():
        try:
            canonical = zone_name(zname)
        except ValueError as e:
            raise ConfigError(f"zones.{zname}", zname, f"not a zone name: {e}") from None
        if canonical != zname:
            raise ConfigError(f"zones.{zname}", zname, f"zone names are written in lower case without dots at "
                              f"the ends: {canonical!r}")
        if not z.forward:
            raise ConfigError(f"zones.{zname}.forward", z.forward, "at least one upstream group is needed")
        for i, gname in enumerate(z.forward):
            if gname not in cfg.upstreams:
                raise ConfigError(f"zones.{zname}.forward[{i}]", gname,
                                  f"no such upstream group (known: {', '.join(cfg.upstreams)})")
    if "." not in cfg.zones:
        raise ConfigError("zones", sorted(cfg.zones), "a '.' zone is needed for names no other zone covers")
    name = cfg.netsetup.interface_name
    if not 0 < len(name) <= 15 or "/" in name or any(c.isspace() for c in name) or name in (".", ".."):
        raise ConfigError("netsetup.interface_name", name, "not a Linux interface name (1-15 characters, "
                          "no '/' or spaces)")
    for i, net in enumerate(cfg.acl.allow):
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            raise ConfigError(f"acl.allow[{i}]", net, "not a CIDR (ADDRESS/PREFIX or ADDRESS)") from None
    for i, ip in enumerate(cfg.netsetup.kube_dns_ips):
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            raise ConfigError(f"netsetup.kube_dns_ips[{i}]", ip, "not an IP address") from None
    parse_hostport(("127.0.0.1" if cfg.metrics_addr.startswith(":") else "") + cfg.metrics_addr, 9253, "metrics_addr")
    if cfg.health_addr:
        parse_hostport(cfg.health_addr, 8080, "health_addr")


def zone_of(cfg: Config, name: str) -> str:
    """The configured zone that answers `name` (a zone name): the longest suffix, '.' at the end."""
    labels = [] if name == "." else name.split(".")
    for i in range(len(labels)):
        suffix = ".".join(labels[i:])
        if suffix in cfg.zones:
            return suffix
    return "."


def empty_zones(cfg: Config) -> list[str]:
    """Zones none of whose upstream groups has a server: every name in them gets SERVFAIL (or a stale answer)."""
    return [z for z, zone in cfg.zones.items() if not any(cfg.upstreams[g].servers for g in zone.forward)]


def upstream_gaps(cfg: Config) -> tuple[list[str], ConfigError | None]:
    """Warnings for zones without an upstream server, and the error when the cluster zone is one of them
    while require_cluster_dns holds (serve stops, check-config fails, a reload is refused)."""
    empty = empty_zones(cfg)
    warnings = [f"zone {z} has no upstream server (groups {', '.join(cfg.zones[z].forward)}: none): every name "
                "in it gets SERVFAIL" for z in empty]
    cluster = zone_of(cfg, cfg.cluster_domain)
    if cluster not in empty or not cfg.require_cluster_dns:
        return warnings, None
    first = cfg.zones[cluster].forward[0]
    return warnings, ConfigError(
        f"upstreams.{first}.servers", cfg.upstreams[first].servers,
        f"the cluster zone {cluster} has no upstream server, so every cluster name would get SERVFAIL: set "
        f"--cluster-dns (or $KUBE_DNS_UPSTREAM_SERVICE_HOST, the kube-dns-upstream Service), or "
        f"require_cluster_dns: false (--allow-no-cluster-dns) to serve anyway")


def describe(cfg: Config) -> str:
    """The effective zones and upstreams, one line each (check-config and the start-up log)."""
    lines = []
    for zname in sorted(cfg.zones, key=lambda z: (z == ".", z)):
        z = cfg.zones[zname]
        chain = " -> ".join(
            f"{g}[{cfg.upstreams[g].transport}: {', '.join(cfg.upstreams[g].servers) or 'no servers'}]"
            for g in z.forward
        )
        c = z.cache
        lines.append(
            f"zone {zname}: {chain}; cache success {c.success_capacity}/{c.success_max_ttl}s "
            f"denial {c.denial_capacity}/{c.denial_max_ttl}s min {c.min_ttl}s servfail {c.servfail_ttl}s"
        )
    return "\n".join(lines)
