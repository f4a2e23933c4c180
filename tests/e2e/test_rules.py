"""The alert rules pass promtool's checks and its unit tests (rules_test.yaml: each alert fires when it should)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.e2e.conftest import RULES

pytestmark = pytest.mark.e2e

HERE = Path(__file__).resolve().parent


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail("promtool is not installed (Debian package prometheus): run hack/setup.sh")
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=60, cwd=cwd)


def test_promtool_check_rules() -> None:
    r = promtool("check", "rules", str(RULES))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS: 7 rules found" in r.stdout


def test_promtool_unit_tests_of_the_alerts() -> None:
    r = promtool("test", "rules", "rules_test.yaml", cwd=HERE)
    assert r.returncode == 0, r.stdout + r.stderr
