"""Small helpers of the loopback runs in hack/ (fuzz.py, memflood.py): a free port and a process's RSS.
hack/ is not a package: a script run from it finds this module in its own folder."""

from __future__ import annotations

import socket
from pathlib import Path


def free_port() -> int:
    """A port free on 127.0.0.1 for both UDP and TCP (a DNS server binds both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind(("127.0.0.1", 0))
            port = int(u.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                try:
                    t.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free port")


def rss_kib(pid: int) -> int:
    """The process's resident set (VmRSS) in KiB; 0 when /proc does not say."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0
