"""How network setup runs the rule tools (nft, iptables, ipset): one injectable runner, one error type.

Every command goes through a Runner, so unit tests swap in a fake and only tests/netns runs the real
tools. Failures become SetupError carrying node-cache's error type, which the reconcile
loop counts in `coredns_nodecache_setup_errors_total{errortype}` and logs; none of them is fatal.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from nodelocal import NodelocalError

# node-cache's error types (its coredns_nodecache_setup_errors_total labels): dashboards and alerts select on them.
ERR_IPTABLES = "iptables"  # a rule command failed (for every backend, nft included)
ERR_IPTABLES_LOCK = "iptables_lock"  # the xtables lock was held by someone else for too long
ERR_INTERFACE_ADD = "interface_add"  # creating the interface or adding an address failed
ERR_INTERFACE_CHECK = "interface_check"  # reading the interface's state failed
ERR_CONFIGMAP = "configmap"  # a config reload that failed (reload.py counts it); node-cache's name

COMMAND_TIMEOUT = 10.0  # seconds; a hung rule tool must not stall the reconcile loop for ever
LOCK_WAIT = "5"  # seconds iptables-restore waits for the xtables lock (-w) before giving up


class SetupError(NodelocalError):
    """Raised when one network-setup step fails; `errortype` is the node-cache label it is counted under."""

    def __init__(self, errortype: str, message: str) -> None:
        self.errortype = errortype
        super().__init__(message)


# What the kernel and the rule tools say when the caller lacks the capability: netlink's EPERM, nft's and
# iptables-nft's "Operation not permitted", iptables-legacy's "Permission denied (you must be root)".
_REFUSED = ("Operation not permitted", "Permission denied", "you must be root", "EPERM")
CAPABILITY_HINT = ("this needs the CAP_NET_ADMIN capability (interface, addresses, rules; iptables-legacy also "
                   "CAP_NET_RAW): run as root, or add NET_ADMIN to the container's capabilities")


def capability_hint(message: str) -> str:
    """`message`, with the capability that is missing named when the kernel or a tool refused for lack of it."""
    if any(word in message for word in _REFUSED) and "CAP_NET_ADMIN" not in message:
        return f"{message}: {CAPABILITY_HINT}"
    return message


@dataclass(frozen=True)
class Result:
    """What a command did: exit code and its output."""

    rc: int
    out: str = ""
    err: str = ""


class Runner(Protocol):
    """Runs one command with optional stdin; never raises for a failing command (rc says so)."""

    def __call__(self, argv: Sequence[str], stdin: str | None = None) -> Result: ...


class CommandRunner:
    """The real runner: subprocess, bounded by COMMAND_TIMEOUT; a missing binary is rc 127."""

    def __init__(self, timeout: float = COMMAND_TIMEOUT) -> None:
        self.timeout = timeout

    def __call__(self, argv: Sequence[str], stdin: str | None = None) -> Result:
        try:
            p = subprocess.run(list(argv), input=stdin, capture_output=True, encoding="utf-8", errors="replace",
                               timeout=self.timeout, check=False)
        except FileNotFoundError:
            return Result(127, "", f"{argv[0]}: not found")
        except subprocess.TimeoutExpired:
            return Result(124, "", f"{argv[0]}: no answer within {self.timeout:.0f}s")
        return Result(p.returncode, p.stdout, p.stderr)


def check(runner: Runner, argv: Sequence[str], stdin: str | None = None, errortype: str = ERR_IPTABLES) -> str:
    """Run a command that must succeed; its stdout, or SetupError naming the command and its complaint.

    iptables exits 4 when it could not get the xtables lock (another writer held it past -w): that is
    node-cache's `iptables_lock`, not a broken rule.
    """
    r = runner(argv, stdin)
    if r.rc == 0:
        return r.out
    err = (r.err or r.out).strip().splitlines()
    detail = err[-1] if err else f"exit {r.rc}"
    etype = errortype
    if errortype == ERR_IPTABLES and ("xtables lock" in r.err or (r.rc == 4 and "lock" in r.err)):
        etype = ERR_IPTABLES_LOCK
    raise SetupError(etype, f"{' '.join(argv[:3])}: {detail}")
