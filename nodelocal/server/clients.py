"""Who is answered, and how much one client may take: the access list and the per-client limits.

Access list: a client outside the allowed networks gets REFUSED (or nothing, acl.action=drop) before
anything else is done for it: no cache lookup, no forwarding, no cache fill. An open resolver on every
node answers anyone who can reach a node address, cluster names included, and is a reflector for
amplification. The check sits on the UDP hot path, so the verdict is computed once per source address
(ipaddress parsing and a scan of the networks cost microseconds) and kept in a dict (Verdicts): a query
then costs one dict lookup. The dict is bounded (MAX_VERDICTS, cleared whole when full: a flood of
forged sources costs a recomputation per new address, never memory).

Per-client limits (Clients):
  pending  queries of one source address on the slow path (misses) at once, over UDP and TCP. Past the
           cap the query gets REFUSED at once (not SERVFAIL: SERVFAIL says the name failed and may be
           cached as such by the client, RFC 9520; REFUSED is policy, and a stub moves on to its next
           server). One entry per address with queries in flight: bounded by the listeners' own caps.
  rate     optional (clients.rate, off by default) RRL-style token bucket of responses per second per
           client prefix over UDP; a limited reply is dropped, except every `slip`-th, sent truncated
           (TC=1) so that a real client retries over TCP, which a forged source cannot. Off by default:
           inside the allowed ranges clients are the node's pods, a batch job may legitimately send
           thousands of queries a second, and the pending cap already keeps one pod from taking the
           miss budget; hits cost microseconds, so a flood of hits only costs CPU.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable

from nodelocal import WireError
from nodelocal.config import ACLConfig, ClientsConfig, Config
from nodelocal.dns import wire
from nodelocal.netsetup.ranges import LOOPBACK, Network

MAX_VERDICTS = 16384  # source addresses whose verdict is remembered (~150 B each); cleared whole when full

PASS, DROP, SLIP = 0, 1, 2  # RateLimiter.check outcomes


class Verdicts(dict[str, bool]):
    """Source address (as the socket reports it) -> allowed? Filled on first sight, bounded."""

    def __init__(self, nets: Iterable[Network]) -> None:
        super().__init__()
        nets = list(nets)
        v4 = list(ipaddress.collapse_addresses(n for n in nets if isinstance(n, ipaddress.IPv4Network)))
        v6 = list(ipaddress.collapse_addresses(n for n in nets if isinstance(n, ipaddress.IPv6Network)))
        self.networks: tuple[tuple[Network, ...], tuple[Network, ...]] = (tuple(v4), tuple(v6))
        # `open`: some family's whole address space is answered (warned at start); `everyone`: both are,
        # and the listeners skip the check.
        all4, all6 = any(n.prefixlen == 0 for n in v4), any(n.prefixlen == 0 for n in v6)
        self.open = all4 or all6
        self.everyone = all4 and all6

    def __missing__(self, host: str) -> bool:
        ok = self.allows(host)
        if len(self) >= MAX_VERDICTS:
            self.clear()
        self[host] = ok
        return ok

    def allows(self, host: str) -> bool:
        try:
            ip: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(host.partition("%")[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in n for n in self.networks[ip.version == 6])

    def describe(self) -> str:
        nets = [*self.networks[0], *self.networks[1]]
        shown = ", ".join(str(n) for n in nets[:12])
        return shown + (f" and {len(nets) - 12} more" if len(nets) > 12 else "")


def acl_networks(cfg: Config, node: Iterable[Network] | None) -> list[Network]:
    """The networks answered under `cfg`: acl.allow, the agent's own listen addresses, and with
    acl.node_ranges the node's ranges (`node`, read by netsetup/ranges.py; loopback only when unknown)."""
    acl: ACLConfig = cfg.acl
    nets: list[Network] = [ipaddress.ip_network(a, strict=False) for a in acl.allow]
    nets += [ipaddress.ip_network(ip) for ip in cfg.listen.localip]
    if acl.node_ranges:
        nets += list(node) if node is not None else list(LOOPBACK)
    return nets


class RateLimiter:
    """Responses per second per client prefix (token buckets), bounded to `max_tracked` prefixes."""

    def __init__(self, cfg: ClientsConfig, now: Callable[[], float]) -> None:
        self.rate = float(cfg.rate)
        self.burst = float(cfg.burst or cfg.rate)
        self.slip = cfg.slip
        self.shift4 = 32 - cfg.ipv4_prefix
        self.shift6 = 128 - cfg.ipv6_prefix
        self.max_tracked = cfg.max_tracked
        self.now = now
        self.buckets: dict[object, list[float]] = {}  # prefix -> [tokens, last refill, limited replies]

    def prefix(self, host: str) -> object:
        if ":" in host:
            return int.from_bytes(socket.inet_pton(socket.AF_INET6, host.partition("%")[0]), "big") >> self.shift6
        return host if not self.shift4 else int.from_bytes(socket.inet_aton(host), "big") >> self.shift4

    def check(self, host: str) -> int:
        """PASS, or DROP / SLIP (send a truncated reply) for a client over its rate."""
        try:
            key = self.prefix(host)
        except OSError:
            key = host
        now = self.now()
        b = self.buckets.get(key)
        if b is None:
            if len(self.buckets) >= self.max_tracked:
                self._forget(now)
            self.buckets[key] = [self.burst - 1.0, now, 0.0]
            return PASS
        tokens = b[0] + (now - b[1]) * self.rate
        b[1] = now
        if tokens > self.burst:
            tokens = self.burst
        if tokens >= 1.0:
            b[0] = tokens - 1.0
            return PASS
        b[0] = tokens
        b[2] += 1
        return SLIP if self.slip and b[2] % self.slip == 0 else DROP

    def _forget(self, now: float) -> None:
        """Make room: first every bucket that has refilled (an idle client: forgetting it loses nothing),
        then, if a flood of sources left none idle, the oldest quarter."""
        full = self.burst / self.rate
        self.buckets = {k: b for k, b in self.buckets.items() if now - b[1] < full}
        if len(self.buckets) >= self.max_tracked * 3 // 4:
            drop = len(self.buckets) - self.max_tracked * 3 // 4
            for k in list(self.buckets)[:drop]:
                del self.buckets[k]


class Clients:
    """The access list and the per-client limits of one agent, shared by every listener; reconfigured in place
    on reload so that queries in flight keep their counts."""

    def __init__(self, cfg: Config, node: Iterable[Network] | None, now: Callable[[], float]) -> None:
        self.now = now
        self.node: list[Network] | None = list(node) if node is not None else None
        self.pending: dict[str, int] = {}  # source address -> its queries on the slow path now
        self.verdicts: Verdicts | None = None
        self.rate: RateLimiter | None = None
        self.max_pending = 0
        self.drop = False
        self.configure(cfg)

    def configure(self, cfg: Config, node: Iterable[Network] | None = None) -> bool:
        """Apply `cfg` (and newly read node ranges); True when the allowed networks changed."""
        if node is not None:
            self.node = list(node)
        old = self.verdicts
        verdicts = Verdicts(acl_networks(cfg, self.node))
        changed = old is None or verdicts.networks != old.networks
        if changed:
            self.verdicts = verdicts
        self.drop = cfg.acl.action == "drop"
        self.max_pending = cfg.clients.max_pending or (1 << 62)
        c = cfg.clients
        old_rate = self.rate
        if not c.rate:
            self.rate = None
        elif (old_rate is None or (old_rate.rate, old_rate.burst, old_rate.slip, old_rate.max_tracked)
              != (float(c.rate), float(c.burst or c.rate), c.slip, c.max_tracked)
              or (old_rate.shift4, old_rate.shift6) != (32 - c.ipv4_prefix, 128 - c.ipv6_prefix)):
            self.rate = RateLimiter(c, self.now)
        return changed

    def take(self, host: str) -> bool:
        """Count one more query of `host` on the slow path; False (and nothing counted) past its cap."""
        n = self.pending.get(host, 0)
        if n >= self.max_pending:
            return False
        self.pending[host] = n + 1
        return True

    def release(self, host: str) -> None:
        n = self.pending.get(host, 1) - 1
        if n > 0:
            self.pending[host] = n
        else:
            self.pending.pop(host, None)

    def sizes(self) -> dict[str, int]:
        """Entries of per-client state, by kind (nodelocal_client_state_entries)."""
        return {"acl_verdicts": len(self.verdicts or ()), "pending": len(self.pending),
                "rate": len(self.rate.buckets) if self.rate is not None else 0}


def reply_for(data: bytes, rcode: int, tc: bool = False) -> bytes | None:
    """A header-only reply with `rcode` (and TC when `tc`) to a query we do no work for, the question echoed
    when it reads; None when `data` is no query (too short, or a response: answering those starts loops)."""
    if len(data) < wire.HEADER_LEN or data[2] & wire.QR:
        return None
    qend = None
    # The question is echoed for standard queries only: under another opcode (UPDATE) the first section
    # is a zone section of its own rules, and an echo a client cannot read (found by hack/fuzz.py).
    if data[4:6] == b"\x00\x01" and not data[2] & wire.OPCODE_MASK:
        try:
            qend = wire.question_end(data)
        except WireError:
            qend = None
    reply = wire.error_reply(data, rcode, qend)
    if tc and reply is not None:
        reply = reply[:2] + bytes([reply[2] | wire.TC]) + reply[3:]
    return reply
