"""The listening sockets: bound before anything else is claimed, and a failed bind names its address."""

from __future__ import annotations

import contextlib
import socket

from nodelocal import BindError
from nodelocal.config import Address, format_hostport

UDP_RCVBUF = 4 * 1024 * 1024  # absorb bursts while the loop is busy (the kernel caps it at rmem_max)


def family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def bind_udp(addr: Address) -> socket.socket:
    """A bound, non-blocking UDP socket; BindError names the address when the kernel refuses."""
    sock = socket.socket(family(addr[0]), socket.SOCK_DGRAM)
    try:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RCVBUF)
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
