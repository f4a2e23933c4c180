"""nodelocal.resolve.router: the longest configured suffix of a name picks its zone."""

from __future__ import annotations

import dns.name
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nodelocal.dns.names import labels_of_text, labels_of_wire
from nodelocal.resolve.router import Router

ZONES = {
    ".": "root",
    "cluster.local": "cluster",
    "svc.cluster.local": "svc",
    "in-addr.arpa": "v4rev",
    "10.in-addr.arpa": "ten",
    "Corp.Example": "corp",
}


def wire_labels(name: str) -> tuple[bytes, ...]:
    """As callers do it: the query's wire name, lowercased, split into labels."""
    return labels_of_wire(dns.name.from_text(name).to_wire().lower())


@pytest.mark.parametrize(
    ("name", "zone"),
    [
        ("kubernetes.default.svc.cluster.local", "svc"),  # longest suffix wins over cluster.local
        ("svc.cluster.local", "svc"),  # the zone apex itself
        ("pod-ip.ns.pod.cluster.local", "cluster"),
        ("cluster.local", "cluster"),
        ("local", "root"),
        ("xcluster.local", "root"),  # label boundary: not a suffix of labels
        ("a.xsvc.cluster.local", "cluster"),
        ("svc.cluster.local.evil.com", "root"),
        ("4.3.2.10.in-addr.arpa", "ten"),
        ("4.3.2.1.in-addr.arpa", "v4rev"),
        ("110.in-addr.arpa", "v4rev"),
        ("www.example.com", "root"),
        (".", "root"),
        ("host.corp.example", "corp"),  # zone names are lowercased when the router is built
        ("WWW.SVC.Cluster.LOCAL", "svc"),  # callers lowercase the wire name
    ],
)
def test_match(name: str, zone: str) -> None:
    assert Router(ZONES).match(wire_labels(name)) == zone


def test_root_zone_is_required() -> None:
    with pytest.raises(ValueError):
        Router({"cluster.local": 1})


def test_only_root() -> None:
    r = Router({".": "root"})
    assert r.match(()) == "root" and r.match(wire_labels("a.b.c.d.e.f")) == "root"


def test_deep_zone_and_deeper_names() -> None:
    r = Router({".": 0, "a.b.c.d.e": 5, "e": 1})
    assert r.match(wire_labels("x.y.z.a.b.c.d.e")) == 5
    assert r.match(wire_labels("b.c.d.e")) == 1
    assert r.match(wire_labels("a.b.c.d.e")) == 5


def test_labels_of_text_and_wire() -> None:
    assert labels_of_text(".") == ()
    assert labels_of_text("Cluster.Local.") == (b"cluster", b"local")
    assert labels_of_wire(b"\x07cluster\x05local\x00\x00\x01\x00\x01") == (b"cluster", b"local")
    assert labels_of_wire(b"\x00\x00\x01") == ()


names = st.lists(st.sampled_from(["svc", "cluster", "local", "a", "xcluster", "in-addr", "arpa", "10", "corp",
                                  "example", "b"]), max_size=6)


@settings(max_examples=200, derandomize=True, deadline=None)
@given(names)
def test_match_is_the_longest_configured_suffix(labels: list[str]) -> None:
    """Against a brute-force oracle: the longest zone whose labels end the name's labels."""
    name = ".".join(labels) + "." if labels else "."
    best, best_len = "root", -1
    for zname, value in ZONES.items():
        zl = [x.lower() for x in zname.split(".") if x]
        if len(zl) <= len(labels) and labels[len(labels) - len(zl):] == zl and len(zl) > best_len:
            best, best_len = value, len(zl)
    assert Router(ZONES).match(wire_labels(name)) == best
