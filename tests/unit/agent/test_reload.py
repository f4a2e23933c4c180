"""The reload plan by itself (nodelocal.agent.reload.plan): which zones keep their cache, which are
emptied, added or removed when a new config replaces the old one. No socket, no agent."""

from __future__ import annotations

from typing import Any

from nodelocal.agent.reload import plan
from nodelocal.config import model as config


def cfg_of(zones: dict[str, Any], groups: dict[str, Any]) -> config.Config:
    return config.load(None, {"zones": zones, "upstreams": groups}, env={}, resolv_conf="/nonexistent")


G = {"cluster": {"servers": ["10.0.0.1"]}, "host": {"servers": ["192.0.2.53"]}, "corp": {"servers": ["10.9.0.1"]}}


def test_plan_keeps_zones_whose_upstreams_did_not_change() -> None:
    old = cfg_of({"cluster.local": {"forward": ["cluster"]}, ".": {"forward": ["cluster", "host"]}}, G)
    new = cfg_of({"cluster.local": {"forward": ["cluster"]}, ".": {"forward": ["cluster", "host"]}},
                 {**G, "host": {"servers": ["192.0.2.54"]}})
    ch = plan(old, new)
    assert (ch.kept, ch.cleared, ch.added, ch.removed) == (["cluster.local"], ["."], [], [])


def test_plan_an_added_zone_empties_the_zone_it_takes_names_from() -> None:
    old = cfg_of({"cluster.local": {"forward": ["cluster"]}, ".": {"forward": ["host"]}}, G)
    new = cfg_of({"cluster.local": {"forward": ["cluster"]}, "svc.cluster.local": {"forward": ["corp"]},
                  "corp.test": {"forward": ["corp"]}, ".": {"forward": ["host"]}}, G)
    ch = plan(old, new)
    assert ch.added == ["svc.cluster.local", "corp.test"]
    assert ch.cleared == ["cluster.local", "."] and ch.kept == []


def test_plan_removed_zone_and_group_renamed_with_the_same_servers() -> None:
    old = cfg_of({"corp.test": {"forward": ["corp"]}, ".": {"forward": ["host"]}}, G)
    new = cfg_of({".": {"forward": ["h2"]}}, {**G, "h2": {"servers": ["192.0.2.53"]}})
    ch = plan(old, new)
    assert ch.removed == ["corp.test"] and ch.kept == ["."]  # same servers, same settings: same answers
