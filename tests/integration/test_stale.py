"""Serve-stale (RFC 8767) and prefetch on loopback, against an upstream that goes silent, answers SERVFAIL,
answers slowly and comes back. TTLs are shortened to seconds so that entries expire within a test."""

from __future__ import annotations

import time
from typing import Any

import dns.rcode
import pytest

from tests.fakedns import SERVFAIL, FakeDNS, wait_for
from tests.integration.conftest import RunningAgent, upstreams

NAME = "web.default.svc.cluster.local"


def stale_agent(make_agent: Any, cluster: FakeDNS, host: FakeDNS, **cache: Any) -> RunningAgent:
    """An agent whose cluster zone caches for 1 s and serves stale with a 0.3 s client timer."""
    zone_cache = {"min_ttl": 1, "success_max_ttl": 1, "denial_max_ttl": 1, "servfail_ttl": 5,
                  "stale_client_timeout": 0.3, "stale_recheck": 30.0, "prefetch_hits": 0, **cache}
    return make_agent({
        **upstreams(cluster, host, try_timeout=0.4),
        "resolve": {"query_timeout": 1.0},
        "zones": {"cluster.local": {"forward": ["cluster"], "cache": zone_cache},
                  ".": {"forward": ["cluster", "host"]}},
    })


def timed(agent: RunningAgent, name: str = NAME, **kw: Any) -> tuple[Any, float]:
    t0 = time.monotonic()
    r = agent.query(name, **kw)
    return r, time.monotonic() - t0


def test_silent_upstream_gets_the_stale_answer_within_the_client_timer(
        make_agent: Any, cluster: FakeDNS, host: FakeDNS) -> None:
    agent = stale_agent(make_agent, cluster, host)
    assert agent.query(NAME).answer[0][0].address == "10.0.0.10"
    time.sleep(1.2)  # expired
    cluster.down = True
    r, took = timed(agent)
    assert r.rcode() == dns.rcode.NOERROR and r.answer[0][0].address == "10.0.0.10"
    assert r.answer[0].ttl == 30  # RFC 8767 §4: the stale TTL
    assert took < 1.0  # the client timer (0.3 s), not the upstream deadline (1.0 s)
    assert agent.metric("coredns_cache_served_stale_total", zones="cluster.local.") == 1
    # The refresh failed (no reply within the deadline): from now on the name is answered stale at once,
    # without asking the upstream again (failure recheck).
    assert wait_for(lambda: agent.metric("coredns_forward_healthcheck_broken_total") >= 1, 3)
    asked = cluster.count(NAME)
    for _ in range(3):
        r, took = timed(agent, tcp=True)
        assert r.answer[0][0].address == "10.0.0.10" and r.answer[0].ttl == 30
    assert cluster.count(NAME) == asked
    assert agent.metric("coredns_cache_served_stale_total", zones="cluster.local.") == 4


def test_servfail_never_replaces_the_stale_entry_and_fresh_data_does(
        make_agent: Any, cluster: FakeDNS, host: FakeDNS) -> None:
    agent = stale_agent(make_agent, cluster, host, stale_recheck=0.5)
    agent.query(NAME)
    time.sleep(1.2)
    cluster.behaviour[NAME + "."] = SERVFAIL
    r = agent.query(NAME)
    assert r.rcode() == dns.rcode.NOERROR and r.answer[0].ttl == 30
    time.sleep(0.6)  # past the recheck: the next query asks again, and still SERVFAIL -> still stale
    assert agent.query(NAME).answer[0][0].address == "10.0.0.10"
    # CoreDNS is back with a new address: the first query after the recheck gets the fresh answer.
    cluster.behaviour.pop(NAME + ".")
    cluster.add(NAME, "A", 100, "10.0.0.99")
    time.sleep(0.6)
    r = agent.query(NAME)
    assert r.answer[0][0].address == "10.0.0.99" and r.answer[0].ttl <= 1


def test_slow_upstream_stale_now_fresh_later(make_agent: Any, cluster: FakeDNS, host: FakeDNS) -> None:
    agent = stale_agent(make_agent, cluster, host)
    agent.query(NAME)
    time.sleep(1.2)
    cluster.delay[NAME + "."] = 0.6  # slower than the try timeout (0.4 s): the refresh fails
    cluster.add(NAME, "A", 100, "10.0.0.77")
    r, took = timed(agent)
    assert r.answer[0][0].address == "10.0.0.10" and r.answer[0].ttl == 30 and took < 0.6


def test_slow_but_within_the_deadline_refreshes_in_the_background(
        make_agent: Any, cluster: FakeDNS, host: FakeDNS) -> None:
    agent = stale_agent(make_agent, cluster, host, stale_client_timeout=0.1)
    agent.query(NAME)
    time.sleep(1.2)
    cluster.delay[NAME + "."] = 0.25  # answers within the try timeout (0.4 s), after the client timer
    cluster.add(NAME, "A", 100, "10.0.0.77")
    r = agent.query(NAME)
    assert r.answer[0][0].address == "10.0.0.10" and r.answer[0].ttl == 30  # stale now ...
    time.sleep(0.4)
    assert agent.query(NAME).answer[0][0].address == "10.0.0.77"  # ... and the refresh landed meanwhile


def test_without_a_stale_entry_or_past_the_window_it_is_servfail(
        make_agent: Any, cluster: FakeDNS, host: FakeDNS) -> None:
    agent = stale_agent(make_agent, cluster, host, serve_stale=0.5)
    agent.query(NAME)
    cluster.down = True
    assert agent.query("other.default.svc.cluster.local").rcode() == dns.rcode.SERVFAIL  # never cached
    time.sleep(1.7)  # expired 0.7 s ago: past the 0.5 s stale window
    assert agent.query(NAME).rcode() == dns.rcode.SERVFAIL
    assert agent.metric("coredns_cache_served_stale_total") == 0


def test_serve_stale_off(make_agent: Any, cluster: FakeDNS, host: FakeDNS) -> None:
    agent = stale_agent(make_agent, cluster, host, serve_stale=0)
    agent.query(NAME)
    time.sleep(1.2)
    cluster.down = True
    assert agent.query(NAME).rcode() == dns.rcode.SERVFAIL


def test_negative_answers_are_served_stale_too(make_agent: Any, cluster: FakeDNS, host: FakeDNS) -> None:
    agent = stale_agent(make_agent, cluster, host)
    gone = "gone.default.svc.cluster.local"
    assert agent.query(gone).rcode() == dns.rcode.NXDOMAIN
    time.sleep(1.2)
    cluster.down = True
    r = agent.query(gone)
    assert r.rcode() == dns.rcode.NXDOMAIN and r.authority[0].ttl == 30


@pytest.mark.parametrize("hits", [2, 0])
def test_prefetch_refreshes_a_used_entry_before_it_expires(
        make_agent: Any, cluster: FakeDNS, host: FakeDNS, hits: int) -> None:
    agent = stale_agent(make_agent, cluster, host, success_max_ttl=2, min_ttl=2, prefetch_hits=hits,
                        prefetch_percent=50)
    agent.query(NAME)
    for _ in range(3):
        agent.query(NAME)  # hits: the entry is in use
    assert cluster.count(NAME) == 1
    time.sleep(1.4)  # past half its TTL: the refresh window is open
    if hits:
        assert wait_for(lambda: cluster.count(NAME) == 2, 2)
        assert agent.metric("coredns_cache_prefetch_total", zones="cluster.local.") == 1
        time.sleep(0.8)  # past the first answer's expiry: the prefetched entry answers, nobody waits
        misses = agent.metric("coredns_cache_misses_total", zones="cluster.local.")
        agent.query(NAME)
        assert agent.metric("coredns_cache_misses_total", zones="cluster.local.") == misses
        assert cluster.count(NAME) == 2
    else:
        time.sleep(0.8)
        assert cluster.count(NAME) == 1  # prefetch off: nothing asked before the expiry
        agent.query(NAME)
        assert cluster.count(NAME) == 2 and agent.metric("coredns_cache_prefetch_total") == 0


def test_prefetch_leaves_an_unused_entry_alone(make_agent: Any, cluster: FakeDNS, host: FakeDNS) -> None:
    agent = stale_agent(make_agent, cluster, host, success_max_ttl=2, min_ttl=2, prefetch_hits=2,
                        prefetch_percent=50)
    agent.query(NAME)  # stored, but no hit
    time.sleep(2.2)
    assert cluster.count(NAME) == 1 and agent.metric("coredns_cache_prefetch_total") == 0


def test_last_known_good_only_while_the_upstreams_are_degraded(
        make_agent: Any, cluster: FakeDNS, host: FakeDNS) -> None:
    dead = FakeDNS(zone="cluster.local.", down=True).start()  # a CoreDNS pod that stopped answering
    try:
        zone_cache = {"min_ttl": 1, "success_max_ttl": 1, "denial_max_ttl": 1, "stale_client_timeout": 1.5,
                      "stale_recheck": 0.3, "prefer_stale": True, "prefetch_hits": 0}
        agent = make_agent({
            "upstreams": {"cluster": {"servers": [f"127.0.0.1:{dead.port}", f"127.0.0.1:{cluster.port}"],
                                      "transport": "udp", "policy": "sequential", "try_timeout": 0.3,
                                      "health_check": 0.2},
                          "host": {"servers": [f"127.0.0.1:{host.port}"]}},
            "resolve": {"query_timeout": 2.0},
            "zones": {"cluster.local": {"forward": ["cluster"], "cache": zone_cache}, ".": {"forward": ["host"]}},
        })
        assert agent.query(NAME).answer[0][0].address == "10.0.0.10"  # the dead one timed out, then answered
        agent.query("warm.default.svc.cluster.local")  # a second silent try: the dead server is down now
        assert wait_for(lambda: agent.metric("nodelocal_upstream_healthy", to=f"127.0.0.1:{dead.port}") == 0, 3)
        time.sleep(1.2)
        del cluster.records[(NAME + ".", "A")]  # the live server now says NXDOMAIN
        r = agent.query(NAME)
        assert r.rcode() == dns.rcode.NOERROR and r.answer[0][0].address == "10.0.0.10" and r.answer[0].ttl == 30
        time.sleep(0.4)  # past the recheck, still degraded: still the last known good answer
        assert agent.query(NAME).answer[0][0].address == "10.0.0.10"
        # Healthy again (the probe gets an answer): the denial is believed, a deleted Service disappears.
        dead.down = False
        assert wait_for(lambda: agent.metric("nodelocal_upstream_healthy", to=f"127.0.0.1:{dead.port}") == 1, 3)
        agent.query("warm2.default.svc.cluster.local")  # a forward that gets its answer: not degraded
        time.sleep(0.4)
        assert agent.query(NAME).rcode() == dns.rcode.NXDOMAIN
    finally:
        dead.stop()


def test_an_upstream_that_comes_back_ends_the_failure_recheck(make_agent: Any, cluster: FakeDNS,
                                                              host: FakeDNS) -> None:
    zone_cache = {"min_ttl": 1, "success_max_ttl": 1, "denial_max_ttl": 1, "stale_client_timeout": 0.3,
                  "stale_recheck": 30.0, "prefetch_hits": 0}
    agent = make_agent({
        **upstreams(cluster, host, try_timeout=0.4, max_fails=1, health_check=0.1),
        "resolve": {"query_timeout": 1.0},
        "zones": {"cluster.local": {"forward": ["cluster"], "cache": zone_cache}, ".": {"forward": ["host"]}},
    })
    agent.query(NAME)
    time.sleep(1.2)
    cluster.down = True
    assert agent.query(NAME).answer[0].ttl == 30  # stale; the refresh fails and the server is marked down
    assert wait_for(lambda: agent.metric("nodelocal_upstream_healthy", group="cluster") == 0, 3)
    cluster.add(NAME, "A", 100, "10.0.0.42")
    cluster.down = False  # the probe gets its answer: up again, and the recheck of 30 s is over at once
    assert wait_for(lambda: agent.metric("nodelocal_upstream_healthy", group="cluster") == 1, 3)
    r = agent.query(NAME)
    assert r.answer[0][0].address == "10.0.0.42" and r.answer[0].ttl <= 1
