"""The agent's local control endpoint: a Unix socket that only root on the node reaches (not a network port).

`nodelocal cache dump|flush` and `nodelocal doctor` talk to the running agent through it. The protocol is
JSON lines, one request per connection:
  request   one line, a JSON object, at most MAX_REQUEST bytes, sent within control.timeout seconds:
              {"op": "status"}                          the agent: version, pid, uptime, config source,
                                                        listeners, upstream health, readiness, setup
              {"op": "dump", "name": "a.example"}       cache entries (every one without "name")
              {"op": "flush", "name": "a.example"}      drop a name's entries (every type and flag)
              {"op": "flush", "zone": "example"}        drop every entry at or below a name
              {"op": "flush", "all": true}              drop every entry
              {"op": "route", "name": "a.example"}      which zone, which upstreams in which order, cached
  reply     JSON lines; the last one holds "end": true and "ok" (true, or false with "error": a sentence).
            A dump sends one {"entry": {...}} line per entry, then the end line with "sent" and "cut".
Bounds: control.max_dump entries per dump (the end line says "cut": true past it); a dump or a flush looks
at SCAN_CHUNK keys, or renders RENDER_CHUNK entries, between two yields to the event loop, so queries are
answered while it runs; MAX_CLIENTS connections at once (more are told to come back later); a client must
send its request and read its reply within control.timeout. The socket is created as a temporary name,
set to mode 0600 and renamed into place (never a moment with a wider mode), and a peer whose uid is
neither root nor the agent's own is refused (SO_PEERCRED) as a second guard behind the file mode.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype

from nodelocal.cache.store import KIND_NAMES, Entry, Store
from nodelocal.dns import wire
from nodelocal.dns.names import to_text, to_wire, zone_name

log = logging.getLogger("nodelocal.control")

MAX_REQUEST = 4096  # bytes of one request line
MAX_CLIENTS = 8  # connections served at once
SCAN_CHUNK = 1024  # keys compared between two yields to the event loop (~3 µs each for a zone)
RENDER_CHUNK = 8  # entries decoded to text between two yields (~0.1-0.2 ms each with dnspython)
_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


class RequestError(Exception):
    """A request the endpoint cannot serve; its text goes back to the client."""


def key_parts(key: bytes) -> tuple[str, int, int, tuple[str, ...], int]:
    """(name, type, class, query flags, length of the question) of a cache key (wire.question_key)."""
    off = 0
    while key[off]:
        off += 1 + key[off]
    qend = off + 5
    name = to_text(key[:off + 1])
    qtype = key[qend - 4] << 8 | key[qend - 3]
    qclass = key[qend - 2] << 8 | key[qend - 1]
    bits = key[qend] & 0x7 if len(key) > qend else 1  # no suffix: RD only (wire.SUFFIXES)
    flags = tuple(f for f, b in (("rd", 1), ("cd", 2), ("do", 4)) if bits & b)
    return name, qtype, qclass, flags, qend


def name_of(key: bytes) -> bytes:
    """The wire name a cache key starts with."""
    off = 0
    while key[off]:
        off += 1 + key[off]
    return key[:off + 1]


def at_or_below(name: bytes, zone: bytes) -> bool:
    """Is the wire name `name` equal to `zone` or below it (label boundaries, RFC 1034 §3.1)?"""
    if not name.endswith(zone):
        return False
    start = len(name) - len(zone)
    off = 0
    while off < start:
        off += 1 + name[off]
    return off == start


def wire_name(text: str, what: str) -> bytes:
    """A name from a request in wire form, lowercased; RequestError saying what is wrong."""
    try:
        return to_wire(zone_name(text))
    except ValueError as e:
        raise RequestError(f"{what} {text!r} is not a domain name: {e}") from None


def entry_info(e: Entry, now: float) -> dict[str, Any]:
    """One cache entry as the dump shows it: question, zone, kind, rcode, remaining TTL, stale, the records."""
    name, qtype, qclass, flags, qend = key_parts(e.key)
    left = e.expires - now
    stale = left <= 0
    # A stale entry's records are shown with TTL 0 (it answers with the zone's stale_ttl when it has to).
    body = wire.pack_ttls(e.template, e.ttl_offsets, e.ttls, 1 << 32) if stale else e.body_at(now)
    question = e.key[:qend]
    msg = e.assemble(bytes(12) + question, 12 + len(question), 0, False, body)
    info: dict[str, Any] = {
        "name": name, "type": dns.rdatatype.to_text(dns.rdatatype.RdataType.make(qtype)),
        "class": dns.rdataclass.to_text(dns.rdataclass.RdataClass.make(qclass)),
        "flags": list(flags), "zone": e.part.zone if e.part is not None else None, "kind": KIND_NAMES[e.kind],
        "rcode": dns.rcode.to_text(dns.rcode.Rcode.make(e.rcode)), "ttl": e.ttl,
        "remaining": max(0, e.ttl - int(now - e.stored)),  # as the records' TTLs show it
        "stale": stale,
        "stale_for": int(-left) if stale else 0, "hits": e.hits,
    }
    try:
        m = dns.message.from_wire(msg)
        info["answer"] = [ln for rr in m.answer for ln in rr.to_text().splitlines()]
        info["authority"] = [ln for rr in m.authority for ln in rr.to_text().splitlines()]
    except Exception as exc:  # an entry dnspython cannot read is still listed
        info["answer"] = [f"(cannot decode the records: {exc})"]
        info["authority"] = []
    return info


async def matching(store: Store, pick: Callable[[bytes], bool]) -> list[bytes]:
    """The keys of the store `pick` accepts, looked at in chunks with a yield between them."""
    keys = list(store.index)
    out: list[bytes] = []
    for i in range(0, len(keys), SCAN_CHUNK):
        out += [k for k in keys[i:i + SCAN_CHUNK] if pick(k)]
        if i + SCAN_CHUNK < len(keys):
            await asyncio.sleep(0)
    return out


def picker(name: bytes | None = None, zone: bytes | None = None) -> Callable[[bytes], bool]:
    if name is not None:
        n = len(name)
        return lambda k: k.startswith(name) and len(k) in (n + 4, n + 5)  # the name, then type+class(+flags)
    if zone is not None:
        z = zone
        return lambda k: at_or_below(name_of(k), z)
    return lambda _k: True


class ControlServer:
    """Serves the control protocol on a Unix socket for one agent.

    `status` and `route` are the agent's (lifecycle.py builds them); the cache operations are here.
    """

    def __init__(self, path: str, store: Store, status: Callable[[], Awaitable[dict[str, Any]]],
                 route: Callable[[str], Awaitable[dict[str, Any]]], now: Callable[[], float], max_dump: int = 10000,
                 timeout: float = 5.0, on_flush: Callable[[list[bytes]], None] | None = None) -> None:
        self.path = Path(path)
        self.store = store
        self.status = status
        self.route = route
        self.now = now
        self.max_dump = max_dump
        self.timeout = timeout
        self.on_flush = on_flush
        self.server: asyncio.AbstractServer | None = None
        self.clients = 0
        self._inode: int | None = None

    async def start(self) -> None:
        """Bind the socket (mode 0600 before it has its name) and serve; OSError when it cannot."""
        self.path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(tmp))
            os.chmod(tmp, 0o600)
            # rename() replaces an older agent's socket in one step: the newest agent on the host answers.
            os.rename(tmp, self.path)
            self._inode = os.stat(self.path).st_ino
            self.server = await asyncio.start_unix_server(self._handle, sock=sock, limit=MAX_REQUEST)
        except BaseException:
            sock.close()
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise

    def close(self) -> None:
        """Stop serving; remove the socket unless another agent has put its own there since."""
        if self.server is not None:
            self.server.close()
            self.server = None
        if self._inode is not None:
            with contextlib.suppress(OSError):
                if os.stat(self.path).st_ino == self._inode:
                    self.path.unlink()
            self._inode = None

    # -- one connection ------------------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.clients += 1
        try:
            await self._serve(reader, writer)
        except (ConnectionError, TimeoutError):
            pass  # the client went away or was too slow: nothing to tell it
        except Exception:
            log.exception("control: request failed")
            with contextlib.suppress(Exception):
                await self._send(writer, {"end": True, "ok": False, "error": "internal error (see the agent's log)"})
        finally:
            self.clients -= 1
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def _send(self, writer: asyncio.StreamWriter, obj: dict[str, Any]) -> None:
        writer.write(json.dumps(obj, separators=(",", ":")).encode() + b"\n")
        await asyncio.wait_for(writer.drain(), self.timeout)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        refusal = self._refusal(writer)
        if refusal is not None:
            await self._send(writer, {"end": True, "ok": False, "error": refusal})
            return
        try:
            line = await asyncio.wait_for(reader.readline(), self.timeout)
        except (ValueError, asyncio.LimitOverrunError):
            await self._send(writer, {"end": True, "ok": False, "error": f"request longer than {MAX_REQUEST} bytes"})
            return
        try:
            req = json.loads(line)
            if not isinstance(req, dict):
                raise RequestError("a request is a JSON object")
            async for obj in self.serve(req):
                await self._send(writer, obj)
        except (json.JSONDecodeError, UnicodeDecodeError):
            await self._send(writer, {"end": True, "ok": False, "error": "a request is one line of JSON"})
        except RequestError as e:
            await self._send(writer, {"end": True, "ok": False, "error": str(e)})

    def _refusal(self, writer: asyncio.StreamWriter) -> str | None:
        if self.clients > MAX_CLIENTS:
            return f"busy: {MAX_CLIENTS} control clients are connected; try again"
        sock = writer.get_extra_info("socket")
        if sock is not None and hasattr(socket, "SO_PEERCRED"):
            with contextlib.suppress(OSError):
                _pid, uid, _gid = _PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                                    _PEERCRED.size))
                if uid not in (0, os.geteuid()):
                    return f"permission denied: uid {uid} is not root"
        return None

    # -- the operations ------------------------------------------------------------------------------

    async def serve(self, req: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """The reply lines for one request (RequestError for a bad one)."""
        op = req.get("op")
        if op == "status":
            yield {"end": True, "ok": True, "status": await self.status()}
        elif op == "route":
            name = req.get("name")
            if not isinstance(name, str):
                raise RequestError("route needs a \"name\"")
            wire_name(name, "name")
            yield {"end": True, "ok": True, "route": await self.route(name)}
        elif op == "dump":
            async for obj in self._dump(req):
                yield obj
        elif op == "flush":
            yield await self._flush(req)
        else:
            raise RequestError(f"unknown op {op!r} (status, dump, flush, route)")

    async def _dump(self, req: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        name = req.get("name")
        if name is not None and not isinstance(name, str):
            raise RequestError("\"name\" is a string")
        limit = req.get("limit", self.max_dump)
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise RequestError("\"limit\" is a whole number >= 1")
        limit = min(limit, self.max_dump)
        keys = await matching(self.store, picker(wire_name(name, "name") if name else None))
        sent = 0
        for i, key in enumerate(keys):
            if sent >= limit:
                break
            e = self.store.index.get(key)
            if e is None or e.part is None:
                continue  # gone since the scan
            yield {"entry": entry_info(e, self.now())}
            sent += 1
            if i % RENDER_CHUNK == RENDER_CHUNK - 1:
                await asyncio.sleep(0)
        cut = len(keys) > sent and sent >= limit
        yield {"end": True, "ok": True, "sent": sent, "matched": len(keys), "cut": cut,
               "entries": len(self.store.index), "max_dump": self.max_dump}

    async def _flush(self, req: dict[str, Any]) -> dict[str, Any]:
        name, zone, every = req.get("name"), req.get("zone"), req.get("all")
        given = [k for k, v in (("name", name), ("zone", zone), ("all", every)) if v not in (None, False)]
        if len(given) != 1:
            raise RequestError("flush takes exactly one of \"name\", \"zone\" or \"all\"")
        if every is not None and every is not True:
            raise RequestError("\"all\" is true")
        for what, v in (("name", name), ("zone", zone)):
            if v is not None and not isinstance(v, str):
                raise RequestError(f"\"{what}\" is a string")
        pick = picker(wire_name(name, "name") if name else None, wire_name(zone, "zone") if zone else None)
        keys = await matching(self.store, pick)
        dropped = [k for k in keys if self.store.drop(k)]
        if self.on_flush is not None:
            self.on_flush(dropped)
        what = f"name {name}" if name else (f"zone {zone}" if zone else "everything")
        log.info("control: cache flush (%s): %d entries dropped", what, len(dropped))
        return {"end": True, "ok": True, "flushed": len(dropped), "what": what, "entries": len(self.store.index)}
