"""Network setup: the interface holding the local IPs and the conntrack bypass that fails open.

Data flow: plan.py (what the kernel should hold, from the config) -> link.py (the interface, pyroute2)
and a rules backend (rules_nft.py or rules_iptables.py, picked in backends.py) -> reconcile.py (the
loop the agent runs: ensure, sync, heartbeat, teardown). runner.py runs the rule tools.
"""

from __future__ import annotations

from nodelocal.netsetup.reconcile import NetSetup
from nodelocal.netsetup.runner import SetupError

__all__ = ["NetSetup", "SetupError"]
