"""Driving a hack/lab.sh lab from tests: its namespaces, DNS queries, the agent, metrics, conntrack."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[2]
LAB = REPO / "hack" / "lab.sh"
TOOLS = ("ip", "dnsmasq", "dig", "conntrack", "nft", "ipset", "iptables-nft", "iptables-legacy", "curl")

LINK_LOCAL = "169.254.20.10"
LOCAL6 = "fd53::10"
KUBE_DNS = "10.96.0.10"
POD_A = "10.244.1.2"
POD_B = "10.244.2.2"


ROOT_ONLY = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root: builds network namespaces, links and rules (CI runs it as root)")


def wait_until(check: Callable[[], bool], timeout: float, step: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(step)


PREFIXES: list[str] = []  # every lab prefix this session made (others may run labs at the same time)


class Lab:
    """One hack/lab.sh lab with a unique prefix; helpers to run things in its namespaces."""

    def __init__(self, state: Path, kube_proxy: str = "iptables-nft") -> None:
        self.prefix = f"nlt-{secrets.token_hex(3)}"
        PREFIXES.append(self.prefix)
        self.state = state
        self.env = {**os.environ, "LAB_PREFIX": self.prefix, "LAB_STATE": str(state), "LAB_AGENT": "0",
                    "LAB_QUIET": "1", "LAB_KUBE_PROXY": kube_proxy}

    def lab(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        p = subprocess.run([str(LAB), *args], env=self.env, capture_output=True, text=True, timeout=timeout,
                           check=False)
        if check and p.returncode != 0:
            raise AssertionError(f"hack/lab.sh {' '.join(args)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
        return p

    def ns(self, pod: str) -> str:
        return f"{self.prefix}-{pod}"

    def run(self, pod: str, *argv: str, check: bool = True, timeout: float = 20,
            stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        p = subprocess.run(["ip", "netns", "exec", self.ns(pod), *argv], capture_output=True, text=True,
                           timeout=timeout, input=stdin, check=False)
        if check and p.returncode != 0:
            raise AssertionError(f"{pod}: {' '.join(argv)} failed ({p.returncode}): {p.stderr.strip()}")
        return p

    def spawn(self, pod: str, *argv: str) -> subprocess.Popen[str]:
        """A process in a namespace of the lab (the caller ends it; `down` would too)."""
        return subprocess.Popen(["ip", "netns", "exec", self.ns(pod), *argv], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, text=True)

    def out(self, pod: str, *argv: str) -> str:
        return self.run(pod, *argv).stdout

    # -- DNS -----------------------------------------------------------------------------------------

    def dig(self, pod: str, server: str, name: str, rdtype: str = "A", *, tcp: bool = False,
            source: str | None = None, timeout: float = 1.0) -> list[str]:
        """The answer's records (dig +short); [] on timeout, refusal or NXDOMAIN."""
        argv = ["dig", "+short", f"+time={max(1, round(timeout))}", "+tries=1", f"@{server}", name, rdtype]
        if tcp:
            argv.insert(1, "+tcp")
        if source:
            argv[1:1] = ["-b", source]
        p = self.run(pod, *argv, check=False, timeout=timeout + 5)
        return [ln for ln in p.stdout.splitlines() if ln and not ln.startswith(";")]

    def coredns_queries(self) -> int:
        log = self.state / "coredns.log"
        return log.read_text().count("query[") if log.exists() else 0

    # -- the agent -----------------------------------------------------------------------------------

    def start_agent(self, *args: str) -> int:
        self.lab("agent", "start", *args)
        return self.agent_pid()

    def agent_pid(self) -> int:
        return int((self.state / "agent.pid").read_text())

    def agent_log(self) -> str:
        p = self.state / "agent.log"
        return p.read_text() if p.exists() else ""

    def stop_agent(self) -> None:
        self.lab("agent", "stop")

    def kill_agent(self) -> None:
        pid = self.agent_pid()
        os.kill(pid, signal.SIGKILL)
        assert wait_until(lambda: not Path(f"/proc/{pid}").exists(), 5)
        (self.state / "agent.pid").unlink()

    def metrics(self) -> dict[str, float]:
        """Every sample of the agent's /metrics as 'name{k="v",...}' -> value (labels sorted)."""
        text = self.out("node", "curl", "-sf", "http://127.0.0.1:9253/metrics")
        out: dict[str, float] = {}
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
                out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
        return out

    def metric(self, prefix: str) -> float:
        return sum(v for k, v in self.metrics().items() if k == prefix or k.startswith(prefix + "{"))

    # -- kernel state in the node --------------------------------------------------------------------

    def conntrack_dns(self, *dsts: str) -> list[str]:
        """Conntrack entries in the node for DNS (port 53) whose original destination is one of dsts."""
        lines: list[str] = []
        for d in dsts or (LINK_LOCAL, KUBE_DNS, LOCAL6):
            p = self.run("node", "conntrack", "-L", "-d", d, check=False)
            lines += [ln for ln in p.stdout.splitlines() if "dport=53 " in ln]
        return lines

    def conntrack_sport(self, sport: int) -> list[str]:
        p = self.run("node", "conntrack", "-L", "-p", "udp", "--sport", str(sport), check=False)
        return [ln for ln in p.stdout.splitlines() if ln.startswith("udp")]
