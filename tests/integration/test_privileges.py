"""The agent started without the privileges it needs says which capability is missing (a real unprivileged
process, made with setpriv: no capabilities at all, user nobody)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from nodelocal.server.sockets import unprivileged_port_start

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                                reason="needs root and setpriv to start a process without privileges")


def test_serve_without_cap_net_bind_service_names_it() -> None:
    if unprivileged_port_start() <= 53:
        pytest.skip("this kernel lets anyone bind port 53 (net.ipv4.ip_unprivileged_port_start)")
    cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all",
           "--no-new-privs", sys.executable, "-m", "nodelocal", "serve", "--no-setup", "--localip", "127.0.0.1",
           "--port", "53", "--upstream", "127.0.0.1:9", "--cluster-dns", "127.0.0.1:9",
           "--metrics-addr", "127.0.0.1:0", "--health-addr", "127.0.0.1:0"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False,
                       env={**os.environ, "HOME": "/tmp"})
    assert p.returncode == 1, p.stderr
    assert "cannot bind udp 127.0.0.1:53: Permission denied" in p.stderr
    assert "CAP_NET_BIND_SERVICE" in p.stderr and "Traceback" not in p.stderr
