"""Every PromQL expression of the Grafana dashboard and of the alert rules, run by a real Prometheus that
scraped the agent through a known workload (conftest.py): no errors, no empty answers where data exists,
and the hit-rate panels show the ratios the workload caused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import REPO, RULES, Scenario
from tests.promql import metric_names, operands, substitute

pytestmark = pytest.mark.e2e

DASHBOARD = json.loads((REPO / "config" / "grafana" / "nodelocal.json").read_text())
README = (REPO / "README.md").read_text()
TARGETS = [(p["title"], t) for p in DASHBOARD["panels"] if p["type"] != "row" for t in p["targets"]]
ALERTS = [r for g in yaml.safe_load(Path(RULES).read_text())["groups"] for r in g["rules"]]
TOLERANCE = 0.005


def exported(scenario: Scenario) -> set[str]:
    """Every sample name the agent's /metrics has right now."""
    _s, body = scenario.agent.http("/metrics")
    return {s.name for fam in text_string_to_metric_families(body) for s in fam.samples}


def check_result(scenario: Scenario, expr: str, shown: str) -> list[dict[str, Any]]:
    res = scenario.prometheus.query(substitute(expr))
    assert res["status"] == "success", f"{shown}: {res.get('errorType')}: {res.get('error')}"
    result: list[dict[str, Any]] = res["data"]["result"]
    names = metric_names(expr)
    assert names, f"{shown}: no metric found in {expr!r}"
    missing = {n for n in names if n != "up"} - exported(scenario)
    if missing:
        # Only a series the agent does not export yet may come back empty, and it must be a documented one.
        for n in missing:
            base = n.removesuffix("_bucket")
            assert f"`{base.removesuffix('_total')}" in README or f"`{base}`" in README, \
                f"{shown}: {n} is neither exported nor listed in the README"
    else:
        assert result, f"{shown}: empty result although the agent exports {sorted(names)}"
    return result


@pytest.mark.parametrize(("panel", "target"), TARGETS, ids=[f"{p}/{t['refId']}" for p, t in TARGETS])
def test_dashboard_expression(scenario: Scenario, panel: str, target: dict[str, Any]) -> None:
    result = check_result(scenario, target["expr"], f"panel {panel!r} {target['refId']}")
    exp = scenario.expected
    got = {tuple(sorted(r["metric"].items())): float(r["value"][1]) for r in result}
    lookups = sum(exp.hits.values()) + exp.misses
    if panel in ("Hit rate", "Hit rate per node"):
        assert len(got) == 1
        assert next(iter(got.values())) == pytest.approx(exp.hit_rate, abs=TOLERANCE)
    elif panel == "Hit rate per zone":
        want = {(("zones", z if z == "." else z + "."),): exp.zone_hits.get(z, 0) / (exp.zone_hits.get(z, 0) + m)
                for z, m in exp.zone_misses.items()}
        assert got == pytest.approx(want, abs=TOLERANCE)
    elif panel == "Hits: success vs denial":
        want = {(("type", k),): n / lookups for k, n in exp.hits.items()}
        assert got == pytest.approx(want, abs=TOLERANCE)


@pytest.mark.parametrize("rule", ALERTS, ids=[r["alert"] for r in ALERTS])
def test_alert_expression(scenario: Scenario, rule: dict[str, Any]) -> None:
    check = scenario.prometheus.query(rule["expr"])
    assert check["status"] == "success", f"{rule['alert']}: {check.get('error')}"
    for i, part in enumerate(operands(rule["expr"])):
        check_result(scenario, part, f"alert {rule['alert']} operand {i}")


def test_alerts_that_the_workload_must_trigger(scenario: Scenario) -> None:
    """The workload refused every try at one host nameserver and got SERVFAILs: two alerts' expressions hold."""
    by_name = {r["alert"]: r["expr"] for r in ALERTS}
    down = scenario.prometheus.query(by_name["NodeLocalDNSUpstreamDown"])["data"]["result"]
    assert [(r["metric"]["group"], r["metric"]["to"]) for r in down] == [("host", scenario.dead)]
    errors = scenario.prometheus.query(by_name["NodeLocalDNSUpstreamErrors"])["data"]["result"]
    assert len(errors) == 1  # 2 SERVFAIL + 2 refused of 26 tries: 15% > 5%
    assert float(errors[0]["value"][1]) == pytest.approx(4 / 26, abs=TOLERANCE)
    quiet = scenario.prometheus.query(by_name["NodeLocalDNSHitRateCollapse"])["data"]["result"]
    assert quiet == []


def test_prometheus_evaluates_the_rules_without_error(scenario: Scenario) -> None:
    rules = scenario.prometheus.api("rules")["data"]["groups"]
    seen = {r["name"]: r for g in rules for r in g["rules"]}
    assert set(seen) == {r["alert"] for r in ALERTS}
    for name, r in seen.items():
        assert r["health"] == "ok", f"{name}: {r.get('lastError')}"


def test_scrape_matches_the_workload(scenario: Scenario) -> None:
    exp = scenario.expected
    p = scenario.prometheus
    assert p.value("sum(coredns_dns_requests_total)") == exp.queries
    assert p.value("sum(coredns_cache_misses_total)") == exp.misses
    for kind, n in exp.hits.items():
        assert p.value(f'sum(coredns_cache_hits_total{{type="{kind}"}})') == n
        assert p.value(f'sum(coredns_cache_entries{{type="{kind}"}})') == exp.entries[kind]
    assert p.value("sum(nodelocal_fallthrough_total)") == 2
