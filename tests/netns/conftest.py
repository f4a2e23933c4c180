"""Root tests against the real kernel: each test builds its own lab (hack/lab.sh, namespaces nlt-<random>-*)
and removes it, also on failure. Nothing here touches the host's network namespace.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.netns.labctl import PREFIXES, REPO, TOOLS, Lab


def need_tools() -> None:
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        pytest.fail(f"missing {', '.join(missing)}: run hack/setup.sh")
    if not (REPO / ".venv" / "bin" / "nodelocal").exists():
        pytest.fail("no .venv/bin/nodelocal: run hack/setup.sh")


def _namespaces(prefix: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout
    return [ln.split()[0] for ln in out.splitlines() if ln.startswith(prefix)]


@pytest.fixture(scope="session", autouse=True)
def _host_untouched() -> Iterator[None]:
    """The host namespace's ruleset is the same after the suite, and no namespace of ours is left."""
    if os.geteuid() != 0 or shutil.which("nft") is None:
        yield
        return
    before = subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True, check=False).stdout
    yield
    after = subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True, check=False).stdout
    assert after == before, "the host's nftables ruleset changed during the netns tests"
    left = [ns for prefix in PREFIXES for ns in _namespaces(prefix + "-")]
    assert not left, f"namespaces left behind: {left}"


@pytest.fixture
def make_lab(tmp_path: Path) -> Iterator[Callable[..., Lab]]:
    """make_lab(kube_proxy="iptables-nft") -> a lab that is up (without agent); always taken down."""
    need_tools()
    labs: list[Lab] = []

    def make(kube_proxy: str = "iptables-nft") -> Lab:
        lab = Lab(tmp_path / f"lab{len(labs)}", kube_proxy)
        labs.append(lab)
        lab.lab("up")
        return lab

    try:
        yield make
    finally:
        for lab in labs:
            for name in ("agent.log", "coredns.log"):  # kept for a failing test's post-mortem
                if (lab.state / name).exists():
                    shutil.copy(lab.state / name, tmp_path / f"{lab.state.name}-{name}")
            lab.lab("down", check=False)
            left = _namespaces(lab.prefix)
            assert not left, f"hack/lab.sh down left {left}"
