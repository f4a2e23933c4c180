"""nodelocal: a NodeLocal DNS caching agent for Kubernetes nodes.

The package face: the version and the one exception tree (every error nodelocal raises on purpose
derives from NodelocalError). The code lives in one folder per capability, in the order a query meets
them: server/ (listeners, the UDP hot path) -> dns/ (wire format and names) -> cache/ (store, TTL policy)
-> resolve/ (pipeline, routing, forwarding, upstream transports, loop guard). Around them: cli/
(commands), config/ (the typed model and where it comes from), agent/ (lifecycle, live reload, periodic
tasks), netsetup/ (interface and conntrack-bypass rules) and observe/ (metrics exposition, live page).
"""

from __future__ import annotations

__version__ = "0.1.0"


class NodelocalError(Exception):
    """Base of every error nodelocal raises on purpose."""


class ConfigError(NodelocalError):
    """Raised when a config file, flag or environment value is invalid; names the field path and value."""

    def __init__(self, path: str, value: object, reason: str) -> None:
        self.path = path
        self.value = value
        self.reason = reason
        super().__init__(f"config error: {path}: {reason} (got {value!r})")


class CorefileError(ConfigError):
    """Raised when a Corefile cannot be read as nodelocal config; lists every problem with its line."""

    def __init__(self, source: str, problems: list[tuple[int, str]]) -> None:
        self.problems = problems
        lines = "\n".join(f"  {source}:{line}: {msg}" for line, msg in problems)
        super().__init__(source, f"{len(problems)} problem(s)", "the Corefile cannot be used")
        self.args = (f"config error: {source}: {len(problems)} problem(s) in the Corefile:\n{lines}",)

    def __str__(self) -> str:
        return str(self.args[0])


class WireError(NodelocalError):
    """Raised when bytes on the wire are not a well-formed DNS message."""


class UpstreamError(NodelocalError):
    """Raised when an upstream query fails: timeout, connection error or an invalid reply."""


class UpstreamTimeout(UpstreamError):
    """Raised when an upstream did not answer within the per-try timeout."""


class BindError(NodelocalError):
    """Raised when a listener cannot bind its address (in use, not local, no permission)."""

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno  # the kernel's reason (EADDRINUSE: a predecessor may still be closing)


class ControlError(NodelocalError):
    """Raised when the agent's control socket cannot be reached or refuses a request; says why and what to do."""


class HandoverError(NodelocalError):
    """Raised when a handover between two agents breaks off: the peer went away, timed out or spoke nonsense."""
