"""Command line: `nodelocal serve | check-config | version`. Each serve flag maps to one config field."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from nodelocal import __version__
from nodelocal.config import Config, describe, load
from nodelocal.errors import NodelocalError

# --dev: a laptop profile. Applied before the explicit flags, which still win.
DEV_PROFILE: dict[str, Any] = {
    "listen": {"localip": ["127.0.0.1"], "port": 5353},
    "setup": False,
    "metrics_addr": "127.0.0.1:9253",
    "health_addr": "127.0.0.1:8080",
}


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line in one line and exits 2."""

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
    p.add_argument("--metrics-addr", metavar="HOST:PORT", help="serves /metrics [metrics_addr]")
    p.add_argument("--health-addr", metavar="HOST:PORT", help="serves /health and /ready [health_addr]")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"), help="[log_level]")
    p.add_argument("--dev", action="store_true",
                   help="laptop profile: 127.0.0.1:5353, no setup, loopback metrics and health")


def build_parser() -> Parser:
    parser = Parser(prog="nodelocal", description="NodeLocal DNS caching agent for Kubernetes nodes.")
    parser.add_argument("--version", action="version", version=f"nodelocal {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    serve = sub.add_parser("serve", help="run the caching agent")
    _add_config_flags(serve)
    check = sub.add_parser("check-config", help="validate a config and print the effective zones")
    check.add_argument("file", nargs="?", help="YAML config; without it the defaults are checked")
    _add_config_flags(check)
    return parser


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
    if args.no_setup:
        out["setup"] = False
    for flag, fieldname in (("metrics_addr", "metrics_addr"), ("health_addr", "health_addr"),
                            ("log_level", "log_level")):
        if getattr(args, flag) is not None:
            out[fieldname] = getattr(args, flag)
    if not listen:
        del out["listen"]
    return out


def run_serve(cfg: Config) -> int:
    from nodelocal.agent import Agent

    async def main() -> None:
        await Agent(cfg).run()

    try:
        import uvloop
    except ImportError:  # uvloop is a dependency; the fallback keeps odd platforms working
        asyncio.run(main())
    else:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(main())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    file = getattr(args, "file", None) or args.config
    try:
        cfg = load(file, overrides_from(args))
    except NodelocalError as e:
        print(f"nodelocal: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(level=cfg.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "check-config":
        print(describe(cfg))
        return 0
    try:
        return run_serve(cfg)
    except NodelocalError as e:
        print(f"nodelocal: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
