"""The README holds together: every internal link lands on a heading, the contents name every section, and
commands are spelt one way (root assumed, no sudo; `nodelocal` with the virtualenv activated)."""

from __future__ import annotations

import re
from pathlib import Path

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def _prose_lines() -> list[str]:
    """The README's lines outside fenced code blocks (a `# comment` in a shell block is no heading)."""
    out, fenced = [], False
    for line in README.splitlines():
        if line.startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            out.append(line)
    return out


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation dropped, spaces to hyphens."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def headings(level: int | None = None) -> list[str]:
    marks = re.compile(r"^(#{1,6}) (.+)$")
    found = []
    for line in _prose_lines():
        m = marks.match(line)
        if m and (level is None or len(m.group(1)) == level):
            found.append(m.group(2))
    return found


def test_slug_follows_github() -> None:
    assert slug("Metrics (`/metrics`)") == "metrics-metrics"
    assert slug("Reliability: what pods see while CoreDNS fails") == "reliability-what-pods-see-while-coredns-fails"
    assert slug("Uninstall, and roll back to node-local-dns") == "uninstall-and-roll-back-to-node-local-dns"


def test_every_internal_link_lands_on_a_heading() -> None:
    anchors = {slug(h) for h in headings()}
    links = set(re.findall(r"\]\(#([^)]+)\)", README))
    assert links, "the README links to none of its sections"
    assert not links - anchors, f"links to no heading: {sorted(links - anchors)}"


def test_contents_name_every_section() -> None:
    contents = README.split("## Contents", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"\]\(#([^)]+)\)", contents))
    sections = {slug(h) for h in headings(2)} - {"contents"}
    assert not sections - listed, f"sections missing from the contents: {sorted(sections - listed)}"


def test_commands_are_spelt_one_way() -> None:
    # Root is assumed (a node, a lab machine): `sudo` may be named once, where the README says so.
    assert README.count("sudo") == 1
    assert ".venv/bin/nodelocal" not in README


def test_layout_names_every_module() -> None:
    layout = README.split("## Layout", 1)[1]
    pkg = Path(__file__).resolve().parents[2] / "nodelocal"
    hack = pkg.parent / "hack"
    files = [*pkg.glob("*/*.py"), *hack.glob("*.py"), *hack.glob("*.sh"), *hack.glob("bench/*.py")]
    missing = [f"{m.parent.name}/{m.name}" for m in sorted(files) if m.name != "__init__.py" and m.name not in layout]
    assert not missing, f"README's Layout does not name: {missing}"
