"""Just enough PromQL reading for the tests: which metrics an expression reads, and an alert's operands.

Not a parser: it relies on the shapes our dashboard and rules use (and tests/unit/observe/test_exposition.py
checks it on them). Prometheus itself judges the expressions in tests/e2e.
"""

from __future__ import annotations

import re

KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left",
            "group_right", "inf", "nan"}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENT = re.compile(r"(?<![\w:$.])([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\()?")
_COMPARE_SCALAR = re.compile(r"\s*(==|!=|>=|<=|>|<)\s*(bool\s+)?-?[0-9][0-9.e+-]*\s*$")

GRAFANA_VARIABLES = {"$__rate_interval": "10m", "$job": "nodelocal", "$instance": ".*", "$node": ".*"}


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects (histogram series keep their _bucket suffix)."""
    s = _STRING.sub('""', expr)
    s = re.sub(r"\{[^}]*\}", "", s)
    s = re.sub(r"\[[^\]]*\]", "", s)
    s = _GROUPING.sub("", s)
    names = set()
    for m in _IDENT.finditer(s):
        if m.group(2) is None and m.group(1).lower() not in KEYWORDS:
            names.add(m.group(1))
    return names


def _split_top(expr: str, words: tuple[str, ...]) -> list[str]:
    """Split at the binary operators `words` outside parentheses, braces, brackets and strings."""
    parts, depth, start, i = [], 0, 0, 0
    quote = ""
    while i < len(expr):
        c = expr[i]
        if quote:
            if c == "\\":
                i += 1
            elif c == quote:
                quote = ""
        elif c in "\"'":
            quote = c
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif depth == 0 and c.isspace():
            m = re.match(r"\s+(\w+)\s", expr[i:])
            if m and m.group(1) in words:
                parts.append(expr[start:i])
                start = i + m.end()
                i = start
                continue
        i += 1
    parts.append(expr[start:])
    return [p.strip() for p in parts if p.strip()]


def operands(expr: str) -> list[str]:
    """An alert's value expressions: its top-level `and`/`or`/`unless` operands, each without its comparison
    with a number (`A < 0.5 and B > 1` -> [A, B]). These must return series whenever their metrics exist."""
    out = []
    for part in _split_top(expr.strip(), ("and", "or", "unless")):
        out.append(_COMPARE_SCALAR.sub("", part).strip())
    return out


def substitute(expr: str, variables: dict[str, str] = GRAFANA_VARIABLES) -> str:
    """A dashboard query as Prometheus can run it: Grafana's variables replaced (longest names first)."""
    for name in sorted(variables, key=len, reverse=True):
        expr = expr.replace(name, variables[name])
    return expr
