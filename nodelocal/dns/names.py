"""DNS names: the one rule for a zone name, and the conversions between text, labels and wire form.

Every place that accepts a zone or domain name (the YAML config, a Corefile's server blocks, the
kube-dns ConfigMap's stub domains, `nodelocal dnsconfig`) checks it with zone_name(), and the router
splits it with labels_of_text(), so a name accepted in one place means the same in all of them.
"""

from __future__ import annotations

MAX_NAME = 253  # presentation length without the final dot (RFC 1035 §2.3.4: 255 octets on the wire)
MAX_LABEL = 63  # RFC 1035 §2.3.4
# Host-name characters (RFC 1123 §2.1) plus '_', which service names carry (RFC 2782: _sip._udp).
_LABEL_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_")


def zone_name(text: str) -> str:
    """The canonical form of a zone name: lowercased, without the final dot, '.' for the root.

    Raises ValueError, saying what is wrong, for anything else: an empty label ('a..b', '.a'), a label
    over 63 characters, a name over 253, or a character outside letters, digits, '-' and '_'.
    """
    if not text.isascii():  # checked first: str.lower() maps some non-ASCII letters to ASCII (KELVIN SIGN -> 'k')
        raise ValueError("only ASCII letters, digits, '-' and '_' (an IDN is written in its xn-- form)")
    name = text.lower()
    if name == ".":
        return "."
    if name.endswith("."):
        name = name[:-1]
    if not name:
        raise ValueError("empty name")
    if len(name) > MAX_NAME:
        raise ValueError(f"longer than {MAX_NAME} characters")
    for label in name.split("."):
        if not label:
            raise ValueError("empty label (a dot at the start or two in a row)")
        if len(label) > MAX_LABEL:
            raise ValueError(f"label {label[:16]!r}... longer than {MAX_LABEL} characters")
        if not _LABEL_CHARS.issuperset(label):
            raise ValueError(f"label {label!r} has a character other than letters, digits, '-' and '_'")
    return name


def labels_of_text(zone: str) -> tuple[bytes, ...]:
    """'cluster.local' -> (b'cluster', b'local'); '.' -> (). Lowercased; dots at the ends ignored."""
    zone = zone.strip(".").lower()
    return tuple(label.encode("ascii") for label in zone.split(".")) if zone else ()


def labels_of_wire(name: bytes) -> tuple[bytes, ...]:
    """The labels of an uncompressed, already validated wire name (lowercase it first)."""
    out = []
    off = 0
    while name[off]:
        ln = name[off]
        out.append(name[off + 1 : off + 1 + ln])
        off += 1 + ln
    return tuple(out)


def to_wire(name: str) -> bytes:
    """'a.example' (or 'a.example.') -> b'\\x01a\\x07example\\x00'; the root is b'\\x00'. ASCII names only."""
    out = b"".join(bytes([len(lb)]) + lb.encode("ascii") for lb in name.strip(".").split(".") if lb)
    return out + b"\x00"


def to_text(wire_name: bytes) -> str:
    """A wire-format name as presentation text, lowercased, without the final dot ('.' for the root);
    dots and backslashes inside a label are escaped, other unprintable bytes written as \\DDD."""
    labels, i = [], 0
    while i < len(wire_name) and wire_name[i]:
        n = wire_name[i]
        label = wire_name[i + 1 : i + 1 + n].lower()
        labels.append("".join(
            chr(c) if 0x21 <= c <= 0x7E and c not in (0x2E, 0x5C) else
            ("\\" + chr(c) if c in (0x2E, 0x5C) else f"\\{c:03d}") for c in label))
        i += 1 + n
    return ".".join(labels) or "."
