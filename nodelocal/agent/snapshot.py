"""A cache snapshot on disk, so that an agent restarted after a crash or kill -9 starts warm too.

With handover.snapshot set, the agent writes its cache there every handover.snapshot_interval seconds and
when it stops (write to a temporary file, then rename: a reader sees a whole snapshot or the previous one).
An agent that starts without a handover (none running, or the one running died mid-way) reads it:

  magic line  b"NODELOCAL-SNAPSHOT\\n"
  header      4-byte length, JSON {"format": 1, "version", "written": wall-clock seconds, "zones": chains()}
  records     handover.encode_entries' CACHE format, each age measured at "written"

Expiry is re-based as in a handover: each entry is as old as it was when written plus the wall-clock time
since, never younger. A snapshot that is corrupt, of another format, from the future (the clock went back)
or older than handover.snapshot_max_age is ignored with a warning; the agent starts cold.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import struct
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from nodelocal import HandoverError, __version__
from nodelocal.agent.handover import CACHE_FORMAT, Record, decode_entries, encode_entries
from nodelocal.cache.store import Entry

log = logging.getLogger("nodelocal.snapshot")

MAGIC = b"NODELOCAL-SNAPSHOT\n"
_LEN = struct.Struct("!I")


def encode(entries: Iterable[tuple[str, Entry]], zones: dict[str, str], now: float, wall: float) -> bytes:
    """The snapshot bytes of `entries` (their ages on the monotonic clock at `now`), written at `wall`."""
    head = json.dumps({"format": CACHE_FORMAT, "version": __version__, "written": wall, "zones": zones}).encode()
    return b"".join([MAGIC, _LEN.pack(len(head)), head, *encode_entries(entries, now)])


def decode(data: bytes, now: float, wall: float, max_age: float) -> tuple[list[Record], dict[str, str]]:
    """Records and the writer's zone chains; HandoverError says why a snapshot cannot be used."""
    if not data.startswith(MAGIC):
        raise HandoverError("not a nodelocal cache snapshot")
    i = len(MAGIC)
    if len(data) < i + _LEN.size:
        raise HandoverError("cut short")
    (n,) = _LEN.unpack_from(data, i)
    i += _LEN.size
    try:
        head = json.loads(data[i : i + n])
    except ValueError:
        raise HandoverError("a header that is not JSON") from None
    if not isinstance(head, dict) or head.get("format") != CACHE_FORMAT:
        raise HandoverError(f"format {head.get('format') if isinstance(head, dict) else '?'!r}, not "
                            f"{CACHE_FORMAT}")
    written = head.get("written")
    if not isinstance(written, int | float):
        raise HandoverError("no time of writing")
    elapsed = wall - written
    if elapsed < 0:
        raise HandoverError("written in the future (the clock went back)")
    if elapsed > max_age:
        raise HandoverError(f"{elapsed:.0f}s old (handover.snapshot_max_age is {max_age:.0f}s)")
    zones = head.get("zones", {})
    zones = {str(k): str(v) for k, v in zones.items()} if isinstance(zones, dict) else {}
    return decode_entries(data[i + n :], now - elapsed), zones


def write(path: str, entries: Iterable[tuple[str, Entry]], zones: dict[str, str], now: float,
          wall: float | None = None) -> int:
    """Write the snapshot atomically (mode 0600); its size in bytes. OSError when the file system refuses."""
    data = encode(entries, zones, now, time.time() if wall is None else wall)
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, target)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return len(data)


def read(path: str, now: Callable[[], float], max_age: float) -> tuple[list[Record], dict[str, str]]:
    """The snapshot's records, or none (logged) when there is none or it cannot be used."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return [], {}
    except OSError as e:
        log.warning("cache snapshot %s: cannot read it (%s): starting cold", path, e.strerror or e)
        return [], {}
    try:
        return decode(data, now(), time.time(), max_age)
    except HandoverError as e:
        log.warning("cache snapshot %s ignored: %s; starting cold", path, e)
        return [], {}
