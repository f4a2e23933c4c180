"""nodelocal.agent.snapshot: the cache on disk, read back with its expiry re-based; unusable files ignored."""

from __future__ import annotations

import json
import logging
import struct
from pathlib import Path

import pytest

from nodelocal.agent import snapshot
from nodelocal.agent.snapshot import MAGIC
from tests.unit.agent.test_handover import entry

ZONES = {"cluster.local": "chain"}


def test_a_snapshot_round_trips_and_counts_the_time_since_it_was_written(tmp_path: Path) -> None:
    path = str(tmp_path / "cache.snapshot")
    e = entry("web.default.svc.cluster.local", stored=100.0)
    size = snapshot.write(path, [("cluster.local", e)], ZONES, now=110.0, wall=1000.0)
    assert size == (tmp_path / "cache.snapshot").stat().st_size
    assert (tmp_path / "cache.snapshot").stat().st_mode & 0o777 == 0o600
    data = (tmp_path / "cache.snapshot").read_bytes()
    # Read 7 s of wall clock later, on another monotonic clock (a new process): 10 + 7 s old.
    records, zones = snapshot.decode(data, now=5000.0, wall=1007.0, max_age=600)
    assert zones == ZONES and [r.zone for r in records] == ["cluster.local"]
    got = records[0].entry
    assert got.expires - 5000.0 == e.expires - 117.0  # never extended
    assert got.key == e.key and got.template == e.template


@pytest.mark.parametrize(("mangle", "why"), [
    (lambda d: b"something else entirely", "not a nodelocal cache snapshot"),
    (lambda d: d[: len(MAGIC) + 2], "cut short"),
    (lambda d: MAGIC + struct.pack("!I", 5) + b"{nope", "not JSON"),
    (lambda d: MAGIC + struct.pack("!I", 13) + b'{"format": 9}', "format 9"),
    (lambda d: d[:-7], "does not add up"),
])
def test_a_corrupt_or_foreign_snapshot_is_refused(tmp_path: Path, mangle: object, why: str) -> None:
    path = tmp_path / "s"
    snapshot.write(str(path), [("cluster.local", entry("web.default.svc.cluster.local"))], ZONES, 110.0, 1000.0)
    data = mangle(path.read_bytes())  # type: ignore[operator]
    with pytest.raises(Exception, match=why):
        snapshot.decode(data, now=0.0, wall=1001.0, max_age=600)


def test_too_old_or_from_the_future_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s"
    snapshot.write(str(path), [("cluster.local", entry("web.default.svc.cluster.local"))], ZONES, 110.0, 1000.0)
    data = path.read_bytes()
    with pytest.raises(Exception, match="601s old"):
        snapshot.decode(data, now=0.0, wall=1601.0, max_age=600)
    with pytest.raises(Exception, match="the clock went back"):
        snapshot.decode(data, now=0.0, wall=999.0, max_age=600)


def test_read_warns_and_starts_cold_on_a_bad_file_and_is_quiet_without_one(tmp_path: Path,
                                                                             caplog: pytest.LogCaptureFixture) -> None:
    assert snapshot.read(str(tmp_path / "none"), lambda: 0.0, 600) == ([], {})
    assert not caplog.records
    bad = tmp_path / "bad"
    bad.write_bytes(MAGIC + struct.pack("!I", 2) + json.dumps({}).encode())
    with caplog.at_level(logging.WARNING, "nodelocal.snapshot"):
        assert snapshot.read(str(bad), lambda: 0.0, 600) == ([], {})
    assert "ignored" in caplog.text and "starting cold" in caplog.text


def test_a_failed_write_leaves_the_old_snapshot_and_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "s"
    snapshot.write(str(path), [], ZONES, 0.0, 1000.0)
    before = path.read_bytes()
    (tmp_path / "dir").mkdir()
    with pytest.raises(OSError):
        snapshot.write(str(tmp_path / "dir"), [], ZONES, 0.0, 1001.0)  # a directory in the way: rename fails
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir", "s"]
