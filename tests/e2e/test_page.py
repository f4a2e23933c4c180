"""The built-in live page (/) in headless Chromium, after the known workload of conftest.py: the numbers it
shows match /metrics and the workload, it loads nothing from elsewhere, logs no console error, fits a
phone's width, and leaves screenshots in artifacts/ (UPDATE_SCREENSHOT=1 also refreshes the README's)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.conftest import ARTIFACTS, REPO, WORKLOAD, Scenario

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
README_SHOT = REPO / "config" / "dashboard" / "live-page.png"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not os.path.exists(CHROMIUM):
        pytest.fail("chromium is not installed: run hack/setup.sh")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


class Watched:
    """A page with its console errors, uncaught exceptions and every URL it asked for."""

    def __init__(self, browser: Any, width: int, height: int, scale: float = 1) -> None:
        self.context = browser.new_context(viewport={"width": width, "height": height}, device_scale_factor=scale)
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", lambda r: self.requests.append(r.url))

    def open(self, url: str) -> None:
        self.page.goto(url, wait_until="load", timeout=15_000)
        self.page.wait_for_selector("body[data-loaded='1']", timeout=15_000)
        # wait for a refresh after the first, so that every figure comes from the same, settled state
        first = self.page.evaluate("() => document.querySelectorAll('#top-names tbody tr').length")
        self.page.wait_for_function("() => document.getElementById('updated').textContent !== ''", timeout=10_000)
        assert first >= 0

    def text(self, key: str) -> str:
        return str(self.page.locator(f'[data-k="{key}"]').first.inner_text())

    def number(self, key: str) -> int:
        return int(self.text(key).replace(",", ""))

    def rows(self, table: str) -> list[list[str]]:
        return [[c.strip() for c in row] for row in self.page.eval_on_selector_all(
            f"#{table} tbody tr", "rows => rows.map(r => Array.from(r.cells).map(c => c.innerText))")]

    def close(self) -> None:
        self.context.close()


def test_page_shows_what_metrics_say(scenario: Scenario, browser: Any) -> None:
    w = Watched(browser, 1440, 1000)
    try:
        w.open(scenario.base + "/")
        m, exp = scenario.agent.metric, scenario.expected
        hits = {k: int(m("coredns_cache_hits_total", type=k)) for k in ("success", "denial")}
        # the figures on the page are the ones in /metrics ...
        assert w.number("totals.queries") == m("coredns_dns_requests_total")
        assert w.number("totals.udp") == m("coredns_dns_requests_total", proto="udp")
        assert w.number("totals.hits") == sum(hits.values())
        assert w.number("totals.hits_success") == hits["success"]
        assert w.number("totals.hits_denial") == hits["denial"]
        assert w.number("totals.misses") == m("coredns_cache_misses_total")
        assert w.number("totals.fallthrough") == m("nodelocal_fallthrough_total")
        assert w.number("cache.entries") == m("coredns_cache_entries")
        assert w.number("cache.entries_denial") == m("coredns_cache_entries", type="denial")
        assert w.text("totals.hit_rate") == f"{100 * sum(hits.values()) / m('coredns_cache_requests_total'):.1f}%"
        assert f"NOERROR {int(m('coredns_dns_responses_total', rcode='NOERROR')):,}" in w.text("responses")
        # ... and the ones the workload caused
        assert w.number("totals.queries") == exp.queries
        assert w.number("totals.hits") == sum(exp.hits.values())
        assert w.number("totals.misses") == exp.misses
        assert w.text("totals.hit_rate") == f"{100 * exp.hit_rate:.1f}%"
        assert w.text("node") and w.page.locator("#state").inner_text() == "ready"

        # the top lists: the most asked name and the busiest client lead (sampling is 1 in 1 at this rate)
        names = w.rows("top-names")
        per_name: dict[str, int] = {}
        for n in WORKLOAD:
            per_name[n.qname] = per_name.get(n.qname, 0) + n.times
        ranked = sorted(per_name, key=lambda k: -per_name[k])
        assert [r[0] for r in names[:3]] == ranked[:3]
        # shares are of time-decayed counts (60 s half-life): close to, not exactly, the plain shares
        assert float(names[0][1].rstrip("%")) == pytest.approx(100 * per_name[ranked[0]] / exp.queries, abs=2)
        clients = w.rows("top-clients")
        busiest = max(exp.client_queries, key=lambda c: exp.client_queries[c])
        assert clients[0][0] == busiest
        assert {r[0] for r in clients} == set(exp.client_queries)
        assert {r[0] for r in w.rows("top-types")} == {"A", "AAAA"}

        # upstreams: the refusing host nameserver shows as down, the others up
        ups = {r[1]: r[2] for r in w.rows("upstreams")}
        assert ups[scenario.dead] == "down"
        assert ups[f"127.0.0.1:{scenario.cluster.port}"] == "up"
        zones = {r[0]: r for r in w.rows("zones")}
        assert int(zones["cluster.local"][3].replace(",", "")) == exp.zone_hits["cluster.local"]

        # nothing but this origin, no console errors
        assert all(u.startswith(scenario.base + "/") or u.startswith("data:") for u in w.requests), w.requests
        assert w.errors == []

        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / "live-page-wide.png"
        w.page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
        if os.environ.get("UPDATE_SCREENSHOT") == "1":
            README_SHOT.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(shot, README_SHOT)
    finally:
        w.close()


def test_page_fits_a_phone(scenario: Scenario, browser: Any) -> None:
    w = Watched(browser, 390, 844, scale=2)
    try:
        w.open(scenario.base + "/")
        overflow = w.page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"the page is {overflow}px wider than a phone"
        w.page.screenshot(path=str(ARTIFACTS / "live-page-phone.png"), full_page=True)
        assert w.errors == []
    finally:
        w.close()


def test_page_says_so_when_the_agent_is_gone(scenario: Scenario, browser: Any) -> None:
    """The page keeps trying and shows a banner instead of stale figures passing for live ones."""
    w = Watched(browser, 800, 600)
    try:
        w.open(scenario.base + "/")
        w.page.route("**/api/stats", lambda route: route.abort())
        w.page.wait_for_selector("#error:not([hidden])", timeout=10_000)
        assert "Cannot read /api/stats" in w.page.locator("#error").inner_text()
        assert w.page.locator("#state").inner_text() == "offline"
    finally:
        w.close()
