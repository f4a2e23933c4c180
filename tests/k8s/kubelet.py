"""Playing kubelet for tests: rendered manifests, ConfigMap volumes with `..data`, $(VAR) expansion, probes.

What kubelet does that the agent depends on, done here the same way:
- ConfigMap volumes (pkg/volume/util/atomic_writer.go): the files live in a hidden timestamped directory,
  `..data` is a symlink to it, each key is a symlink `KEY -> ..data/KEY`; an update writes a new
  directory, points a new symlink at it and renames that over `..data` (one atomic step), then removes
  the old directory.
- Environment (third_party/forked/golang/expansion): `$(VAR)` in env values, command and args is
  replaced by VAR's value when VAR is defined before (service variables first, then the container's env
  in order); `$$` is a literal `$`; an undefined reference stays as written.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
KUSTOMIZE_ROOT = REPO / "config" / "kubernetes"
OVERLAYS = ("iptables", "ipvs", "nftables")


def kustomize(path: Path | str) -> list[dict[str, Any]]:
    """`kubectl kustomize PATH` (the kustomize built into kubectl), as a list of objects."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl not found: hack/setup.sh installs it (kubectl kustomize renders the manifests)")
    p = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True, timeout=60, check=False)
    if p.returncode != 0:
        raise AssertionError(f"kubectl kustomize {path} failed:\n{p.stderr}")
    return [d for d in yaml.safe_load_all(p.stdout) if d]


def find(docs: Iterable[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    for d in docs:
        if d.get("kind") == kind and d.get("metadata", {}).get("name") == name:
            return d
    raise AssertionError(f"no {kind} {name} in the rendered manifests")


def container(ds: dict[str, Any], name: str = "nodelocal") -> dict[str, Any]:
    for c in ds["spec"]["template"]["spec"]["containers"]:
        if c["name"] == name:
            return dict(c)
    raise AssertionError(f"no container {name}")


_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' $(VAR) expansion."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1)
        return env[name] if name in env else m.group(0)

    return _REF.sub(sub, text)


# The downward API fields the manifests read, as kubelet fills them for a pod on a node at HOST_IP.
HOST_IP = "192.0.2.50"
POD_FIELDS = {"status.hostIP": HOST_IP}


def container_env(c: dict[str, Any], service_env: Mapping[str, str],
                  configmaps: Mapping[str, Mapping[str, str]] | None = None,
                  fields: Mapping[str, str] = POD_FIELDS) -> dict[str, str]:
    """The environment kubelet gives the container: service variables, then `env` in order, expanded
    (downward API `fieldRef`s from `fields`)."""
    env = dict(service_env)
    for e in c.get("env", []):
        if "value" in e:
            env[e["name"]] = expand(e["value"], env)
        elif "configMapKeyRef" in e.get("valueFrom", {}):
            ref = e["valueFrom"]["configMapKeyRef"]
            env[e["name"]] = (configmaps or {})[ref["name"]][ref["key"]]
        elif "fieldRef" in e.get("valueFrom", {}):
            env[e["name"]] = fields[e["valueFrom"]["fieldRef"]["fieldPath"]]
        else:
            raise AssertionError(f"env {e['name']}: valueFrom kind not played here")
    return env


def args(c: dict[str, Any], env: Mapping[str, str]) -> list[str]:
    return [expand(a, env) for a in c.get("args", [])]


def image_entrypoint() -> list[str]:
    """ENTRYPOINT of config/container/Containerfile (exec form)."""
    text = (REPO / "config" / "container" / "Containerfile").read_text()
    m = re.search(r"^ENTRYPOINT\s+(\[.*\])\s*$", text, flags=re.M)
    assert m, "the Containerfile has no exec-form ENTRYPOINT"
    return list(yaml.safe_load(m.group(1)))


def service_env(services: Mapping[str, str]) -> dict[str, str]:
    """The variables kubelet injects for Services of the pod's namespace (enableServiceLinks)."""
    out: dict[str, str] = {}
    for name, ip in services.items():
        prefix = name.upper().replace("-", "_")
        out[f"{prefix}_SERVICE_HOST"] = ip
        out[f"{prefix}_SERVICE_PORT"] = "53"
    return out


class ConfigMapVolume:
    """A ConfigMap volume directory, written and updated as kubelet's atomic writer does."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.keys: set[str] = set()

    def write(self, data: Mapping[str, str]) -> None:
        ts = self.root / f"..{time.strftime('%Y_%m_%d_%H_%M_%S')}.{time.monotonic_ns()}"
        ts.mkdir()
        for key, value in data.items():
            (ts / key).write_text(value)
        old = os.readlink(self.root / "..data") if (self.root / "..data").is_symlink() else None
        tmp = self.root / "..data_tmp"
        if tmp.is_symlink():
            tmp.unlink()
        tmp.symlink_to(ts.name)
        os.rename(tmp, self.root / "..data")  # the one atomic step
        for key in data:
            link = self.root / key
            if not link.is_symlink():
                link.symlink_to(f"..data/{key}")
        for key in self.keys - set(data):
            (self.root / key).unlink()
        self.keys = set(data)
        if old:
            shutil.rmtree(self.root / old)
