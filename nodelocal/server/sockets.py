"""The listening sockets: bound before anything else is claimed, and a failed bind names its address."""

from __future__ import annotations

import contextlib
import socket

from nodelocal import BindError
from nodelocal.config import Address, format_hostport

# The UDP receive buffer holds a burst of milliseconds, not a queue of seconds: under overload (a busy or
# CPU-capped node) a large buffer fills with queries whose clients give up before their turn comes, and
# every answer is late. A small one lets the kernel drop the excess before any work is spent on it.
UDP_RCVBUF = 212992  # bytes asked for (SO_RCVBUF; the kernel doubles it): the usual rmem_default


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
        raise BindError(f"cannot bind udp {format_hostport(addr)}: {e.strerror}") from None
    return sock


def bind_tcp(addr: Address) -> socket.socket:
    """A bound, listening, non-blocking TCP socket; BindError names the address when the kernel refuses."""
    sock = socket.socket(family(addr[0]), socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(1024)
        sock.setblocking(False)
    except OSError as e:
        sock.close()
        raise BindError(f"cannot bind tcp {format_hostport(addr)}: {e.strerror}") from None
    return sock
