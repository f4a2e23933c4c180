"""The interface that holds every local IP (/32, /128), through pyroute2; reconciled, never scripted.

node-cache uses a `dummy` link. Kernels built without the dummy driver refuse it (netlink error 95,
EOPNOTSUPP); a `bridge` with no ports holds addresses just as well, so we fall back to it and say so.
IPv6 addresses go in with NODAD: a portless bridge has no carrier, so duplicate address detection would
leave them tentative (unbindable) for ever.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
from typing import Any, Protocol

from nodelocal.netsetup.runner import ERR_INTERFACE_ADD, ERR_INTERFACE_CHECK, SetupError

log = logging.getLogger("nodelocal.netsetup")

IFA_F_NODAD = 0x02
IFF_UP = 0x1
IFF_MULTICAST = 0x1000
FALLBACK_KIND = "bridge"


class IPRouteLike(Protocol):
    """The part of pyroute2's IPRoute used here (tests pass a fake)."""

    def link_lookup(self, **kw: Any) -> list[int]: ...
    def link(self, command: str, **kw: Any) -> Any: ...
    def get_links(self, *argv: Any, **kw: Any) -> Any: ...
    def addr(self, command: str, **kw: Any) -> Any: ...
    def get_addr(self, **kw: Any) -> Any: ...


def _code(e: BaseException) -> int | None:
    code = getattr(e, "code", None)
    return code if isinstance(code, int) else None


def _addr_of(msg: Any) -> str | None:
    value = msg.get_attr("IFA_ADDRESS")
    return str(ipaddress.ip_address(value)) if value else None


class Link:
    """The `name` link holding `ips`. ensure() and remove() are idempotent and say whether they changed anything."""

    def __init__(self, name: str, ips: tuple[str, ...]) -> None:
        self.name = name
        self.ips = tuple(str(ipaddress.ip_address(ip)) for ip in ips)
        self.kind = "dummy"  # what ensure() created or found; `bridge` after the fallback

    def index(self, ipr: IPRouteLike) -> int | None:
        try:
            found = ipr.link_lookup(ifname=self.name)
        except Exception as e:
            raise SetupError(ERR_INTERFACE_CHECK, f"looking up interface {self.name}: {e}") from None
        return int(found[0]) if found else None

    def ensure(self, ipr: IPRouteLike) -> bool:
        """Create the link if missing, bring it up, add missing addresses. True when something was changed."""
        changed = False
        idx = self.index(ipr)
        if idx is None:
            idx = self._create(ipr)
            changed = True
        try:
            links = list(ipr.get_links(idx))
            have = {_addr_of(a) for a in ipr.get_addr(index=idx)}
        except Exception as e:
            raise SetupError(ERR_INTERFACE_CHECK, f"reading interface {self.name}: {e}") from None
        if not links:
            raise SetupError(ERR_INTERFACE_CHECK, f"interface {self.name} vanished while being checked")
        info = links[0].get_attr("IFLA_LINKINFO")
        if info is not None and info.get_attr("IFLA_INFO_KIND"):
            self.kind = str(info.get_attr("IFLA_INFO_KIND"))
        if not int(links[0]["flags"]) & IFF_UP:
            try:
                ipr.link("set", index=idx, state="up")
            except Exception as e:
                raise SetupError(ERR_INTERFACE_ADD, f"bringing {self.name} up: {e}") from None
            changed = True
        for ip in self.ips:
            if ip in have:
                continue
            v6 = ipaddress.ip_address(ip).version == 6
            kw: dict[str, Any] = {"flags": IFA_F_NODAD} if v6 else {}
            try:
                ipr.addr("add", index=idx, address=ip, prefixlen=128 if v6 else 32, **kw)
            except Exception as e:
                if _code(e) != errno.EEXIST:
                    raise SetupError(ERR_INTERFACE_ADD, f"adding {ip} to {self.name}: {e}") from None
            changed = True
        return changed

    def _create(self, ipr: IPRouteLike) -> int:
        try:
            ipr.link("add", ifname=self.name, kind="dummy")
            self.kind = "dummy"
        except Exception as e:
            if _code(e) == errno.EEXIST:
                pass  # created meanwhile by someone else: use it
            elif _code(e) == errno.EOPNOTSUPP:
                log.warning("interface %s: this kernel has no dummy driver (netlink error 95); using a %s "
                            "link with no ports instead", self.name, FALLBACK_KIND)
                try:
                    # Snooping off: a snooping bridge joins 224.0.0.106 and sends IGMP reports from our
                    # addresses (conntrack entries, noise); a dummy does no such thing.
                    ipr.link("add", ifname=self.name, kind=FALLBACK_KIND, br_mcast_snooping=0)
                except Exception as e2:
                    if _code(e2) != errno.EEXIST:
                        raise SetupError(ERR_INTERFACE_ADD, f"creating {self.name} ({FALLBACK_KIND}): {e2}") from None
                self.kind = FALLBACK_KIND
            else:
                raise SetupError(ERR_INTERFACE_ADD, f"creating {self.name} (dummy): {e}") from None
        idx = self.index(ipr)
        if idx is None:
            raise SetupError(ERR_INTERFACE_ADD, f"interface {self.name} missing right after creating it")
        if self.kind == FALLBACK_KIND:
            # No multicast on a link that only holds addresses. Best effort: the link works either way.
            try:
                ipr.link("set", index=idx, flags=0, change=IFF_MULTICAST)
            except Exception as e:
                log.debug("interface %s: could not turn multicast off: %s", self.name, e)
        log.info("interface %s created (%s)", self.name, self.kind)
        return idx

    def remove(self, ipr: IPRouteLike) -> bool:
        """Delete the link (and with it its addresses). True when it existed."""
        idx = self.index(ipr)
        if idx is None:
            return False
        try:
            ipr.link("del", index=idx)
        except Exception as e:
            if _code(e) == errno.ENODEV:
                return False
            raise SetupError(ERR_INTERFACE_ADD, f"deleting {self.name}: {e}") from None
        log.info("interface %s removed", self.name)
        return True


def local_elsewhere(ipr: IPRouteLike, ip: str, own_link: str) -> bool:
    """Is `ip` a local address on some link other than ours? (IPVS mode: kube-ipvs0 holds every ClusterIP.)"""
    want = str(ipaddress.ip_address(ip))
    try:
        own = ipr.link_lookup(ifname=own_link)
        for a in ipr.get_addr():
            if _addr_of(a) == want and int(a["index"]) not in own:
                return True
    except Exception as e:
        raise SetupError(ERR_INTERFACE_CHECK, f"listing local addresses: {e}") from None
    return False
