"""`nodelocal stats`: the live page's figures in a terminal, read from a running agent's /api/stats."""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any, TextIO

from nodelocal import NodelocalError
from nodelocal.config import Address, format_hostport, parse_hostport

DEFAULT_ADDR = "127.0.0.1:9253"
CLEAR = "\x1b[H\x1b[2J"
FRAME_RULE = "-" * 30  # between two --watch frames written to a pipe or file
EXIT_SIGPIPE = 141  # what a shell reports for a program ended by SIGPIPE (128 + 13)


class StatsUnavailable(NodelocalError):
    """Raised when the agent's /api/stats cannot be read (not running, page turned off, bad reply)."""


def target(addr: str) -> Address:
    """HOST:PORT to connect to; a wildcard listen address (0.0.0.0, ::) means this host."""
    host, port = parse_hostport(addr, 9253, "--addr")
    return ("127.0.0.1" if host == "0.0.0.0" else "::1" if host == "::" else host), port


def fetch(addr: Address, timeout: float = 5.0) -> dict[str, Any]:
    url = f"http://{format_hostport(addr)}/api/stats"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            data = json.load(r)
    except urllib.error.HTTPError as e:
        raise StatsUnavailable(f"{url}: HTTP {e.code} (is the page turned off? `page: false`)") from None
    except (OSError, ValueError) as e:
        raise StatsUnavailable(f"{url}: {e}") from None
    if not isinstance(data, dict) or data.get("schema") != 1:
        raise StatsUnavailable(f"{url}: not a nodelocal stats document")
    return data


# ---- formatting ------------------------------------------------------------------------------------

def _int(n: float | None) -> str:
    return "-" if n is None else f"{round(n):,}"


def _pct(r: float | None) -> str:
    return "-" if r is None else f"{100 * r:.1f}%"


def _rate(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}" if x >= 10 else f"{x:.2f}"


def _ms(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.2f} ms" if v < 1 else f"{v:.1f} ms" if v < 100 else f"{v:,.0f} ms"


def _bytes(b: float) -> str:
    for unit in ("B", "KiB", "MiB"):
        if b < 1024:
            return f"{b:.0f} {unit}" if unit == "B" else f"{b:.1f} {unit}"
        b /= 1024
    return f"{b:.1f} GiB"


def _duration(s: float) -> str:
    s = int(s)
    d, h, m = s // 86400, s % 86400 // 3600, s % 3600 // 60
    return f"{d}d {h}h" if d else f"{h}h {m}m" if h else f"{m}m {s % 60}s" if m else f"{s}s"


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def render(s: dict[str, Any], width: int = 100) -> str:
    """The figures as plain text lines (no colour: it goes to pipes and logs as well)."""
    w, t, c = s["window"], s["totals"], s["cache"]
    out = [
        f"nodelocal on {s['node']} · v{s['version']} · up {_duration(s['uptime_s'])} · "
        f"{'ready' if s['ready'] else 'NOT READY (no upstream has answered)'} · "
        f"CPU {s['process']['cpu_percent']:.1f}% · RSS {_bytes(s['process']['rss_bytes'])}",
        "",
        f"hit rate   {_pct(w['hit_rate'])} last minute · {_pct(t['hit_rate'])} since start · "
        f"denial hits {_pct(w['denial_share'])}",
        f"queries    {_rate(w['qps'])}/s last minute · total {_int(t['queries'])} "
        f"(udp {_int(t['udp'])}, tcp {_int(t['tcp'])}) · hits {_int(t['hits'])} "
        f"(success {_int(t['hits_success'])}, denial {_int(t['hits_denial'])}) · misses {_int(t['misses'])}",
        f"latency    p50 {_ms(w['p50_ms'])} · p90 {_ms(w['p90_ms'])} · p99 {_ms(w['p99_ms'])} "
        "(all queries, last minute)",
        f"cache      {_int(c['entries'])} entries of {_int(c['capacity'])} (success {_int(c['entries_success'])}, "
        f"denial {_int(c['entries_denial'])}) · {_bytes(c['bytes'])} of {_bytes(c['max_bytes'])} · "
        f"evictions {_rate(w['evictions_per_s'])}/s",
        f"responses  {', '.join(f'{k} {_int(v)}' for k, v in sorted(t['responses'].items(), key=lambda kv: -kv[1]))}"
        f" · coalesced {_int(t['coalesced'])} · fallthrough {_int(t['fallthrough'])} · "
        f"all upstreams failed {_int(t['all_upstreams_failed'])} · stale answers {_int(t.get('served_stale', 0))} · "
        f"prefetches {_int(t.get('prefetch', 0))}",
        "",
        "upstreams",
    ]
    for u in s["upstreams"]:
        out.append(f"  {u['group']:<8} {u['to']:<22} {'up' if u['healthy'] else 'DOWN':<5} "
                   f"{_rate(u['tries_per_s']):>8} tries/s  avg {_ms(u['avg_ms']):>9}  "
                   f"tries {_int(u['tries']):>8}  errors {_int(u['errors'])}")
    out += ["", "zones                            hit rate 1m   hit rate      hits    misses   entries"]
    for z in s["zones"]:
        out.append(f"  {_clip(z['zone'], 30):<30} {_pct(z['hit_rate_window']):>11} {_pct(z['hit_rate']):>10} "
                   f"{_int(z['hits']):>9} {_int(z['misses']):>9} {_int(z['entries']):>9}")
    top = s["top"]
    key_width = max(20, width - 26)
    for title, items in (("top names", top["names"]), ("top clients", top["clients"]),
                         ("query types", top["types"])):
        out += ["", f"{title} (sampled 1 in {top['sample_every']}; share · ≈ qps)"]
        if not items:
            out.append("  no data yet")
        for it in items:
            out.append(f"  {_clip(it['key'], key_width):<{key_width}} {_pct(it['share']):>7} {_rate(it['qps']):>9}")
    return "\n".join(out)


def frame(data: dict[str, Any], n: int, watch: bool, tty: bool, as_json: bool, width: int,
          clock: Callable[[], float] = time.time) -> str:
    """The text of the n-th (0-based) display, separated from the one before it.

    On a terminal, --watch redraws the screen. Into a pipe or file the frames follow one another: each
    text frame after the first starts with a blank line and a rule carrying the time, so `grep`, `less` and
    `head` see where one ends; --json --watch writes one document per line (JSON Lines).
    """
    if as_json:
        return (json.dumps(data, separators=(",", ":")) if watch and not tty else json.dumps(data, indent=2)) + "\n"
    text = render(data, width) + "\n"
    if watch and tty:
        return CLEAR + text
    if watch and n:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(clock()))
        return f"\n{FRAME_RULE} {stamp} {FRAME_RULE}\n" + text
    return text


def run(addr: str, watch: bool = False, interval: float = 2.0, count: int = 0, as_json: bool = False,
        out: TextIO | None = None, sleep: Callable[[float], None] = time.sleep, width: int = 100) -> int:
    """Print the figures once, or every `interval` seconds with `watch` (`count` > 0 stops after that many).

    A reader that goes away (`| head -2`) raises BrokenPipeError from the write: the caller
    (cli/commands.py) ends quietly with the shell's exit status for SIGPIPE.
    """
    where = target(addr)
    out = out or sys.stdout
    tty = out.isatty()
    shown = 0
    while True:
        data = fetch(where)
        out.write(frame(data, shown, watch, tty, as_json, width))
        out.flush()
        shown += 1
        if not watch or (count and shown >= count):
            return 0
        sleep(interval)
