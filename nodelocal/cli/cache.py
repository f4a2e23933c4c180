"""`nodelocal cache dump [NAME]` and `nodelocal cache flush NAME|--zone Z|--all`: the running agent's cache,
through its control socket (cli/control.py)."""

from __future__ import annotations

import json
import sys
from typing import Any, TextIO

from nodelocal.cli.control import one, request


def describe_entry(e: dict[str, Any]) -> list[str]:
    """One entry in a few lines: the question and its state, then its records, indented."""
    flags = [f for f in e.get("flags", []) if f != "rd"]
    if "rd" not in e.get("flags", []):
        flags.insert(0, "no-rd")
    state = (f"stale for {e['stale_for']}s (kept to answer while the upstreams fail)" if e["stale"]
             else f"{e['remaining']}s left of {e['ttl']}s")
    head = (f"{e['name']} {e['type']}{' ' + e['class'] if e['class'] != 'IN' else ''}"
            f"{' [' + ' '.join(flags) + ']' if flags else ''}: {e['rcode']}, {e['kind']}, zone {e['zone']}, "
            f"{state}, {e['hits']} hits")
    lines = [head]
    lines += [f"    {ln}" for ln in e.get("answer", [])]
    lines += [f"    (authority) {ln}" for ln in e.get("authority", [])]
    if len(lines) == 1:
        lines.append("    (no records)")
    return lines


def dump(path: str, name: str | None, as_json: bool, out: TextIO | None = None, timeout: float = 10.0) -> int:
    out = out or sys.stdout
    req: dict[str, Any] = {"op": "dump"}
    if name:
        req["name"] = name
    for obj in request(path, req, timeout):
        if "entry" in obj:
            if as_json:
                out.write(json.dumps(obj["entry"]) + "\n")
            else:
                out.write("\n".join(describe_entry(obj["entry"])) + "\n")
            continue
        if as_json:
            continue
        sent, matched = obj["sent"], obj["matched"]
        what = f"for {name}" if name else "in the cache"
        if obj.get("cut"):
            out.write(f"{sent} of {matched} entries {what} shown (a dump sends at most control.max_dump = "
                      f"{obj['max_dump']}; name one to see its entries)\n")
        else:
            out.write(f"{sent} {'entry' if sent == 1 else 'entries'} {what}\n")
    return 0


def flush(path: str, name: str | None, zone: str | None, everything: bool, out: TextIO | None = None,
          timeout: float = 10.0) -> int:
    out = out or sys.stdout
    req: dict[str, Any] = {"op": "flush"}
    if name:
        req["name"] = name
    elif zone:
        req["zone"] = zone
    elif everything:
        req["all"] = True
    end = one(path, req, timeout)
    n = end["flushed"]
    out.write(f"flushed {n} {'entry' if n == 1 else 'entries'} ({end['what']}); {end['entries']} left in the cache\n")
    return 0
