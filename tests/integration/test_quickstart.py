"""The README's quick start, run as written (offline: dnsmasq stands in for CoreDNS), sees a hit on the second
query. Only its first line (setup, and activating the virtualenv) is replaced by putting .venv/bin on PATH."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PORTS = (5300, 5400, 9253, 8080)  # the quick start's fixed ports: --dev, dnsmasq, metrics, health


def quickstart_block() -> list[str]:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Quick start (offline, no root)", 1)[1]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    return block.splitlines()


def _port_free(port: int) -> bool:
    out = subprocess.run(["ss", "-Hlntu", f"sport = :{port}"], capture_output=True, text=True, check=False).stdout
    return not out.strip()


def test_quickstart_block_starts_with_setup() -> None:
    lines = quickstart_block()
    assert lines[0].startswith("hack/setup.sh --runtime && . .venv/bin/activate")
    assert any(line.startswith("nodelocal serve --dev") for line in lines)


@pytest.mark.peer
def test_readme_quickstart_shows_a_hit_offline() -> None:
    for tool in ("dnsmasq", "dig", "curl", "ss"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} missing: run hack/setup.sh")
    taken = [p for p in PORTS if not _port_free(p)]
    if taken:
        pytest.fail(f"the quick start's ports are in use here: {taken}")
    script = "\n".join(["set -u", *quickstart_block()[1:]])
    env = {**os.environ, "PATH": f"{REPO / '.venv' / 'bin'}:{os.environ['PATH']}"}
    proc = subprocess.Popen(["bash", "-c", script], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=60)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    answers = re.findall(r"^kubernetes\.default\.svc\.cluster\.local\.\s+(\d+)\s+IN\s+A\s+10\.96\.0\.1$", out, re.M)
    assert len(answers) == 2, out
    assert int(answers[1]) <= int(answers[0]), out  # the second answer is the cached one, counting down
    hits = re.findall(r'^coredns_cache_hits_total\{.*type="success".*zones="cluster\.local\."\} (\S+)$', out, re.M)
    assert hits and float(hits[0]) >= 1, out
    assert "Hit rate" in out or "hit rate" in out, out  # nodelocal stats printed
    assert all(_port_free(p) for p in PORTS[:2]), "the quick start's `kill` left a server running"
