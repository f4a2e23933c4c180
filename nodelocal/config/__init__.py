"""Configuration: one typed, frozen model (model.py) and where it comes from.

Data flow: YAML (model.load) or a node-local-dns Corefile (corefile.py) -> + the kube-dns ConfigMap
(kubedns.py) -> + command-line flags -> a validated Config (source.py reads it all again on reload).
This package's face is the model: `from nodelocal.config import Config` and its helpers.
"""

from __future__ import annotations

from nodelocal.config.model import (
    ACLConfig,
    Address,
    CacheConfig,
    ClientsConfig,
    Config,
    ControlConfig,
    HandoverConfig,
    ListenConfig,
    NetSetupConfig,
    ResolveConfig,
    UpstreamGroup,
    Zone,
    ZoneCache,
    describe,
    empty_zones,
    format_hostport,
    load,
    parse_hostport,
    resolv_conf_nameservers,
    upstream_gaps,
    validate,
    zone_of,
)

__all__ = [
    "ACLConfig",
    "Address",
    "CacheConfig",
    "ClientsConfig",
    "Config",
    "ControlConfig",
    "HandoverConfig",
    "ListenConfig",
    "NetSetupConfig",
    "ResolveConfig",
    "UpstreamGroup",
    "Zone",
    "ZoneCache",
    "describe",
    "empty_zones",
    "format_hostport",
    "load",
    "parse_hostport",
    "resolv_conf_nameservers",
    "upstream_gaps",
    "validate",
    "zone_of",
]
