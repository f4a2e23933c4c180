"""The `nodelocal` command: serve, check-config, dnsconfig, stats (commands.py), the running agent's cache and
`doctor` through its control socket (cache.py, doctor.py, control.py), and node-cache's flag dialect
(nodecache.py), so that node-local-dns's DaemonSet arguments work unchanged."""

from __future__ import annotations

from nodelocal.cli.commands import main

__all__ = ["main"]
