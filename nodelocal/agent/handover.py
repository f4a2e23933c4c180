"""Handing the listeners and the cache from a running agent to its successor (restart and upgrade).

Why descriptor passing: the successor gets the very same kernel sockets (SCM_RIGHTS over a Unix socket in
a host directory both pods mount), so nothing is bound twice, and a datagram queued in a socket is read by
whichever process reads next: none is lost. SO_REUSEPORT would give the new agent sockets of its own; the
kernel then splits new datagrams between old and new sockets by a hash, and whatever sits in the old
sockets' queues when the old agent closes them is dropped.

The conversation (one frame = type byte, 4-byte length, payload; JSON unless said otherwise):
    successor                                   predecessor (listening on handover.socket)
    HELLO {proto, version, pid, want}   ->
                                        <-      OFFER {proto, version, pid, sockets, zones}  + descriptors
    TAKE {take, cache} | DECLINE        ->      (from TAKE on, the predecessor's /ready says 503)
                                        <-      CACHE (binary records) ..., END {entries}
    (serves on the taken sockets, binds the rest, starts its HTTP endpoints)
    READY {pid}                         ->      (stops reading the taken sockets, lets its queries in
                                        <-       flight finish) BYE; exits without teardown
Both sides read every field they know and ignore the others, so two versions can talk: `proto` is the
lowest version both speak (1 so far), and a cache record format the successor does not know is skipped.
Every step has handover.timeout. Failures fall back to what is safe:
  - no socket file (first start)            -> the successor binds as usual
  - a stale file (the predecessor was killed), a refused or silent predecessor, a DECLINE
                                            -> the successor binds, retrying EADDRINUSE for bind_retry
  - the successor dies or stalls before READY -> the predecessor never stopped reading: it goes ready
                                               again and keeps serving (and owns teardown)
  - the predecessor dies after OFFER        -> the successor has the descriptors: the sockets live on
                                               in it; it keeps the cache records that arrived whole
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import json
import logging
import os
import socket
import struct
import time
from collections.abc import Callable, Coroutine, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nodelocal import HandoverError, __version__
from nodelocal.cache.store import DENIAL, OPT_DO, SUCCESS, Entry
from nodelocal.config import Address, Config, HandoverConfig, format_hostport

log = logging.getLogger("nodelocal.handover")

PROTO = 1  # this agent's protocol version; a peer speaking a later one talks version 1 with it
CACHE_FORMAT = 1  # the record layout below

HELLO, OFFER, TAKE, DECLINE, CACHE, END, READY, BYE = range(1, 9)
NAMES = {HELLO: "HELLO", OFFER: "OFFER", TAKE: "TAKE", DECLINE: "DECLINE", CACHE: "CACHE", END: "END",
         READY: "READY", BYE: "BYE"}
_FRAME = struct.Struct("!BI")
MAX_FRAME = 8 << 20  # bytes in one frame; cache batches stay well below it
MAX_FDS = 253  # the kernel's SCM_MAX_FD
BATCH = 1 << 20  # bytes of cache records per CACHE frame

# One cache record: kind, rcode, DO, zone length, key length, question length, TTL, age (seconds since the
# answer was stored, on the sender's clock), hits, number of TTL positions, template length; then the zone
# (UTF-8), the key, the 10 header bytes, the template, the TTL offsets (2 bytes each), the TTLs (4 each).
_RECORD = struct.Struct("!BBBHHHIdIHI")

Listener = tuple[str, Address]  # ("udp" | "tcp" | "http", address)


def netns() -> str:
    """This process's network namespace ("device:inode" of /proc/self/ns/net; "" where unknown). Two agents
    hand over only within one namespace: the same address in another namespace is another service (a
    node's lab, a test, a kind node sharing the host's /run)."""
    try:
        st = os.stat("/proc/self/ns/net")
    except OSError:
        return ""
    return f"{st.st_dev}:{st.st_ino}"


# -- frames ------------------------------------------------------------------------------------------

class Channel:
    """One end of a handover: frames over a blocking Unix stream socket, every call bounded by `timeout`.
    Blocking calls run in a thread (asyncio has no recvmsg with ancillary data)."""

    def __init__(self, sock: socket.socket, timeout: float) -> None:
        self.sock = sock
        self.sock.settimeout(timeout)
        self.fds: list[int] = []  # descriptors received so far, not yet claimed

    def close(self) -> None:
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds = []
        self.sock.close()

    async def send(self, kind: int, payload: bytes, fds: Iterable[int] = ()) -> None:
        await asyncio.to_thread(self.send_now, kind, payload, list(fds))

    async def send_json(self, kind: int, doc: dict[str, Any], fds: Iterable[int] = ()) -> None:
        await self.send(kind, json.dumps(doc).encode(), fds)

    def send_now(self, kind: int, payload: bytes, fds: list[int]) -> None:
        data = _FRAME.pack(kind, len(payload)) + payload
        try:
            if fds:
                sent = socket.send_fds(self.sock, [data[:_FRAME.size]], fds)
                self.sock.sendall(data[sent:])
            else:
                self.sock.sendall(data)
        except OSError as e:
            raise HandoverError(f"sending {NAMES.get(kind, kind)}: {e.strerror or e}") from None

    async def recv(self, *kinds: int) -> tuple[int, bytes]:
        """The next frame, which must be one of `kinds`; HandoverError on EOF, timeout or anything else."""
        kind, payload = await asyncio.to_thread(self.recv_now)
        if kind not in kinds:
            want = " or ".join(NAMES[k] for k in kinds)
            raise HandoverError(f"expected {want}, got {NAMES.get(kind, f'frame type {kind}')}")
        return kind, payload

    async def recv_json(self, *kinds: int) -> tuple[int, dict[str, Any]]:
        kind, payload = await self.recv(*kinds)
        try:
            doc = json.loads(payload)
        except ValueError:
            raise HandoverError(f"{NAMES[kind]}: not JSON") from None
        if not isinstance(doc, dict):
            raise HandoverError(f"{NAMES[kind]}: not a JSON object")
        return kind, doc

    def recv_now(self) -> tuple[int, bytes]:
        kind, n = _FRAME.unpack(self._exact(_FRAME.size))
        if n > MAX_FRAME:
            raise HandoverError(f"frame of {n} bytes (at most {MAX_FRAME})")
        return kind, self._exact(n)

    def _exact(self, n: int) -> bytes:
        buf = bytearray()
        space = socket.CMSG_SPACE(MAX_FDS * array.array("i").itemsize)
        while len(buf) < n:
            try:
                data, anc, flags, _addr = self.sock.recvmsg(n - len(buf), space)
            except TimeoutError:
                raise HandoverError("the peer did not answer in time") from None
            except OSError as e:
                raise HandoverError(f"receiving: {e.strerror or e}") from None
            for level, typ, cdata in anc:
                if level == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
                    fds = array.array("i")
                    fds.frombytes(cdata[: len(cdata) - len(cdata) % fds.itemsize])
                    self.fds += list(fds)
            if flags & socket.MSG_CTRUNC:
                raise HandoverError("descriptors were cut short (MSG_CTRUNC)")
            if not data:
                raise HandoverError("the peer closed the connection")
            buf += data
        return bytes(buf)


# -- the cache on the wire ---------------------------------------------------------------------------

def encode_entries(entries: Iterable[tuple[str, Entry]], now: float) -> Iterator[bytes]:
    """CACHE payloads of about BATCH bytes: each (zone, entry) as a record with its age on `now`'s clock."""
    out = bytearray()
    for zone, e in entries:
        z = zone.encode()
        age = max(0.0, now - e.stored)
        out += _RECORD.pack(e.kind, e.rcode, int(e.opt is OPT_DO), len(z), len(e.key), e.qlen, e.ttl, age,
                            min(e.hits, 0xFFFFFFFF), len(e.ttl_offsets), len(e.template))
        out += z + e.key + e.hdr + e.template
        out += struct.pack(f"!{len(e.ttl_offsets)}H", *e.ttl_offsets)
        out += struct.pack(f"!{len(e.ttls)}I", *e.ttls)
        if len(out) >= BATCH:
            yield bytes(out)
            out.clear()
    if out:
        yield bytes(out)


@dataclass
class Record:
    """One received cache entry, its expiry re-based on the receiver's clock (see decode_entries)."""

    zone: str
    entry: Entry


def decode_entries(payload: bytes, base: float) -> list[Record]:
    """The records of a CACHE payload. An entry's `stored` becomes `base - age`: with `base` taken before
    the sender measured the ages, every entry looks older than it is by the transfer time, never younger,
    so no TTL is extended. HandoverError on a record that does not add up."""
    out = []
    i, n = 0, len(payload)
    while i < n:
        if i + _RECORD.size > n:
            raise HandoverError("a cache record cut short")
        kind, rcode, do, zl, kl, qlen, ttl, age, hits, count, tl = _RECORD.unpack_from(payload, i)
        i += _RECORD.size
        end = i + zl + kl + 10 + tl + 6 * count
        if end > n or kind not in (SUCCESS, DENIAL) or qlen > kl or not age >= 0.0 or rcode > 15:
            raise HandoverError("a cache record that does not add up")
        try:
            zone = payload[i : i + zl].decode()
        except UnicodeDecodeError:
            raise HandoverError("a cache record with a zone that is not UTF-8") from None
        i += zl
        key = payload[i : i + kl]
        i += kl
        hdr = payload[i : i + 10]
        i += 10
        template = payload[i : i + tl]
        i += tl
        offsets = struct.unpack_from(f"!{count}H", payload, i)
        i += 2 * count
        ttls = struct.unpack_from(f"!{count}I", payload, i)
        i += 4 * count
        if any(o + 4 > tl for o in offsets):
            raise HandoverError("a cache record with a TTL position outside its records")
        e = Entry(key, rcode, kind, hdr, template, offsets, ttls, bool(do), base - age, ttl)
        e.qlen = qlen
        e.hits = hits
        out.append(Record(zone, e))
    return out


def chains(cfg: Config) -> dict[str, str]:
    """Each zone's upstream chain as text: a successor keeps a zone's entries only if its own is the same."""
    return {z: json.dumps([(g, cfg.upstreams[g].transport, cfg.upstreams[g].servers) for g in zone.forward
                           if g in cfg.upstreams]) for z, zone in cfg.zones.items()}


# -- the successor's side ----------------------------------------------------------------------------

@dataclass
class Inherited:
    """What a successor got from its predecessor (maybe nothing)."""

    predecessor: bool = False  # a socket file was there: someone may still hold our addresses
    sockets: dict[Listener, socket.socket] = field(default_factory=dict)
    records: list[Record] = field(default_factory=list)
    zones: dict[str, str] = field(default_factory=dict)  # the predecessor's chains()
    pid: int = 0
    version: str = ""
    channel: Channel | None = None  # open until confirm()

    def take(self, listener: Listener) -> socket.socket | None:
        return self.sockets.pop(listener, None)

    def close_unused(self) -> None:
        for s in self.sockets.values():
            s.close()
        self.sockets.clear()

    async def confirm(self) -> bool:
        """Tell the predecessor we serve (READY) and wait for its BYE; True when it said BYE."""
        ch, self.channel = self.channel, None
        if ch is None:
            return False
        try:
            await ch.send_json(READY, {"pid": os.getpid()})
            await ch.recv(BYE)
            return True
        except HandoverError as e:
            log.warning("handover: predecessor (pid %d) did not confirm: %s; serving anyway", self.pid, e)
            return False
        finally:
            ch.close()


def _check_socket(fd: int, listener: Listener) -> socket.socket | None:
    """The descriptor as a socket object if it is what the offer says it is (type, address, listening)."""
    kind, addr = listener
    try:
        sock = socket.socket(fileno=fd)
    except OSError:
        os.close(fd)
        return None
    try:
        want = socket.SOCK_DGRAM if kind == "udp" else socket.SOCK_STREAM
        name = sock.getsockname()
        ok = (sock.type == want and (name[0], name[1]) == addr
              and (kind == "udp" or sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1))
    except OSError:
        ok = False
    if not ok:
        sock.close()
        return None
    return sock


async def inherit(cfg: HandoverConfig, want: list[Listener], cache: bool = True,
                  now: Callable[[], float] = time.monotonic) -> Inherited:
    """Ask the agent at cfg.socket for the sockets in `want` (and its cache); whatever fails, return what
    is safe to use: sockets that arrived and check out, cache records that arrived whole."""
    out = Inherited()
    path = cfg.socket
    if not path or not os.path.exists(path):
        return out
    out.predecessor = True
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    ch = Channel(sock, cfg.timeout)
    try:
        await asyncio.to_thread(sock.connect, path)
    except OSError as e:
        ch.close()
        log.warning("handover: no agent answers at %s (%s): binding the listeners ourselves", path,
                    e.strerror or e)
        return out
    try:
        await ch.send_json(HELLO, {"proto": PROTO, "version": __version__, "pid": os.getpid(), "netns": netns(),
                                   "want": [[k, a[0], a[1]] for k, a in want], "cache_format": CACHE_FORMAT})
        kind, offer = await ch.recv_json(OFFER, DECLINE)
        if kind == DECLINE:
            log.warning("handover: the running agent declined: %s", offer.get("reason", "no reason given"))
            ch.close()
            return out
        out.pid = int(offer.get("pid", 0))
        out.version = str(offer.get("version", "?"))
        listed = offer.get("sockets", [])
        fds, ch.fds = ch.fds, []
        if offer.get("netns", "") != netns():
            for fd in fds:
                os.close(fd)
            await ch.send_json(DECLINE, {"reason": "another network namespace"})
            log.warning("handover: the agent at %s runs in another network namespace: binding ourselves", path)
            ch.close()
            return out
        if not isinstance(listed, list) or len(listed) != len(fds):
            for fd in fds:
                os.close(fd)
            raise HandoverError(f"OFFER lists {len(listed) if isinstance(listed, list) else '?'} sockets but "
                                f"{len(fds)} descriptors came")
        take: list[int] = []
        wanted = set(want)
        for i, (item, fd) in enumerate(zip(listed, fds, strict=True)):
            try:
                listener: Listener = (str(item[0]), (str(item[1]), int(item[2])))
            except (TypeError, ValueError, IndexError):
                os.close(fd)
                continue
            if listener not in wanted:
                os.close(fd)  # our copy only: the predecessor keeps serving on it until it exits
                continue
            s = _check_socket(fd, listener)
            if s is not None:
                out.sockets[listener] = s
                take.append(i)
        if not any(k in ("udp", "tcp") for k, _a in out.sockets):
            await ch.send_json(DECLINE, {"reason": "no DNS listener in common"})
            log.warning("handover: the running agent (pid %d) has none of our DNS listeners: binding ourselves",
                        out.pid)
            out.close_unused()
            ch.close()
            return out
        zones = offer.get("zones", {})
        out.zones = {str(k): str(v) for k, v in zones.items()} if isinstance(zones, dict) else {}
        send_cache = cache and offer.get("cache_format") == CACHE_FORMAT
        base = now()  # before the predecessor measures the entries' ages (it does so after TAKE)
        await ch.send_json(TAKE, {"take": take, "cache": send_cache})
        log.info("handover: taking %d socket(s) from agent pid %d (version %s)", len(take), out.pid, out.version)
        while send_cache:
            kind, payload = await ch.recv(CACHE, END)
            if kind == END:
                break
            out.records += decode_entries(payload, base)
        out.channel = ch
    except HandoverError as e:
        ch.close()
        log.warning("handover: broke off after %d socket(s) and %d cache entries: %s", len(out.sockets),
                    len(out.records), e)
    return out


# -- the predecessor's side --------------------------------------------------------------------------

@dataclass
class Giving:
    """The running agent's part, as callbacks (the Agent implements them)."""

    offer: Callable[[], list[tuple[Listener, int]]]  # every listener and its descriptor
    entries: Callable[[], Iterable[tuple[str, Entry]]]  # (zone, entry) of the cache
    zones: Callable[[], dict[str, str]]  # chains() of the running config
    begin: Callable[[int], None]  # a successor takes over (its pid): no longer ready
    cancel: Callable[[str], None]  # it went away before READY: ready again
    finish: Callable[[list[Listener]], None]  # it serves: stop reading these
    leave: Callable[[], None]  # BYE sent: wind down (queries in flight finish), no teardown


class SendOnly:
    """A listener's UDP socket after the handover, for the replies to queries read before it: sends, and
    is never read (a duplicate descriptor of the very socket the successor now reads)."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.closed = False

    def sendto(self, data: bytes, addr: Any) -> None:
        with contextlib.suppress(OSError):  # a full buffer drops the reply, as a transport would
            self.sock.sendto(data, addr)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True
        self.sock.close()


class Server:
    """Listens on handover.socket for a successor; one handover at a time."""

    def __init__(self, cfg: HandoverConfig, giving: Giving, now: Callable[[], float] = time.monotonic) -> None:
        self.cfg = cfg
        self.giving = giving
        self.now = now
        self.sock: socket.socket | None = None
        self.busy = False
        self.done = False  # a successor confirmed: it owns the listeners, the interface and the rules
        self._ino = -1  # the socket file's inode once bound: close() removes only that file
        self._task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()  # conversations (one handover, maybe declines)

    async def start(self) -> bool:
        """Listen on the socket path (its directory made, mode 0700); False, logged, when that fails."""
        path = Path(self.cfg.socket)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            sock.bind(str(tmp))
            os.chmod(tmp, 0o600)
            sock.listen(4)
            os.replace(tmp, path)  # atomic: a successor finds either the old agent's socket or ours
            self._ino = path.stat().st_ino
        except OSError as e:
            sock.close()
            with contextlib.suppress(OSError):
                tmp.unlink()
            log.warning("handover: cannot listen on %s (%s): a successor will not get our sockets", path,
                        e.strerror or e)
            return False
        sock.setblocking(False)
        self.sock = sock
        self._task = asyncio.get_running_loop().create_task(self._accept())
        log.info("handover: a successor can take over at %s", path)
        return True

    def close(self) -> None:
        """Stop listening; the socket file goes too unless a successor's has replaced it."""
        if self._task is not None:
            self._task.cancel()
        for t in self._tasks:
            t.cancel()
        if self.sock is not None:
            with contextlib.suppress(OSError):
                path = Path(self.cfg.socket)
                if path.stat().st_ino == self._ino:
                    path.unlink()
            self.sock.close()
            self.sock = None

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        assert self.sock is not None
        while True:
            conn, _ = await loop.sock_accept(self.sock)
            conn.setblocking(True)
            ch = Channel(conn, self.cfg.timeout)
            if self.busy or self.done:
                reason = "a handover is under way" if self.busy else "handed over already"
                self._spawn(self._decline(ch, reason))
                continue
            self.busy = True
            self._spawn(self._give(ch))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _decline(ch: Channel, reason: str) -> None:
        try:
            await ch.send_json(DECLINE, {"reason": reason})
        except HandoverError:
            pass
        finally:
            ch.close()

    async def _give(self, ch: Channel) -> None:
        g = self.giving
        began = False
        try:
            _k, hello = await ch.recv_json(HELLO)
            peer = int(hello.get("pid", 0)) if isinstance(hello.get("pid", 0), int) else 0
            if not isinstance(hello.get("proto"), int) or hello["proto"] < 1:
                await ch.send_json(DECLINE, {"reason": f"protocol {hello.get('proto')!r} not spoken (we speak "
                                                       f"1..{PROTO})"})
                return
            if hello.get("netns", "") != netns():
                await ch.send_json(DECLINE, {"reason": "another network namespace"})
                return
            offered = g.offer()
            await ch.send_json(OFFER, {"proto": min(PROTO, hello["proto"]), "version": __version__,
                                       "pid": os.getpid(), "netns": netns(), "cache_format": CACHE_FORMAT,
                                       "zones": g.zones(),
                                       "sockets": [[k, a[0], a[1]] for (k, a), _fd in offered]},
                               [fd for _l, fd in offered])
            kind, take = await ch.recv_json(TAKE, DECLINE)
            if kind == DECLINE:
                log.info("handover: agent pid %d declined our sockets: %s", peer, take.get("reason", "?"))
                return
            picked = take.get("take", [])
            if not isinstance(picked, list):
                raise HandoverError("TAKE without a list")
            taken = [offered[i][0] for i in picked if isinstance(i, int) and 0 <= i < len(offered)]
            began = True
            g.begin(peer)
            log.info("handover: agent pid %d (version %s) takes %s", peer, hello.get("version", "?"),
                     ", ".join(f"{k} {format_hostport(a)}" for k, a in taken))
            if take.get("cache"):
                entries = list(g.entries())
                for payload in encode_entries(entries, self.now()):
                    await ch.send(CACHE, payload)
                await ch.send_json(END, {"entries": len(entries)})
            await ch.recv(READY)
            self.done = True
            log.info("handover: agent pid %d serves; we stop reading and finish what is in flight", peer)
            g.finish(taken)
            with contextlib.suppress(HandoverError):
                await ch.send_json(BYE, {})
            g.leave()
        except HandoverError as e:
            if began:
                log.warning("handover: the successor went away before it served (%s): still serving", e)
                g.cancel(str(e))
            else:
                log.warning("handover: a successor's request failed (%s): still serving", e)
        except Exception:
            if began:
                g.cancel("internal error")
            log.exception("handover: failed unexpectedly; still serving")
        finally:
            self.busy = False
            ch.close()
