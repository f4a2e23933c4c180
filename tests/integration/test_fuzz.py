"""The short fuzz run of hack/fuzz.py (20,000 inputs) against the real agent on loopback, as CI runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_short_fuzz_run_has_no_crash_and_no_bad_reply(tmp_path: Path) -> None:
    out = tmp_path / "fuzz.json"
    proc = subprocess.run([sys.executable, str(REPO / "hack" / "fuzz.py"), "--inputs", "20000", "--seconds", "240",
                           "--json", str(out)], capture_output=True, text=True, timeout=300)
    report = json.loads(out.read_text())
    assert report["inputs"] >= 20000, proc.stderr
    assert report["crashes"] == 0 and report["tracebacks"] == 0 and report["alive_at_end"], report["log_tail"]
    assert report["bad_replies"] == 0, report["bad_examples"]
    # A probe that waited past its 3 s on a busy machine is no crash; the agent must answer at the end.
    assert report["probe_failures"] <= 3
    assert report["replies_checked"] > 10000  # the inputs were answered, not lost
    assert proc.returncode == 0
