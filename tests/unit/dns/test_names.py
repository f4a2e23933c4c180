"""nodelocal.dns.names against dnspython as the oracle: the zone-name rule and text/label/wire conversions."""

from __future__ import annotations

import dns.name
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from nodelocal.dns.names import MAX_LABEL, MAX_NAME, labels_of_text, labels_of_wire, to_text, to_wire, zone_name

SETTINGS = settings(derandomize=True, deadline=None, max_examples=200, suppress_health_check=[HealthCheck.too_slow])

_HOST = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_"

host_labels = st.text(alphabet=_HOST, min_size=1, max_size=MAX_LABEL)
byte_labels = st.one_of(host_labels.map(str.encode), st.binary(min_size=1, max_size=MAX_LABEL))


@st.composite
def hostnames(draw: st.DrawFn) -> str:
    """A host name of letters (either case), digits, '-' and '_', at most 253 characters, no final dot."""
    out: list[str] = []
    for label in draw(st.lists(host_labels, min_size=1, max_size=8)):
        if sum(len(x) + 1 for x in out) + len(label) > MAX_NAME:
            break
        out.append(label)
    return ".".join(out)


@st.composite
def wire_names(draw: st.DrawFn) -> bytes:
    """An uncompressed wire name of at most 255 octets, any bytes in its labels."""
    out: list[bytes] = []
    total = 1
    for label in draw(st.lists(byte_labels, max_size=8)):
        if total + 1 + len(label) > 255:
            break
        out.append(label)
        total += 1 + len(label)
    w = dns.name.Name([*out, b""]).to_wire()
    assert w is not None
    return w


def oracle_wire(text: str) -> bytes:
    w = dns.name.from_text(text).to_wire()
    assert w is not None
    return w


def name_of_length(n: int) -> str:
    """A valid name of exactly n characters (no final dot), of labels of up to 63."""
    labels, left = [], n
    while left > 0:
        ln = min(MAX_LABEL, left)
        if left - ln == 1:  # no room for a one-character label after the dot: shorten this one
            ln -= 2
        labels.append("a" * ln)
        left -= ln + 1
    name = ".".join(labels)
    assert len(name) == n
    return name


# --------------------------------------------------------------------------------------------------
# zone_name: the one rule


@pytest.mark.parametrize(("text", "canonical"), [
    ("cluster.local", "cluster.local"),
    ("Cluster.LOCAL", "cluster.local"),
    ("cluster.local.", "cluster.local"),
    ("CLUSTER.LOCAL.", "cluster.local"),
    (".", "."),
    ("in-addr.arpa", "in-addr.arpa"),
    ("10.in-addr.arpa.", "10.in-addr.arpa"),
    ("_sip._UDP.Example.com", "_sip._udp.example.com"),
    ("a", "a"),
    ("xn--bcher-kva.example", "xn--bcher-kva.example"),
])
def test_zone_name_canonical_form(text: str, canonical: str) -> None:
    assert zone_name(text) == canonical
    assert zone_name(canonical) == canonical


@pytest.mark.parametrize("text", [
    "",  # nothing
    "..",  # the root twice
    "a..b",  # an empty label in the middle
    ".a",  # a dot at the start
    ".a.",
    "a.b..",  # two final dots
    "...",
    "a b.example",  # not a host-name character
    "a/b",
    "*.example",  # a wildcard is no zone
    "a@b",
    "ex\\.ample",  # no escapes in a zone name
    "tab\t.example",
    "caf\u00e9.example",  # non-ASCII
    "\u0130stanbul.example",  # lowercases to 'i' + a combining dot
    " cluster.local",
    "cluster.local ",
])
def test_zone_name_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        zone_name(text)


def test_zone_name_label_length_limit() -> None:
    assert zone_name("a" * MAX_LABEL + ".example") == "a" * MAX_LABEL + ".example"
    with pytest.raises(ValueError, match="63"):
        zone_name("a" * (MAX_LABEL + 1) + ".example")
    with pytest.raises(ValueError):
        zone_name("example." + "b" * (MAX_LABEL + 1))


def test_zone_name_length_limit() -> None:
    longest = name_of_length(MAX_NAME)
    assert zone_name(longest) == longest
    assert zone_name(longest + ".") == longest  # the final dot does not count
    assert len(oracle_wire(longest + ".")) == 255  # and this is indeed the wire limit
    too_long = name_of_length(MAX_NAME + 1)
    with pytest.raises(ValueError, match="253"):
        zone_name(too_long)
    with pytest.raises(dns.name.NameTooLong):
        dns.name.from_text(too_long + ".")  # the oracle agrees


def test_zone_name_uppercase_long_name_measured_after_lowercasing() -> None:
    longest = name_of_length(MAX_NAME).upper()
    assert zone_name(longest) == longest.lower()


def test_zone_name_rejects_non_ascii_that_lowercases_to_ascii() -> None:
    with pytest.raises(ValueError):
        zone_name("\u212a8s.example")  # 'K' (Kelvin) 8s.example


@SETTINGS
@given(name=hostnames(), final_dot=st.booleans())
@example(name="A" * 63, final_dot=True)
def test_zone_name_of_host_names_agrees_with_dnspython(name: str, final_dot: bool) -> None:
    text = name + ("." if final_dot else "")
    canonical = zone_name(text)
    assert canonical == name.lower()
    assert zone_name(canonical) == canonical  # idempotent
    assert dns.name.from_text(canonical) == dns.name.from_text(text)  # the same name (dnspython ignores case)


@SETTINGS
@given(text=st.text(alphabet=st.characters(max_codepoint=127), max_size=300))
@example(text="a..b")
@example(text="-.-")
def test_zone_name_accepts_only_what_it_can_stand_behind(text: str) -> None:
    """Any ASCII text: either a ValueError, or a canonical name that is a valid DNS name of host-name labels."""
    try:
        canonical = zone_name(text)
    except ValueError:
        return
    assert zone_name(canonical) == canonical
    if canonical == ".":
        assert text == "."
        return
    assert canonical == canonical.lower() and not canonical.endswith(".") and not canonical.startswith(".")
    assert set(canonical) <= set(_HOST.lower() + ".")
    assert len(canonical) <= MAX_NAME
    parsed = dns.name.from_text(canonical)  # would raise for an empty or too long label or name
    assert labels_of_text(canonical) == parsed.labels[:-1]


# --------------------------------------------------------------------------------------------------
# to_wire, labels_of_text


@pytest.mark.parametrize(("text", "wire"), [
    ("a.example", b"\x01a\x07example\x00"),
    ("a.example.", b"\x01a\x07example\x00"),
    (".", b"\x00"),
    ("", b"\x00"),
    ("Cluster.Local", b"\x07Cluster\x05Local\x00"),  # case is kept: queries carry the name as given
])
def test_to_wire_examples(text: str, wire: bytes) -> None:
    assert to_wire(text) == wire


@SETTINGS
@given(name=hostnames(), final_dot=st.booleans())
def test_to_wire_agrees_with_dnspython(name: str, final_dot: bool) -> None:
    text = name + ("." if final_dot else "")
    assert to_wire(text) == oracle_wire(name + ".")


@pytest.mark.parametrize(("text", "labels"), [
    ("cluster.local", (b"cluster", b"local")),
    ("Cluster.Local.", (b"cluster", b"local")),
    (".", ()),
    ("", ()),
    ("arpa", (b"arpa",)),
])
def test_labels_of_text_examples(text: str, labels: tuple[bytes, ...]) -> None:
    assert labels_of_text(text) == labels


@SETTINGS
@given(name=hostnames(), final_dot=st.booleans())
def test_labels_of_text_agrees_with_dnspython(name: str, final_dot: bool) -> None:
    text = name + ("." if final_dot else "")
    parsed = dns.name.from_text(name + ".")
    assert labels_of_text(text) == tuple(label.lower() for label in parsed.labels[:-1])


# --------------------------------------------------------------------------------------------------
# labels_of_wire, to_text


def test_labels_of_wire_examples() -> None:
    assert labels_of_wire(b"\x00") == ()
    assert labels_of_wire(b"\x03www\x07example\x04test\x00") == (b"www", b"example", b"test")
    assert labels_of_wire(b"\x03WwW\x00") == (b"WwW",)  # no lowercasing here: the caller does it
    # A question's bytes: the name is followed by type and class, which are not part of it.
    assert labels_of_wire(b"\x01a\x00\x00\x01\x00\x01") == (b"a",)


@SETTINGS
@given(w=wire_names())
def test_labels_of_wire_agrees_with_dnspython(w: bytes) -> None:
    parsed, used = dns.name.from_wire(w, 0)
    assert used == len(w)
    assert labels_of_wire(w) == parsed.labels[:-1]


@pytest.mark.parametrize(("wire", "text"), [
    (b"\x00", "."),
    (b"\x03WWW\x07Example\x04TEST\x00", "www.example.test"),
    (b"\x03a.b\x01c\x00", "a\\.b.c"),  # a dot inside a label
    (b"\x03a\\b\x00", "a\\\\b"),  # a backslash
    (b"\x03a b\x00", "a\\032b"),  # a space is not printable here
    (b"\x02\x00\xff\x00", "\\000\\255"),
    (b"\x04_tcp\x00", "_tcp"),
])
def test_to_text_examples(wire: bytes, text: str) -> None:
    assert to_text(wire) == text


@SETTINGS
@given(name=hostnames())
def test_to_text_of_host_names_is_dnspythons_lowercased(name: str) -> None:
    w = oracle_wire(name + ".")
    expected = dns.name.from_wire(w, 0)[0].to_text(omit_final_dot=True).lower()
    assert to_text(w) == expected == name.lower()


@SETTINGS
@given(w=wire_names())
@example(w=b"\x01@\x00")
@example(w=b"\x02\\1\x00")
@example(w=b"\x03.12\x00")
def test_to_text_reads_back_as_the_same_name(w: bytes) -> None:
    """Any bytes in labels: the text parses (dnspython) back to the same name, and is printable ASCII."""
    text = to_text(w)
    assert all(0x21 <= ord(c) <= 0x7E for c in text)
    assert not any("A" <= c <= "Z" for c in text)  # lowercased
    parsed = dns.name.from_wire(w, 0)[0]
    back = dns.name.from_text(text if text == "." else text + ".")
    assert back == parsed  # dnspython compares names without regard to ASCII case
    assert back.to_wire() == b"".join(bytes([len(lb)]) + lb.lower() for lb in parsed.labels)


@SETTINGS
@given(name=hostnames())
def test_text_wire_round_trips(name: str) -> None:
    canonical = zone_name(name)
    assert to_text(to_wire(canonical)) == canonical
    assert to_text(to_wire(name)) == canonical  # to_text lowercases what to_wire kept
    assert labels_of_wire(to_wire(canonical)) == labels_of_text(name)
    assert labels_of_wire(to_wire(name).lower()) == labels_of_text(name)
