"""Reads the kube-dns ConfigMap (`stubDomains`, `upstreamNameservers`) and applies it as node-cache does.

The ConfigMap is mounted as a directory (node-cache's -kubednscm, /etc/kube-dns): one file per key,
each holding JSON. Each stub domain becomes a zone of its own forwarding to its servers over UDP with
a 30 s cache (node-cache's stubDomain block); `upstreamNameservers` replace the node's resolv.conf
as the `host` group. Validation follows kube-dns: at most 3 upstream nameservers, IP[:PORT] only.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from nodelocal import ConfigError
from nodelocal.config import Config, UpstreamGroup, Zone, format_hostport, parse_hostport, validate
from nodelocal.dns.names import zone_name

DEFAULT_DIR = "/etc/kube-dns"  # node-cache reads it when it exists, -kubednscm or not
MAX_UPSTREAMS = 3  # kube-dns's limit (pkg/dns/config: "upstreamNameservers cannot have more than 3 entries")
STUB_PREFIX = "stub-"  # upstream group name of a stub domain: stub-<domain>


@dataclass(frozen=True)
class KubeDNSConfig:
    """The two keys node-cache uses; both empty when the ConfigMap (or the key) is absent."""

    stub_domains: dict[str, tuple[str, ...]] = field(default_factory=dict)
    upstream_nameservers: tuple[str, ...] = ()


def _servers(path: str, value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(path, value, "expected a JSON list of IP[:PORT] strings")
    return tuple(format_hostport(parse_hostport(v, 53, f"{path}[{i}]")) for i, v in enumerate(value))


def _domain(path: str, name: object) -> str:
    if not isinstance(name, str):
        raise ConfigError(path, name, "expected a domain name")
    try:
        return zone_name(name)
    except ValueError as e:
        raise ConfigError(path, name, f"not a valid domain name: {e}") from None


def read_dir(directory: str) -> KubeDNSConfig:
    """The ConfigMap's keys from its mounted directory; a missing directory or key is empty, bad JSON an error."""
    base = Path(directory)
    if not base.is_dir():
        return KubeDNSConfig()
    values: dict[str, object] = {}
    for key in ("stubDomains", "upstreamNameservers"):
        f = base / key
        try:
            text = f.read_text()
        except FileNotFoundError:
            continue
        except OSError as e:
            raise ConfigError(str(f), key, f"cannot read: {e.strerror}") from None
        if not text.strip():
            continue
        try:
            values[key] = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(str(f), text.strip()[:80], f"not valid JSON: {e.msg} (line {e.lineno})") from None
    stubs: dict[str, tuple[str, ...]] = {}
    raw = values.get("stubDomains", {})
    if not isinstance(raw, dict):
        raise ConfigError(str(base / "stubDomains"), raw, "expected a JSON object {domain: [servers]}")
    for name, servers in raw.items():
        path = f"{base / 'stubDomains'}.{name}"
        stubs[_domain(path, name)] = _servers(path, servers)
        if not stubs[_domain(path, name)]:
            raise ConfigError(path, servers, "a stub domain needs at least one nameserver")
    ups = _servers(str(base / "upstreamNameservers"), values.get("upstreamNameservers", []))
    if len(ups) > MAX_UPSTREAMS:
        raise ConfigError(str(base / "upstreamNameservers"), list(ups),
                          f"at most {MAX_UPSTREAMS} upstream nameservers (kube-dns's limit)")
    return KubeDNSConfig(stubs, ups)


def apply(cfg: Config, kd: KubeDNSConfig, *, upstreams: bool = True, source: str = DEFAULT_DIR) -> Config:
    """cfg with a zone per stub domain and, when `upstreams`, the host group's servers replaced."""
    if not kd.stub_domains and not (upstreams and kd.upstream_nameservers):
        return cfg
    groups = dict(cfg.upstreams)
    zones = dict(cfg.zones)
    if upstreams and kd.upstream_nameservers:
        groups["host"] = dataclasses.replace(groups.get("host", UpstreamGroup()), servers=kd.upstream_nameservers)
    for domain, servers in kd.stub_domains.items():
        if domain in zones:
            raise ConfigError(f"{source}/stubDomains.{domain}", domain,
                              "the zone is configured already (a stub domain must be a zone of its own)")
        name = STUB_PREFIX + domain
        groups[name] = UpstreamGroup(servers=servers, transport="udp", policy="random")
        zones[domain] = Zone(forward=(name,))
    out = dataclasses.replace(cfg, upstreams=groups, zones=zones)
    validate(out)
    return out
