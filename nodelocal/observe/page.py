"""The built-in live page's routes: the static page (observe/assets, no external assets) and /api/stats."""

from __future__ import annotations

import json
from importlib import resources

from nodelocal.observe.http import Handler
from nodelocal.observe.live import Live

# path -> (file in observe/assets, content type)
ASSETS = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/page.css": ("page.css", "text/css; charset=utf-8"),
    "/page.js": ("page.js", "text/javascript; charset=utf-8"),
}


def routes(live: Live) -> dict[str, Handler]:
    """The page's routes; the assets are read once, here."""
    folder = resources.files("nodelocal.observe").joinpath("assets")
    out: dict[str, Handler] = {}
    for path, (name, ctype) in ASSETS.items():
        body = folder.joinpath(name).read_bytes()
        out[path] = lambda ctype=ctype, body=body: (200, ctype, body)  # type: ignore[misc]

    def stats() -> tuple[int, str, bytes]:
        body = json.dumps(live.snapshot(), separators=(",", ":"), allow_nan=False).encode()
        return 200, "application/json", body

    out["/api/stats"] = stats
    return out
