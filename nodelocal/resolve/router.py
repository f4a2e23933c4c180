"""Zone routing: the longest configured suffix of the query name picks the zone (RFC 1034 §4.3.2 style)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Generic, TypeVar

from nodelocal.dns.names import labels_of_text

T = TypeVar("T")


class Router(Generic[T]):
    """Maps a name to the value of its longest matching zone; '.' must be configured (it catches all)."""

    def __init__(self, zones: Mapping[str, T]) -> None:
        self._zones = {labels_of_text(name): value for name, value in zones.items()}
        if () not in self._zones:
            raise ValueError("the root zone '.' must be configured")
        self._depth = max(len(k) for k in self._zones)

    def match(self, labels: tuple[bytes, ...]) -> T:
        n = len(labels)
        for i in range(max(0, n - self._depth), n + 1):
            v = self._zones.get(labels[i:])
            if v is not None:
                return v
        return self._zones[()]
