"""A small HTTP/1.1 server for /metrics, /health, /ready and the live page (no framework: read-only routes)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger("nodelocal.http")

Handler = Callable[[], Awaitable[tuple[int, str, bytes]] | tuple[int, str, bytes]]
REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}

# The live page loads only from this origin (it must work in an air-gapped cluster; nothing it shows
# can pull in anything else) and is never framed.
PAGE_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
               "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


class HTTPServer:
    """Serves `routes` (path -> handler returning status, content type, body); GET and HEAD only."""

    def __init__(self, routes: dict[str, Handler], read_timeout: float = 5.0) -> None:
        self.routes = routes
        self.read_timeout = read_timeout

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.read_timeout)
            method, target, _version = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
            path = target.split("?", 1)[0]
            handler = self.routes.get(path)
            if method not in ("GET", "HEAD"):
                status, ctype, body = 405, "text/plain", b"only GET and HEAD\n"
            elif handler is None:
                status, ctype, body = 404, "text/plain", b"not found\n"
            else:
                result = handler()
                status, ctype, body = await result if asyncio.iscoroutine(result) else result  # type: ignore[misc]
            extra = f"Content-Security-Policy: {PAGE_POLICY}\r\n" if ctype.startswith("text/html") else ""
            writer.write(
                f"HTTP/1.1 {status} {REASONS.get(status, '')}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nCache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n"
                f"{extra}Connection: close\r\n\r\n".encode("latin-1")
            )
            if method != "HEAD":
                writer.write(body)
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, ConnectionError):
            pass
        except Exception:
            log.exception("http handler failed")
        finally:
            writer.close()
