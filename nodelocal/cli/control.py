"""The client side of the agent's control socket (agent/control.py): one request, its reply lines.

Every failure becomes a ControlError that says what happened and what to do: no agent running (no socket,
or nobody behind it), permission denied (the socket is root-only), a timeout, or the agent's own refusal.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any

from nodelocal import ControlError
from nodelocal.config import ControlConfig

DEFAULT_SOCKET = ControlConfig().socket
MAX_LINE = 1 << 20  # bytes of one reply line (an entry with many records stays far below)


def request(path: str, req: dict[str, Any], timeout: float = 10.0) -> Iterator[dict[str, Any]]:
    """Send `req` to the agent at `path`, yield its reply lines up to the end line (checked: ok or ControlError)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(path)
        except FileNotFoundError:
            raise ControlError(f"no agent is running here: {path} does not exist (is `nodelocal serve` running "
                               f"on this node, with this control.socket? --socket PATH names another)") from None
        except ConnectionRefusedError:
            raise ControlError(f"no agent is running here: nothing listens on {path} (a socket left by an agent "
                               f"that is gone)") from None
        except PermissionError:
            raise ControlError(f"permission denied on {path}: the control socket is root-only; run this as root "
                               f"on the node (kubectl exec into the agent's pod)") from None
        except TimeoutError:
            raise ControlError(f"the agent at {path} did not accept the connection within {timeout:.0f}s") from None
        except OSError as e:
            raise ControlError(f"cannot reach the agent at {path}: {e.strerror or e}") from None
        try:
            sock.sendall(json.dumps(req).encode() + b"\n")
            reader = sock.makefile("rb")
            while True:
                line = reader.readline(MAX_LINE)
                if not line:
                    raise ControlError(f"the agent at {path} closed the connection before its reply ended")
                try:
                    obj = json.loads(line)
                except ValueError:
                    raise ControlError(f"the agent at {path} sent something that is not JSON: {line[:80]!r}") from None
                if not isinstance(obj, dict):
                    raise ControlError(f"the agent at {path} sent an unexpected reply: {line[:80]!r}")
                if obj.get("end"):
                    if not obj.get("ok"):
                        raise ControlError(f"the agent refused: {obj.get('error', 'no reason given')}")
                    yield obj
                    return
                yield obj
        except TimeoutError:
            raise ControlError(f"the agent at {path} did not answer within {timeout:.0f}s") from None
        except OSError as e:
            raise ControlError(f"the connection to the agent at {path} failed: {e.strerror or e}") from None
    finally:
        sock.close()


def one(path: str, req: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
    """The end line of a request with a one-line reply (status, route, flush)."""
    last: dict[str, Any] = {}
    for obj in request(path, req, timeout):
        last = obj
    return last
