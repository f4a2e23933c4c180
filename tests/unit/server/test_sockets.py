"""server/sockets.py: a refused bind names the address, the kernel's reason and what would fix it."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from nodelocal.server import sockets


@pytest.fixture
def port_start(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    f = tmp_path / "ip_unprivileged_port_start"
    f.write_text("1024\n")
    real = sockets.unprivileged_port_start
    monkeypatch.setattr(sockets, "unprivileged_port_start", lambda: real(str(f)))
    return f


def test_a_refused_low_port_names_the_missing_capability(port_start: Path) -> None:
    msg = sockets.why("udp", ("169.254.20.10", 53), PermissionError(errno.EACCES, "Permission denied"))
    assert msg.startswith("cannot bind udp 169.254.20.10:53: Permission denied")
    assert "CAP_NET_BIND_SERVICE" in msg and "ip_unprivileged_port_start=1024" in msg


def test_no_capability_named_where_none_would_help(port_start: Path) -> None:
    assert "CAP_" not in sockets.why("tcp", ("127.0.0.1", 5300), PermissionError(errno.EACCES, "Permission denied"))
    port_start.write_text("0\n")  # a container runtime that lets anyone bind any port
    assert "CAP_" not in sockets.why("udp", ("127.0.0.1", 53), PermissionError(errno.EACCES, "Permission denied"))
    taken = sockets.why("udp", ("127.0.0.1", 53), OSError(errno.EADDRINUSE, "Address already in use"))
    assert "CAP_" not in taken and "another process" in taken
    assert "not on any interface" in sockets.why("udp", ("192.0.2.1", 53),
                                                 OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address"))


def test_unreadable_sysctl_means_the_kernel_default(tmp_path: Path) -> None:
    assert sockets.unprivileged_port_start(str(tmp_path / "missing")) == 1024
