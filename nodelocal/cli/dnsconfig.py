"""`nodelocal dnsconfig`: the pod spec fields that send a pod's DNS to the node-local cache.

In IPVS mode (and for pods chosen one by one in any mode) a pod reaches the cache only if its
resolv.conf names the link-local address. `dnsPolicy: None` with a `dnsConfig` does that; the search
list and ndots must then be spelled out as kubelet would have written them (ClusterFirst):
`<namespace>.svc.<domain> svc.<domain> <domain>`, ndots 5.
"""

from __future__ import annotations

import ipaddress
import json
import re
from typing import Any

from nodelocal import ConfigError
from nodelocal.dns.names import zone_name

DEFAULT_NAMESERVER = "169.254.20.10"
_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def stanza(namespace: str, cluster_domain: str = "cluster.local", ndots: int = 5,
           nameservers: tuple[str, ...] = (DEFAULT_NAMESERVER,)) -> dict[str, Any]:
    """dnsPolicy + dnsConfig for a pod in `namespace`; ConfigError names a bad argument."""
    if not _LABEL.match(namespace) or len(namespace) > 63:
        raise ConfigError("--namespace", namespace, "not a Kubernetes namespace name (RFC 1123 label)")
    try:
        domain = zone_name(cluster_domain)
    except ValueError as e:
        raise ConfigError("--cluster-domain", cluster_domain, f"not a domain name: {e}") from None
    if domain == ".":
        raise ConfigError("--cluster-domain", cluster_domain, "not a domain name: the root")
    if not 0 <= ndots <= 15:
        raise ConfigError("--ndots", ndots, "must be 0-15 (resolv.conf caps it at 15)")
    if not 1 <= len(nameservers) <= 3:
        raise ConfigError("--nameserver", list(nameservers), "1 to 3 nameservers (resolv.conf's limit)")
    for ns in nameservers:
        try:
            ipaddress.ip_address(ns)
        except ValueError:
            raise ConfigError("--nameserver", ns, "not an IP address") from None
    return {
        "dnsPolicy": "None",
        "dnsConfig": {
            "nameservers": list(nameservers),
            "searches": [f"{namespace}.svc.{domain}", f"svc.{domain}", domain],
            "options": [{"name": "ndots", "value": str(ndots)}],
        },
    }


def render(doc: dict[str, Any], fmt: str = "yaml") -> str:
    """The stanza as YAML to paste under a pod's `spec:` (with a comment), or as JSON."""
    if fmt == "json":
        return json.dumps(doc, indent=2) + "\n"
    cfg = doc["dnsConfig"]
    lines = [
        "# Pod spec fields (under spec:, or spec.template.spec:): DNS through the node-local cache.",
        f"# Every pod of a node instead: kubelet --cluster-dns={cfg['nameservers'][0]}"
        f" (KubeletConfiguration clusterDNS: [{cfg['nameservers'][0]}]).",
        "dnsPolicy: None",
        "dnsConfig:",
        "  nameservers:",
        *(f"  - {ns}" for ns in cfg["nameservers"]),
        "  searches:",
        *(f"  - {s}" for s in cfg["searches"]),
        "  options:",
        *(f"  - name: {o['name']}\n    value: \"{o['value']}\"" for o in cfg["options"]),
    ]
    return "\n".join(lines) + "\n"
