"""node-cache's command line on nodelocal: its flag spellings, Go's flag forms, and its Corefile as config.

A node-local-dns DaemonSet keeps its args when only the image changes: `-localip 169.254.20.10,10.0.0.10
-conf /etc/Corefile -upstreamsvc kube-dns-upstream -setupiptables=false` ... Go's flag package takes
`-name`, `--name`, `-name=value` and `-name value` (booleans only `-name` or `-name=false`); normalise()
rewrites the known names to argparse's `--name[=value]` before parsing, and a command line that starts
with such a flag (no subcommand: the add-on's args) means `serve`.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from nodelocal import ConfigError
from nodelocal.config import kubedns
from nodelocal.config.corefile import looks_like_corefile, parse_duration
from nodelocal.config.model import cluster_dns_from_env
from nodelocal.config.source import DEFAULT_UPSTREAM_SVC, Source, pick_corefile

# node-cache's flags (cmd/node-cache/main.go) and the CoreDNS ones it passes through (-conf, -dns.port,
# -pidfile); each is also accepted with two dashes. -corefile is node-cache's older name for -conf.
GO_FLAGS = (
    "localip", "conf", "corefile", "basecorefile", "upstreamsvc", "setupinterface", "setupiptables",
    "setupebtables", "skipteardown", "syncinterval", "initialdelay", "health-port", "interfacename",
    "metrics-listen-address", "pidfile", "kubednscm", "dns.port",
)


def normalise(argv: Sequence[str]) -> list[str]:
    """Go flag forms of node-cache's flags -> argparse's; `serve` put in front when no subcommand is given."""
    out: list[str] = []
    for a in argv:
        if a.startswith("-") and not a.startswith("--") and len(a) > 2:
            name, eq, value = a[1:].partition("=")
            if name in GO_FLAGS:
                a = f"--{name}{eq}{value}"
        out.append(a)
    if out and out[0].startswith("--") and out[0].split("=", 1)[0][2:] in GO_FLAGS:
        out.insert(0, "serve")
    return out


def go_bool(text: str) -> bool:
    """Go's strconv.ParseBool."""
    t = text.strip()
    if t in ("1", "t", "T", "true", "TRUE", "True"):
        return True
    if t in ("0", "f", "F", "false", "FALSE", "False"):
        return False
    raise argparse.ArgumentTypeError(f"not a boolean: {text!r} (true or false)")


def seconds(text: str) -> float:
    """-syncinterval: node-cache multiplies the value by a second, so `30`, and Go durations like `30s`."""
    try:
        return parse_duration(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 30, 30s, 1m)") from None


def add_flags(p: argparse.ArgumentParser) -> None:
    """node-cache's flags, each mapped to the config field or source it sets (shown in --help)."""
    g = p.add_argument_group(
        "node-cache compatible flags", "node-local-dns's DaemonSet args work unchanged; Go's forms are accepted "
        "(-flag, -flag=value, -flag value)")
    g.add_argument("--conf", "--corefile", dest="conf", metavar="FILE",
                   help="Corefile to read (node-cache writes it from -basecorefile; read when that is absent)")
    g.add_argument("--basecorefile", metavar="FILE",
                   help="node-local-dns's Corefile, its ConfigMap (default /etc/coredns/Corefile.base when -conf "
                        "is given and it exists)")
    g.add_argument("--upstreamsvc", "--upstream-service", dest="upstreamsvc", metavar="NAME",
                   help="Service whose $<NAME>_SERVICE_HOST is the cluster DNS (__PILLAR__CLUSTER__DNS__) "
                        f"[upstreams.cluster.servers]; default {DEFAULT_UPSTREAM_SVC}")
    g.add_argument("--kubednscm", "--kube-dns-configmap", dest="kubednscm", metavar="DIR",
                   help="kube-dns ConfigMap directory: stubDomains become zones, upstreamNameservers the host "
                        "group (with a Corefile, /etc/kube-dns when it exists)")
    g.add_argument("--setupinterface", type=go_bool, nargs="?", const=True, metavar="BOOL",
                   help="false: no network setup at all [setup=false] (interface and rules go together here)")
    g.add_argument("--setupiptables", type=go_bool, nargs="?", const=True, metavar="BOOL",
                   help="false: no network setup at all [setup=false]")
    g.add_argument("--skipteardown", type=go_bool, nargs="?", const=True, metavar="BOOL",
                   help="[netsetup.skip_teardown]")
    g.add_argument("--syncinterval", dest="sync_interval", type=seconds, metavar="DURATION",
                   help="[netsetup.sync_interval] (30, 30s, 1m)")
    g.add_argument("--interfacename", dest="interface_name", metavar="NAME", help="[netsetup.interface_name]")
    g.add_argument("--health-port", dest="health_port", type=int, metavar="N",
                   help="port of the health address when none is set (first localip:N)")
    g.add_argument("--dns.port", dest="port", type=int, metavar="N", help="[listen.port]")
    g.add_argument("--pidfile", metavar="FILE", help="PID file, written once every listener is bound [pidfile]")
    g.add_argument("--metrics-listen-address", dest="metrics_listen_address", metavar="HOST:PORT",
                   help="accepted; every metric, setup errors included, is on the metrics address "
                        "(prometheus directive or --metrics-addr)")
    g.add_argument("--setupebtables", type=go_bool, nargs="?", const=True, metavar="BOOL",
                   help="accepted; must be false (no ebtables rules here)")
    g.add_argument("--initialdelay", metavar="DURATION", help="accepted and ignored (an old node-cache flag)")


def overrides(args: argparse.Namespace, out: dict[str, Any]) -> list[str]:
    """Add the config fields node-cache's flags set to `out`; notes on flags accepted but not acted on."""
    notes: list[str] = []
    if args.setupinterface is False or args.setupiptables is False:
        out["setup"] = False
        if (args.setupinterface, args.setupiptables).count(False) == 1:
            notes.append("-setupinterface/-setupiptables: network setup is one step here (interface and rules): "
                         "one of them false turns off both")
    if args.skipteardown is not None:
        out.setdefault("netsetup", {})["skip_teardown"] = args.skipteardown
    if args.pidfile is not None:
        out["pidfile"] = args.pidfile
    if args.metrics_listen_address is not None:
        notes.append(f"-metrics-listen-address {args.metrics_listen_address}: accepted; setup-error metrics are "
                     "served with all the others on the metrics address")
    if args.setupebtables:
        raise ConfigError("-setupebtables", True, "ebtables rules are not supported")
    if args.initialdelay is not None:
        notes.append("-initialdelay: accepted and ignored (rules go in as soon as the listeners are bound)")
    return notes


def build_source(args: argparse.Namespace, flag_overrides: dict[str, Any],
                 env: Mapping[str, str] | None = None) -> Source:
    """The Source a command line describes: YAML (--config / check-config FILE) or a Corefile (-conf)."""
    env = os.environ if env is None else env
    file = getattr(args, "file", None) or args.config
    corefile_path: str | None = None
    if args.conf or args.basecorefile:
        if file:
            raise ConfigError("--config", file, "give either a YAML config or a Corefile (-conf/-basecorefile)")
        corefile_path = pick_corefile(args.conf, args.basecorefile)
    elif file and Path(file).is_file() and looks_like_corefile(Path(file).read_text(errors="replace")):
        corefile_path, file = file, None
    kubedns_dir = args.kubednscm
    if kubedns_dir is None and corefile_path and Path(kubedns.DEFAULT_DIR).is_dir():
        kubedns_dir = kubedns.DEFAULT_DIR  # node-cache's default: the add-on mounts it there
    svc = args.upstreamsvc or DEFAULT_UPSTREAM_SVC
    if args.upstreamsvc and not corefile_path and args.cluster_dns is None:
        servers = cluster_dns_from_env(env, svc)
        if servers:
            flag_overrides.setdefault("upstreams", {}).setdefault("cluster", {})["servers"] = list(servers)
    return Source(file=file, corefile=corefile_path, overrides=flag_overrides, kubedns_dir=kubedns_dir,
                  upstream_svc=svc, health_port=args.health_port, env=env)
