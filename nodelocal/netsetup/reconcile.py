"""Network setup as a reconcile loop: interface, rules and heartbeat, re-checked every sync interval.

The agent calls, in this order (agent.py's lifecycle):
  ensure_link()   before binding: the local IPs must exist to bind to them
  ensure_rules()  after binding: NOTRACK without a listener would swallow DNS (the socket guard also
                  protects against that, but the order keeps the window shut for every backend)
  sync()          every netsetup.sync_interval: puts back whatever was removed, never duplicates
  heartbeat()     every HEARTBEAT_INTERVAL: keeps host-network clients' conntrack bypass alive
  teardown()      on exit unless netsetup.skip_teardown: rules first, then the interface
Every failure is a SetupError: counted by node-cache's error type, logged, never fatal (node-cache's
EnsureRule loop does the same); the next sync tries again.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager

from nodelocal.config import Config
from nodelocal.netsetup.backends import RulesBackend, detect, make
from nodelocal.netsetup.link import IPRouteLike, Link, local_elsewhere
from nodelocal.netsetup.metrics import SetupStats
from nodelocal.netsetup.plan import (
    PATH_DNAT_CLUSTERIP,
    PATH_DNAT_ENDPOINTS,
    PATH_KUBE_PROXY,
    PATH_NONE,
    PATH_REWRITE,
    Plan,
    build_plan,
    kube_dns_ips,
    paths_without_backend,
)
from nodelocal.netsetup.runner import CommandRunner, Runner, SetupError, capability_hint

log = logging.getLogger("nodelocal.netsetup")

IPRouteFactory = Callable[[], AbstractContextManager[IPRouteLike]]

_PATH_WORDS = {
    PATH_KUBE_PROXY: "it is the kube-dns ClusterIP: without a listener its packets are tracked and kube-proxy "
                     "DNATs them to CoreDNS",
    PATH_REWRITE: "destination rewritten to kube-dns {target} before NAT, so kube-proxy's DNAT picks a CoreDNS "
                  "endpoint",
    PATH_DNAT_CLUSTERIP: "DNAT to kube-dns {target}, a local address here (IPVS mode)",
    PATH_DNAT_ENDPOINTS: "DNAT to the CoreDNS endpoints kube-proxy lists for kube-dns {target}",
}


def _pyroute2_ipr() -> AbstractContextManager[IPRouteLike]:
    from pyroute2 import IPRoute

    ipr: AbstractContextManager[IPRouteLike] = IPRoute()
    return ipr


class NetSetup:
    """The interface and rules of one agent. Methods block (netlink, subprocesses): run them off the event loop."""

    def __init__(self, cfg: Config, stats: SetupStats, *, runner: Runner | None = None,
                 ipr_factory: IPRouteFactory | None = None, env: Mapping[str, str] | None = None) -> None:
        ns = cfg.netsetup
        self.stats = stats
        self.runner: Runner = runner or CommandRunner()
        self.ipr_factory = ipr_factory or _pyroute2_ipr
        self.link = Link(ns.interface_name, cfg.listen.localip)
        self.localips = tuple(cfg.listen.localip)
        self.port = cfg.listen.port
        self.health_port = cfg.health_address()[1] if ns.notrack_health_port else 0
        self.backend_name = ns.rules_backend
        self.kube_dns, self.kube_dns_source = kube_dns_ips(
            ns.kube_dns_ips, self.localips, os.environ if env is None else env)
        self.backend: RulesBackend | None = None
        self.plan: Plan | None = None
        self.rules_in = False  # the first ensure_rules() succeeded; later changes count as repairs
        self._beat_ok = True
        self._logged_paths: dict[str, str] = {}

    # -- helpers -----------------------------------------------------------------------------------

    def _failed(self, e: SetupError, what: str) -> None:
        self.stats.error(e.errortype)
        log.warning("network setup: %s failed (%s): %s", what, e.errortype, capability_hint(str(e)))

    def _backend(self) -> RulesBackend:
        if self.backend is None:
            name = self.backend_name
            if name == "auto":
                name, why = detect(self.runner)
                log.info("rules backend %s (auto: %s)", name, why)
            else:
                log.info("rules backend %s (configured)", name)
            self.backend = make(name, self.runner)
        return self.backend

    def _plan(self, ipr: IPRouteLike) -> Plan:
        return build_plan(self.localips, self.port, self.health_port, self.kube_dns,
                          lambda ip: local_elsewhere(ipr, ip, self.link.name))

    def _record_paths(self, plan: Plan, backend_paths: dict[str, str]) -> None:
        paths = {**paths_without_backend(plan, self.kube_dns), **backend_paths}
        self.stats.setup_failopen = dict(paths)
        for ip, path in paths.items():
            if self._logged_paths.get(ip) == path:
                continue
            self._logged_paths[ip] = path
            r = plan.redirect_of(ip)
            if path == PATH_NONE:
                why = (f"no kube-dns ClusterIP of its family is known (looked in {self.kube_dns_source})"
                       if r is None else f"no kube-proxy endpoints for kube-dns {r.target} in {self._backend().name}")
                log.warning("fail-open: %s has no path to CoreDNS while the agent is down: %s", ip, why)
            else:
                log.info("fail-open: %s: %s", ip, _PATH_WORDS[path].format(target=r.target if r else ""))

    # -- the steps -----------------------------------------------------------------------------------

    def ensure_link(self) -> bool:
        """Interface up with every local IP. True when something was changed; False also on failure (counted)."""
        try:
            with self.ipr_factory() as ipr:
                return self.link.ensure(ipr)
        except SetupError as e:
            self._failed(e, f"interface {self.link.name}")
        except Exception as e:  # netlink socket trouble: the kernel said no before we asked anything
            self._failed(SetupError("interface_check", str(e)), f"interface {self.link.name}")
        return False

    def ensure_rules(self) -> bool:
        """Rules as planned, then one heartbeat. True when rules were (re)written."""
        try:
            backend = self._backend()
            with self.ipr_factory() as ipr:
                plan = self._plan(ipr)
        except SetupError as e:
            self._failed(e, "rules (reading local addresses)")
            return False
        except Exception as e:  # the netlink socket itself failed
            self._failed(SetupError("interface_check", str(e)), "rules (reading local addresses)")
            return False
        try:
            changed, paths = backend.ensure(plan)
        except SetupError as e:
            self._failed(e, "rules")
            return False
        except Exception as e:  # unexpected output from a rule tool: counted and logged, never fatal
            log.exception("network setup: rules failed unexpectedly")
            self._failed(SetupError("iptables", repr(e)), "rules")
            return False
        if changed:
            log.log(logging.WARNING if self.rules_in else logging.INFO,
                    "rules %s (%s backend)", "repaired" if self.rules_in else "written", backend.name)
        self.plan = plan
        self._record_paths(plan, paths)
        self.rules_in = True
        self.heartbeat()
        return changed

    def sync(self) -> None:
        """One reconcile round: put back what is missing, count what had to be repaired."""
        self.stats.setup_reconciles += 1
        if self.ensure_link():
            self.stats.setup_repairs["interface"] = self.stats.setup_repairs.get("interface", 0) + 1
            log.warning("interface %s repaired", self.link.name)
        was_in = self.rules_in
        if self.ensure_rules() and was_in:
            self.stats.setup_repairs["rules"] = self.stats.setup_repairs.get("rules", 0) + 1

    def heartbeat(self) -> None:
        if self.backend is None or self.plan is None:
            return
        try:
            self.backend.heartbeat(self.plan)
        except SetupError as e:
            self.stats.error(e.errortype)
            if self._beat_ok:  # log the change, not every second of it
                log.warning("network setup: heartbeat failed (%s): %s", e.errortype, e)
            self._beat_ok = False
        else:
            if not self._beat_ok:
                log.info("network setup: heartbeat works again")
            self._beat_ok = True

    def teardown(self) -> None:
        """Rules first (so traffic falls back to kube-proxy's path at once), then the interface."""
        try:
            backend = self._backend()
            if backend.remove():
                log.info("rules removed (%s backend)", backend.name)
        except SetupError as e:
            self._failed(e, "removing rules")
        try:
            with self.ipr_factory() as ipr:
                self.link.remove(ipr)
        except SetupError as e:
            self._failed(e, f"removing interface {self.link.name}")
        except Exception as e:
            self._failed(SetupError("interface_check", str(e)), f"removing interface {self.link.name}")
        self.stats.setup_failopen = {}
