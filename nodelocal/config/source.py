"""Where the agent's config comes from, so that it can be read again on reload: YAML or a Corefile, plus
the kube-dns ConfigMap and the flags.

  yaml      --config FILE (config/nodelocal.yaml's format), or no file: the defaults
  corefile  node-local-dns's Corefile (-basecorefile, else -conf): corefile.py, __PILLAR__s from flags/env
Either way the kube-dns ConfigMap directory (-kubednscm; /etc/kube-dns when it exists and a Corefile is
read, as node-cache does) adds its stub domains, and flags win over the file. Every load() starts
from the files again, which is what a reload needs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nodelocal import ConfigError
from nodelocal.config import Config, corefile, format_hostport, kubedns, model

DEFAULT_BASECOREFILE = "/etc/coredns/Corefile.base"  # node-cache's -basecorefile default
DEFAULT_UPSTREAM_SVC = "kube-dns-upstream"  # node-cache's default is kube-dns, the very ClusterIP we bind


@dataclass(frozen=True)
class Loaded:
    """A loaded config and what was read but not acted on (notes, for the log and check-config)."""

    config: Config
    notes: tuple[str, ...] = ()
    kind: str = "yaml"
    path: str | None = None
    fingerprint: str = ""  # Source.fingerprint() taken before reading: a change while reading is seen next time


@dataclass
class Source:
    """Everything needed to (re)load the config; built once from the command line."""

    file: str | None = None  # YAML config
    corefile: str | None = None  # Corefile path (already chosen between -basecorefile and -conf)
    overrides: dict[str, Any] = field(default_factory=dict)  # from flags
    kubedns_dir: str | None = None
    upstream_svc: str = DEFAULT_UPSTREAM_SVC
    health_port: int | None = None  # -health-port: the health address's port when no address is set
    env: Mapping[str, str] | None = None
    resolv_conf: str = "/etc/resolv.conf"

    @property
    def kind(self) -> str:
        return "corefile" if self.corefile else "yaml"

    def _env(self) -> Mapping[str, str]:
        return os.environ if self.env is None else self.env

    def load(self) -> Loaded:
        """Read every file again and build a validated Config; ConfigError (CorefileError) when it is bad."""
        env = self._env()
        fp = self.fingerprint()
        kd = kubedns.read_dir(self.kubedns_dir) if self.kubedns_dir else kubedns.KubeDNSConfig()
        notes: list[str] = []
        if self.corefile:
            listen = self.overrides.get("listen", {})
            cluster = self.overrides.get("upstreams", {}).get("cluster", {}).get("servers")
            prefix = self.upstream_svc.upper().replace("-", "_")
            pillars = corefile.Pillars(
                local_ips=tuple(listen["localip"]) if "localip" in listen else None,
                cluster_dns=" ".join(cluster) if cluster else env.get(f"{prefix}_SERVICE_HOST") or None,
                cluster_dns_source=f"${prefix}_SERVICE_HOST",
                upstream_servers=kd.upstream_nameservers,
                cluster_domain=self.overrides.get("cluster_domain", "cluster.local"),
            )
            res = corefile.read(self.corefile, pillars, env=env, resolv_conf=self.resolv_conf)
            notes += res.notes
            cfg = model.load(None, model._merge(res.data, self.overrides), env=env, resolv_conf=self.resolv_conf)
            cfg = kubedns.apply(cfg, kd, upstreams=False, source=self.kubedns_dir or kubedns.DEFAULT_DIR)
        else:
            cfg = model.load(self.file, self.overrides, env=env, resolv_conf=self.resolv_conf)
            cfg = kubedns.apply(cfg, kd, upstreams=True, source=self.kubedns_dir or kubedns.DEFAULT_DIR)
        if kd.stub_domains or kd.upstream_nameservers:
            notes.append(f"{self.kubedns_dir}: kube-dns ConfigMap: {len(kd.stub_domains)} stub domain(s)"
                         + (f", upstreamNameservers {', '.join(kd.upstream_nameservers)}"
                            if kd.upstream_nameservers else ""))
        if self.health_port is not None and not cfg.health_addr:
            cfg = dataclasses.replace(cfg, health_addr=format_hostport((cfg.listen.localip[0], self.health_port)))
            model.validate(cfg)
        return Loaded(cfg, tuple(notes), self.kind, self.corefile or self.file, fp)

    def watched(self) -> list[Path]:
        """The files and directories a reload reads."""
        out = [Path(p) for p in (self.corefile or self.file, self.kubedns_dir) if p]
        return out

    def fingerprint(self) -> str:
        """A digest of everything load() reads (content, not timestamps): equal digests, same config."""
        h = hashlib.sha256()
        for p in self.watched():
            h.update(str(p).encode() + b"\0")
            for f in _files(p):
                try:
                    h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
                except OSError:
                    h.update(b"unreadable\0")
        return h.hexdigest()


def _files(p: Path) -> list[Path]:
    """A file itself, or a ConfigMap directory's visible files (its keys: symlinks into ..data)."""
    if p.is_dir():
        return sorted(f for f in p.iterdir() if not f.name.startswith(".") and f.is_file())
    return [p] if p.exists() else []


def pick_corefile(conf: str | None, basecorefile: str | None,
                  default_base: str = DEFAULT_BASECOREFILE) -> str | None:
    """node-cache reads -basecorefile (its ConfigMap) and writes -conf; we read the first that exists.

    An explicit -basecorefile must exist; with only -conf, the default base path is tried first, so the
    add-on's args (`-conf /etc/Corefile`, ConfigMap at /etc/coredns/Corefile.base) work unchanged.
    """
    if basecorefile:
        if not Path(basecorefile).exists():
            raise ConfigError("-basecorefile", basecorefile, "no such file")
        return basecorefile
    if conf is None:
        return None
    if Path(default_base).exists():
        return default_base
    if not Path(conf).exists():
        raise ConfigError("-conf", conf, f"no such file (nor {default_base})")
    return conf
