"""Small stand-ins shared by unit tests: only for OS handles a unit test must not open."""

from __future__ import annotations

from typing import Any


class FakeTransport:
    """A datagram transport that records what the server sends."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, Any]] = []

    def sendto(self, data: bytes, addr: Any = None) -> None:
        self.sent.append((data, addr))

    def is_closing(self) -> bool:
        return False
