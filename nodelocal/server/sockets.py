"""The listening sockets: bound before anything else is claimed, and a failed bind names its address."""

from __future__ import annotations

import contextlib
import errno
import socket
from pathlib import Path

from nodelocal import BindError
from nodelocal.config import Address, format_hostport

# The UDP receive buffer holds a burst of milliseconds, not a queue of seconds: under overload (a busy or
# CPU-capped node) a large buffer fills with queries whose clients give up before their turn comes, and
# every answer is late. A small one lets the kernel drop the excess before any work is spent on it.
UDP_RCVBUF = 212992  # bytes asked for (SO_RCVBUF; the kernel doubles it): the usual rmem_default


def unprivileged_port_start(path: str = "/proc/sys/net/ipv4/ip_unprivileged_port_start") -> int:
    """The lowest port anyone may bind; below it binding needs CAP_NET_BIND_SERVICE (Linux 4.11+: 1024)."""
    try:
        return int(Path(path).read_text())
    except (OSError, ValueError):
        return 1024


def why(kind: str, addr: Address, e: OSError) -> str:
    """The BindError message: the address, the kernel's reason, and for a refusal the capability missing."""
    msg = f"cannot bind {kind} {format_hostport(addr)}: {e.strerror}"
    if e.errno in (errno.EACCES, errno.EPERM):
        start = unprivileged_port_start()
        if addr[1] < start:
            msg += (f" (port {addr[1]} is below net.ipv4.ip_unprivileged_port_start={start}: binding it needs the "
                    "CAP_NET_BIND_SERVICE capability; run as root, or add NET_BIND_SERVICE to the container's "
                    "capabilities)")
    elif e.errno == errno.EADDRNOTAVAIL:
        msg += " (the address is not on any interface of this host: with setup off, add it first)"
    elif e.errno == errno.EADDRINUSE:
        msg += " (another process listens there: another DNS server or agent?)"
    return msg


def family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def bind_udp(addr: Address, rcvbuf: int = UDP_RCVBUF) -> socket.socket:
    """A bound, non-blocking UDP socket (receive buffer `rcvbuf` bytes; 0 leaves the kernel's default);
    BindError names the address when the kernel refuses."""
    sock = socket.socket(family(addr[0]), socket.SOCK_DGRAM)
    try:
        if rcvbuf:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.bind(addr)
        sock.setblocking(False)
    except OSError as e:
        sock.close()
        raise BindError(why("udp", addr, e), e.errno) from None
    return sock


def bind_tcp(addr: Address, kind: str = "tcp") -> socket.socket:
    """A bound, listening, non-blocking TCP socket; BindError names the address (and `kind`, the listener's
    name in the message) when the kernel refuses."""
    sock = socket.socket(family(addr[0]), socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(1024)
        sock.setblocking(False)
    except OSError as e:
        sock.close()
        raise BindError(why(kind, addr, e), e.errno) from None
    return sock
