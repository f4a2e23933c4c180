"""Command line: `nodelocal serve | check-config | dnsconfig | stats | cache | doctor | version`. Each serve flag
maps to one config field; node-cache's flags (Go spellings too) are accepted beside them (compat.py)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import re
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from nodelocal import ConfigError, ControlError, NodelocalError, __version__
from nodelocal.cli import dnsconfig
from nodelocal.cli import nodecache as compat
from nodelocal.cli.control import DEFAULT_SOCKET
from nodelocal.config import Config, describe, upstream_gaps
from nodelocal.config.source import Loaded, Source

# --dev: a laptop profile. Applied before the explicit flags, which still win.
DEV_PROFILE: dict[str, Any] = {
    "listen": {"localip": ["127.0.0.1"], "port": 5300},
    "setup": False,
    "metrics_addr": "127.0.0.1:9253",
    "health_addr": "127.0.0.1:8080",
    "require_cluster_dns": False,  # a laptop has no cluster DNS unless --cluster-dns names one: warn only
    "handover": {"socket": ""},  # /run/nodelocal is root's; a laptop agent does without
}


def config_default(path: str) -> Any:
    """The built-in default of a config field named by its dotted path (`listen.port` -> 53); KeyError if the
    path does not lead to a field with a default of its own (named groups, zones)."""
    node: Any = Config
    value: Any = None
    for part in path.split("."):
        if not dataclasses.is_dataclass(node):
            raise KeyError(path)
        fields = {f.name: f for f in dataclasses.fields(node)}
        f = fields[part]
        if f.default is not dataclasses.MISSING:
            value = f.default
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
        else:
            raise KeyError(path)
        node = value
    if isinstance(value, dict):
        raise KeyError(path)
    return value


def _shown(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value) or "none"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value) if value != "" else "none"


_FIELD = re.compile(r"\[([a-z_]+(?:\.[a-z_]+)*)\]")  # "[listen.port]": the config field a flag sets


class Formatter(argparse.HelpFormatter):
    """--help with every default: the flag's own (stats --interval), else that of the config field it sets,
    named in brackets in its help (`[listen.port]`), read from the config model so the two never differ."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if not action.option_strings or action.default is argparse.SUPPRESS or "default" in text:
            return text
        if action.default is not None and action.default is not False:
            return f"{text} (default: %(default)s)"
        m = _FIELD.search(text)
        if m is not None:
            try:
                value = config_default(m.group(1))
            except KeyError:
                return text
            return f"{text} (default: {_shown(value).replace('%', '%%')})"
        return text


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line in one line and exits 2, and shows defaults in --help."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _add_config_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="YAML config (config/nodelocal.yaml documents it)")
    p.add_argument("--localip", metavar="IP[,IP...]", help="addresses to answer on [listen.localip]")
    p.add_argument("--port", type=int, metavar="N", help="UDP/TCP port [listen.port]")
    p.add_argument("--cluster-dns", metavar="HOST[:PORT]",
                   help="cluster DNS to forward to [upstreams.cluster.servers]; "
                        "default $KUBE_DNS_UPSTREAM_SERVICE_HOST/_PORT")
    p.add_argument("--upstream", action="append", metavar="HOST[:PORT]",
                   help="host nameserver, repeatable [upstreams.host.servers]; default /etc/resolv.conf")
    p.add_argument("--cluster-domain", metavar="DOMAIN", help="cluster zone [cluster_domain]")
    p.add_argument("--no-setup", action="store_true", help="skip interface and rule setup [setup=false]")
    p.add_argument("--interface-name", metavar="NAME", help="link holding the local IPs [netsetup.interface_name]")
    p.add_argument("--rules-backend", choices=("auto", "nft", "iptables-nft", "iptables-legacy"),
                   help="where the conntrack-bypass rules go [netsetup.rules_backend]")
    p.add_argument("--sync-interval", type=float, metavar="SECONDS",
                   help="re-check interface and rules this often [netsetup.sync_interval]")
    p.add_argument("--skip-teardown", action="store_true",
                   help="leave interface and rules on exit [netsetup.skip_teardown=true]")
    p.add_argument("--allow", action="append", metavar="CIDR",
                   help="answer clients from CIDR too, repeatable [acl.allow]; beside the node's own ranges")
    p.add_argument("--handover-socket", metavar="PATH",
                   help="where a running agent hands its sockets and cache to a successor; '' = off "
                        "[handover.socket]")
    p.add_argument("--handover-snapshot", metavar="FILE",
                   help="cache snapshot written periodically and at exit, read at a start without a handover "
                        "[handover.snapshot]")
    p.add_argument("--handover-linger", action="store_true",
                   help="after handing over, wait for SIGTERM instead of exiting [handover.linger=true]")
    p.add_argument("--metrics-addr", metavar="HOST:PORT", help="serves /metrics [metrics_addr]")
    p.add_argument("--health-addr", metavar="HOST:PORT",
                   help="serves /health and /ready [health_addr]; default: the first localip, port 8080")
    p.add_argument("--control-socket", metavar="PATH",
                   help="socket for `nodelocal cache` and `nodelocal doctor`; empty = none [control.socket]")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"), help="[log_level]")
    p.add_argument("--query-log", action="store_true",
                   help="log every answered query, CoreDNS log's format, to stdout [log.queries=true]")
    p.add_argument("--query-log-format", choices=("coredns", "json"), help="[log.format]")
    p.add_argument("--allow-no-cluster-dns", action="store_true",
                   help="serve even when the cluster zone has no upstream server (warn only) "
                        "[require_cluster_dns=false]")
    p.add_argument("--dev", action="store_true",
                   help="laptop profile: 127.0.0.1:5300 (off the mDNS port 5353), no setup, loopback metrics and "
                        "health")
    compat.add_flags(p)


def build_parser() -> Parser:
    parser = Parser(prog="nodelocal", description="NodeLocal DNS caching agent for Kubernetes nodes.")
    parser.add_argument("--version", action="version", version=f"nodelocal {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    serve = sub.add_parser("serve", help="run the caching agent")
    _add_config_flags(serve)
    check = sub.add_parser("check-config", help="validate a config and print the effective zones")
    check.add_argument("file", nargs="?", help="YAML config; without it the defaults are checked")
    _add_config_flags(check)
    dnsc = sub.add_parser("dnsconfig", help="print the pod dnsPolicy/dnsConfig that sends a pod's DNS to the cache")
    dnsc.add_argument("--namespace", "-n", required=True, metavar="NS", help="the pod's namespace")
    dnsc.add_argument("--cluster-domain", default="cluster.local", metavar="DOMAIN", help="the cluster's domain")
    dnsc.add_argument("--ndots", type=int, default=5, metavar="N", help="ndots, as kubelet writes it")
    dnsc.add_argument("--nameserver", action="append", metavar="IP",
                      help=f"repeatable; default {dnsconfig.DEFAULT_NAMESERVER} (a second one, e.g. the kube-dns "
                           "ClusterIP, is asked when the first does not answer)")
    dnsc.add_argument("--json", action="store_true", help="JSON instead of YAML")
    stats = sub.add_parser("stats", help="a running agent's live figures (hit rate, QPS, latency, top names)")
    stats.add_argument("--addr", default="127.0.0.1:9253", metavar="HOST:PORT", help="the agent's metrics address")
    stats.add_argument("--watch", action="store_true", help="refresh until interrupted")
    stats.add_argument("--interval", type=float, default=2.0, metavar="SECONDS", help="--watch refresh period")
    stats.add_argument("--count", type=int, default=0, metavar="N", help="--watch: stop after N refreshes; 0 = never")
    stats.add_argument("--json", action="store_true", help="print /api/stats as JSON")
    cache = sub.add_parser("cache", help="see or flush a running agent's cache (through its control socket; root)")
    csub = cache.add_subparsers(dest="cache_command", required=True, parser_class=Parser)
    cdump = csub.add_parser("dump", help="the cached entries, or those of one NAME: type, rcode, TTL left, "
                                         "stale or not, the records")
    cdump.add_argument("name", nargs="?", metavar="NAME", help="only this name's entries (every type)")
    cdump.add_argument("--json", action="store_true", help="one JSON object per entry")
    cflush = csub.add_parser("flush", help="drop entries: one NAME (every type), a --zone, or --all")
    which = cflush.add_mutually_exclusive_group(required=True)
    which.add_argument("name", nargs="?", metavar="NAME", help="drop this name's entries (every type)")
    which.add_argument("--zone", metavar="ZONE", help="drop every entry at or below ZONE")
    which.add_argument("--all", action="store_true", help="drop every entry")
    doctor = sub.add_parser("doctor", help="explain this node's DNS path and what is wrong with it (root; exit 1 on "
                                           "a problem)")
    doctor.add_argument("name", nargs="?", metavar="NAME", help="also show this name's zone, upstreams, cache entry "
                                                                "and answer")
    doctor.add_argument("--json", action="store_true", help="findings and every fact looked at, as JSON")
    doctor.add_argument("--config", metavar="FILE", help="the agent's YAML config, used when no agent answers")
    for p in (cdump, cflush, doctor):
        p.add_argument("--socket", default=DEFAULT_SOCKET, metavar="PATH",
                       help="the agent's control socket [control.socket]")
    return parser


def run_doctor(args: argparse.Namespace) -> int:
    from nodelocal.cli import doctor as doctorcli
    from nodelocal.config import load

    try:
        cfg = load(args.config)
    except ConfigError as e:
        print(f"nodelocal: doctor: {e}", file=sys.stderr)
        return 2
    try:
        return doctorcli.run(args.socket, args.name or "", args.json, cfg,
                             f"--config {args.config}" if args.config else "the built-in defaults")
    except BrokenPipeError:
        sys.stderr.close()
        return 0


def run_cache(args: argparse.Namespace) -> int:
    from nodelocal.cli import cache as cachecli

    try:
        if args.cache_command == "dump":
            return cachecli.dump(args.socket, args.name, args.json)
        return cachecli.flush(args.socket, args.name, args.zone, args.all)
    except ControlError as e:
        print(f"nodelocal: cache {args.cache_command}: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `nodelocal cache dump | head`: the reader has all it wants
        sys.stderr.close()
        return 0


def run_stats(args: argparse.Namespace) -> int:
    from nodelocal.cli import stats as statscli

    if args.interval <= 0 or args.count < 0:
        print("nodelocal: stats: --interval must be > 0 and --count >= 0", file=sys.stderr)
        return 2
    try:
        return statscli.run(args.addr, args.watch, args.interval, args.count, args.json)
    except NodelocalError as e:
        print(f"nodelocal: {e}", file=sys.stderr)
        return 2 if isinstance(e, ConfigError) else 1
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:
        # The reader went away (`nodelocal stats --watch | head -2`). Python would report the pipe again
        # when it flushes stdout at exit: point stdout at /dev/null first, then end as a program killed by
        # SIGPIPE would (the shell's 141), without a traceback.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return statscli.EXIT_SIGPIPE


def overrides_from(args: argparse.Namespace) -> dict[str, Any]:
    """The config fields the flags set (the --dev profile first, explicit flags over it)."""
    out: dict[str, Any] = {}
    if args.dev:
        out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in DEV_PROFILE.items()}
    listen: dict[str, Any] = out.setdefault("listen", {})
    if args.localip is not None:
        listen["localip"] = [s for s in args.localip.split(",") if s]
    if args.port is not None:
        listen["port"] = args.port
    ups: dict[str, Any] = {}
    if args.cluster_dns is not None:
        ups["cluster"] = {"servers": [s for s in args.cluster_dns.split(",") if s]}
    if args.upstream:
        ups["host"] = {"servers": list(args.upstream)}
    if ups:
        out["upstreams"] = ups
    if args.cluster_domain is not None:
        out["cluster_domain"] = args.cluster_domain
    if args.allow:
        out["acl"] = {"allow": list(args.allow)}
    if args.no_setup:
        out["setup"] = False
    if args.allow_no_cluster_dns:
        out["require_cluster_dns"] = False
    qlog: dict[str, Any] = {}
    if args.query_log:
        qlog["queries"] = True
    if args.query_log_format is not None:
        qlog["format"] = args.query_log_format
    if qlog:
        out["log"] = qlog
    netsetup: dict[str, Any] = {}
    for flag in ("interface_name", "rules_backend", "sync_interval"):
        if getattr(args, flag) is not None:
            netsetup[flag] = getattr(args, flag)
    if args.skip_teardown:
        netsetup["skip_teardown"] = True
    if netsetup:
        out["netsetup"] = netsetup
    hand: dict[str, Any] = out.setdefault("handover", {})
    if args.handover_socket is not None:
        hand["socket"] = args.handover_socket
    if args.handover_linger:
        hand["linger"] = True
    if args.handover_snapshot is not None:
        hand["snapshot"] = args.handover_snapshot
    if not hand:
        del out["handover"]
    for flag, fieldname in (("metrics_addr", "metrics_addr"), ("health_addr", "health_addr"),
                            ("log_level", "log_level")):
        if getattr(args, flag) is not None:
            out[fieldname] = getattr(args, flag)
    if args.control_socket is not None:
        out["control"] = {"socket": args.control_socket}
    if not listen:
        del out["listen"]
    return out


def run_dnsconfig(args: argparse.Namespace) -> int:
    try:
        doc = dnsconfig.stanza(args.namespace, args.cluster_domain, args.ndots,
                               tuple(args.nameserver or (dnsconfig.DEFAULT_NAMESERVER,)))
    except ConfigError as e:
        print(f"nodelocal: {e}", file=sys.stderr)
        return 2
    sys.stdout.write(dnsconfig.render(doc, "json" if args.json else "yaml"))
    return 0


# What main() loaded the config from, for the agent to read it again on reload (run_serve's signature
# stays `run_serve(cfg)`: tests replace it).
_source: tuple[Source, Loaded] | None = None


def run_serve(cfg: Config) -> int:
    from nodelocal.agent.lifecycle import Agent

    source, loaded = _source if _source is not None and _source[1].config is cfg else (None, None)

    async def main() -> None:
        await Agent(cfg, source=source, loaded=loaded).run()

    try:
        import uvloop
    except ImportError:  # uvloop is a dependency; the fallback keeps odd platforms working
        asyncio.run(main())
    else:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(main())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    global _source
    args = build_parser().parse_args(compat.normalise(sys.argv[1:] if argv is None else argv))
    if args.command == "stats":
        return run_stats(args)
    if args.command == "dnsconfig":
        return run_dnsconfig(args)
    if args.command == "cache":
        return run_cache(args)
    if args.command == "doctor":
        return run_doctor(args)
    try:
        flags = overrides_from(args)
        notes = compat.overrides(args, flags)
        source = compat.build_source(args, flags)
        loaded = source.load()  # YAML or Corefile, + the kube-dns ConfigMap, + flags (source.py)
    except NodelocalError as e:
        print(f"nodelocal: {e}", file=sys.stderr)
        return 2
    cfg = loaded.config
    logging.basicConfig(level=cfg.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    notes += loaded.notes
    warnings, refused = upstream_gaps(cfg)
    if args.command == "check-config":
        print(describe(cfg))
        for note in notes:
            print(f"nodelocal: note: {note}", file=sys.stderr)
        for warning in warnings:
            print(f"nodelocal: warning: {warning}", file=sys.stderr)
        if refused is not None:
            print(f"nodelocal: {refused}", file=sys.stderr)
            return 2
        return 0
    if refused is not None:  # node-cache exits too: a cache that SERVFAILs every cluster name helps nobody
        print(f"nodelocal: {refused}", file=sys.stderr)
        return 2
    log = logging.getLogger("nodelocal")
    log.info("config from %s", f"{loaded.kind} {loaded.path}" if loaded.path else "defaults and flags")
    for note in notes:
        log.warning("%s", note)
    _source = (source, loaded)
    try:
        return run_serve(cfg)
    except NodelocalError as e:
        print(f"nodelocal: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
