"""config/kubernetes: every overlay renders with kustomize, validates offline against the Kubernetes schemas,
keeps what the agent needs (host network, NET_ADMIN, probes, kube-dns-upstream), and hands the agent a
command line and config it accepts; the examples, the Containerfile and `nodelocal dnsconfig` agree."""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from nodelocal.cli import dnsconfig
from nodelocal.cli import nodecache as compat
from nodelocal.cli.commands import build_parser, main, overrides_from
from nodelocal.config import kubedns
from nodelocal.config.model import node_address
from tests.k8s.kubelet import (
    HOST_IP,
    KUSTOMIZE_ROOT,
    OVERLAYS,
    REPO,
    ConfigMapVolume,
    args,
    container,
    container_env,
    expand,
    find,
    image_entrypoint,
    kustomize,
    service_env,
)

# The oldest Kubernetes still supported when this was written, and the newest the validator knows.
K8S_VERSIONS = ("1.33", kubernetes_validate.latest_version())
LINK_LOCAL, KUBE_DNS = "169.254.20.10", "10.96.0.10"
CAPS_ALLOWED = {"NET_ADMIN", "NET_BIND_SERVICE", "NET_RAW"}
SERVICES = service_env({"kube-dns": KUBE_DNS, "kube-dns-upstream": "10.96.0.11"})


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {m: kustomize(KUSTOMIZE_ROOT / "overlays" / m) for m in OVERLAYS}


def problems(docs: list[dict[str, Any]], link_local: str = LINK_LOCAL) -> list[str]:
    """What an install must keep; each lost item is one problem."""
    out: list[str] = []
    try:
        ds = find(docs, "DaemonSet", "nodelocal")
    except AssertionError as e:
        return [str(e)]
    pod = ds["spec"]["template"]["spec"]
    c = container(ds)
    if pod.get("hostNetwork") is not True:
        out.append("the pod lost hostNetwork")
    if pod.get("dnsPolicy") != "Default":
        out.append("dnsPolicy is not Default (the agent would resolve through itself)")
    if pod.get("priorityClassName") != "system-node-critical":
        out.append("not system-node-critical")
    if {"operator": "Exists"} not in pod.get("tolerations", []):
        out.append("does not tolerate every taint")
    caps = c.get("securityContext", {}).get("capabilities", {})
    if "NET_ADMIN" not in caps.get("add", []):
        out.append("NET_ADMIN capability missing")
    if set(caps.get("add", [])) - CAPS_ALLOWED or caps.get("drop") != ["ALL"]:
        out.append(f"capabilities beyond {sorted(CAPS_ALLOWED)} (or not drop ALL): {caps}")
    for probe, path in (("livenessProbe", "/health"), ("readinessProbe", "/ready")):
        get = c.get(probe, {}).get("httpGet", {})
        if (get.get("path"), get.get("port"), get.get("host")) != (path, 8080, link_local):
            out.append(f"{probe} is not GET http://{link_local}:8080{path}: {get}")
    if c.get("securityContext", {}).get("seccompProfile") != {"type": "RuntimeDefault"} and \
            pod.get("securityContext", {}).get("seccompProfile") != {"type": "RuntimeDefault"}:
        out.append("no seccompProfile RuntimeDefault")
    mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
    if "/run/xtables.lock" not in mounts:
        out.append("/run/xtables.lock not mounted (iptables backends share kube-proxy's lock)")
    strategy = ds["spec"].get("updateStrategy", {})
    if strategy.get("type") != "RollingUpdate":
        out.append("no rolling update")
    elif strategy.get("rollingUpdate") != {"maxSurge": 1, "maxUnavailable": 0}:
        out.append(f"a rolling update that does not start the new pod first (maxSurge 1, maxUnavailable 0): "
                   f"{strategy.get('rollingUpdate')}")
    if any("hostPort" in p or pod.get("hostNetwork") for p in c.get("ports", [])):
        out.append("container ports on the host network are hostPorts: the surge pod could not be scheduled")
    run = next((v for v in pod.get("volumes", []) if v.get("hostPath", {}).get("path") == "/run/nodelocal"), None)
    if run is None or not any(m["name"] == run["name"] and m["mountPath"] == "/run/nodelocal"
                              for m in c.get("volumeMounts", [])):
        out.append("/run/nodelocal (the handover socket) is not mounted from the host")
    if "--handover-linger" not in c.get("args", []):
        out.append("no --handover-linger: the old container would exit after a handover and be restarted")
    if pod.get("terminationGracePeriodSeconds", 30) < 10:
        out.append("termination grace period shorter than drain (5 s) + teardown")
    ann = ds["spec"]["template"]["metadata"].get("annotations", {})
    if ann.get("prometheus.io/scrape") != "true" or ann.get("prometheus.io/port") != "9253":
        out.append("Prometheus annotations missing")
    res = c.get("resources", {})
    if not res.get("requests", {}).get("memory") or not res.get("limits", {}).get("memory"):
        out.append("memory request/limit missing")
    try:
        up = find(docs, "Service", "kube-dns-upstream")
    except AssertionError as e:
        out.append(str(e))
    else:
        if up["spec"].get("selector") != {"k8s-app": "kube-dns"}:
            out.append("kube-dns-upstream does not select kube-dns's pods")
        if {(p["port"], p["protocol"]) for p in up["spec"]["ports"]} != {(53, "UDP"), (53, "TCP")}:
            out.append("kube-dns-upstream lacks port 53 UDP and TCP")
    try:
        metrics = find(docs, "Service", "nodelocal")
    except AssertionError as e:
        out.append(str(e))
    else:
        if metrics["spec"].get("clusterIP") != "None":
            out.append("the metrics Service is not headless")
    if any(d["metadata"]["name"] == "nodelocal-params" for d in docs):
        out.append("the local-config params object was rendered")
    return out


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_validates_offline_against_the_schemas(rendered: dict[str, list[dict[str, Any]]],
                                                       overlay: str) -> None:
    docs = rendered[overlay]
    assert {d["kind"] for d in docs} == {"ServiceAccount", "ConfigMap", "Service", "DaemonSet"}
    for doc in docs:
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)  # strict: a misspelt field fails
        assert doc["metadata"]["namespace"] == "kube-system"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_keeps_what_the_agent_needs(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    assert problems(rendered[overlay]) == []


@pytest.mark.parametrize(
    ("damage", "words"),
    [
        (lambda pod, c, docs: pod.pop("hostNetwork"), "hostNetwork"),
        (lambda pod, c, docs: c["securityContext"]["capabilities"]["add"].remove("NET_ADMIN"), "NET_ADMIN"),
        (lambda pod, c, docs: c["securityContext"]["capabilities"]["add"].append("SYS_ADMIN"), "capabilities"),
        (lambda pod, c, docs: c["securityContext"].pop("seccompProfile"), "seccompProfile"),
        (lambda pod, c, docs: c.pop("livenessProbe"), "livenessProbe"),
        (lambda pod, c, docs: c.pop("readinessProbe"), "readinessProbe"),
        (lambda pod, c, docs: docs.remove(find(docs, "Service", "kube-dns-upstream")), "kube-dns-upstream"),
        (lambda pod, c, docs: docs[[d["kind"] for d in docs].index("DaemonSet")]["spec"]["updateStrategy"]
         ["rollingUpdate"].update(maxSurge=0, maxUnavailable=1), "maxSurge"),
        (lambda pod, c, docs: c.setdefault("ports", []).append({"containerPort": 53}), "hostPort"),
        (lambda pod, c, docs: pod["volumes"].pop(), "/run/nodelocal"),
        (lambda pod, c, docs: c["args"].remove("--handover-linger"), "--handover-linger"),
    ],
)
def test_the_check_catches_a_lost_essential(rendered: dict[str, list[dict[str, Any]]], damage: Any,
                                            words: str) -> None:
    docs = copy.deepcopy(rendered["iptables"])
    ds = find(docs, "DaemonSet", "nodelocal")
    pod = ds["spec"]["template"]["spec"]
    c = pod["containers"][0]
    damage(pod, c, docs)
    assert any(words in p for p in problems(docs)), problems(docs)


def agent_command_line(docs: list[dict[str, Any]], config_dir: Path) -> tuple[list[str], dict[str, str]]:
    """The DaemonSet's args as kubelet expands them, with the ConfigMap volume at config_dir."""
    c = container(find(docs, "DaemonSet", "nodelocal"))
    env = container_env(c, SERVICES)
    cm = find(docs, "ConfigMap", "nodelocal-config")
    vol = ConfigMapVolume(config_dir)
    vol.write(cm["data"])
    argv = [a.replace("/etc/nodelocal", str(config_dir)).replace("/etc/kube-dns", str(config_dir / "none"))
            for a in args(c, env)]
    return argv, env


@pytest.mark.parametrize(("overlay", "localip", "backend"), [
    ("iptables", (LINK_LOCAL, KUBE_DNS), "auto"),
    ("nftables", (LINK_LOCAL, KUBE_DNS), "nft"),
    ("ipvs", (LINK_LOCAL,), "auto"),
])
def test_the_agent_accepts_the_daemonsets_command_line(rendered: dict[str, list[dict[str, Any]]], tmp_path: Path,
                                                       overlay: str, localip: tuple[str, ...],
                                                       backend: str) -> None:
    docs = rendered[overlay]
    argv, env = agent_command_line(docs, tmp_path / "config")
    assert image_entrypoint() == ["nodelocal"] and argv[0] == "serve"
    assert not any("$(" in a for a in argv), argv  # every reference was defined before use
    ns = build_parser().parse_args(compat.normalise(argv))
    flags = overrides_from(ns)
    compat.overrides(ns, flags)
    loaded = compat.build_source(ns, flags, env=env).load()
    cfg = loaded.config
    assert cfg.listen.localip == localip and cfg.listen.port == 53
    assert cfg.cluster_domain == "cluster.local"
    assert cfg.netsetup.rules_backend == backend
    assert cfg.upstreams["cluster"].servers == ("10.96.0.11:53",)  # $KUBE_DNS_UPSTREAM_SERVICE_HOST/_PORT
    assert cfg.health_address() == (LINK_LOCAL, 8080)  # where the probes look
    # Metrics, the live page and /api/stats: the node's own address (the pod IP Prometheus scrapes, host
    # network) and loopback, not every interface.
    assert cfg.metrics_addr == ":9253" and node_address(env) == HOST_IP
    assert cfg.resolve.loop_detect is True
    assert "." in cfg.zones and cfg.zones["cluster.local"].forward == ("cluster",)


def test_placeholders_are_set_in_one_place(tmp_path: Path) -> None:
    """An overlay of one's own: a component that changes params, then the mode and the placeholders."""
    comp = tmp_path / "my-params"
    comp.mkdir()
    (comp / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1alpha1", "kind": "Component",
        "patches": [{"target": {"kind": "ConfigMap", "name": "nodelocal-params"}, "patch": yaml.safe_dump({
            "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "nodelocal-params"},
            "data": {"linkLocalIP": "169.254.53.53", "kubeDNSIP": "10.100.0.10", "clusterDomain": "k8s.example"},
        })}],
    }))
    ov = tmp_path / "overlay"
    ov.mkdir()
    def rel(p: Path) -> str:  # kustomize takes no absolute paths
        return os.path.relpath(p, ov)

    (ov / "kustomization.yaml").write_text(yaml.safe_dump({
        "resources": [rel(KUSTOMIZE_ROOT / "base")],
        "components": [rel(comp), rel(KUSTOMIZE_ROOT / "components" / "iptables"),
                       rel(KUSTOMIZE_ROOT / "components" / "placeholders")],
    }))
    docs = kustomize(ov)
    assert problems(docs, link_local="169.254.53.53") == []
    argv, _env = agent_command_line(docs, tmp_path / "config")
    assert "--localip=169.254.53.53,10.100.0.10" in argv and "--cluster-domain=k8s.example" in argv
    text = yaml.safe_dump_all(docs)
    assert "169.254.20.10" not in text and "10.96.0.10" not in text  # nothing of the defaults is left


# The image reference grammar container runtimes parse (distribution/reference): a first component without
# '.', ':' or 'localhost' is a path component, and path components are lower case.
_DOMAIN = r"(?:localhost|[a-zA-Z0-9-]+(?:\.[a-zA-Z0-9-]+)+|[a-zA-Z0-9-]+(?:\.[a-zA-Z0-9-]+)*:[0-9]+)"
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_IMAGE_REF = re.compile(rf"(?:{_DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*"
                        r"(?::[\w][\w.-]{0,127})?(?:@sha256:[0-9a-f]{64})?")
PLACEHOLDER_IMAGE = "REPLACE-ME/nodelocal:set-the-image"


def valid_image(ref: str) -> bool:
    return _IMAGE_REF.fullmatch(ref) is not None


def test_image_reference_grammar() -> None:
    for good in ("nodelocal", "registry.example/nodelocal:0.1.0", "localhost:5000/dns/nodelocal:v1",
                 "REGISTRY.EXAMPLE/team/nodelocal@sha256:" + "a" * 64):
        assert valid_image(good), good
    for bad in (PLACEHOLDER_IMAGE, "Nodelocal:1", "registry.example/Team/nodelocal"):
        assert not valid_image(bad), bad


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_image_fails_loudly_until_it_is_set(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    # As shipped, every overlay names an image no runtime accepts (InvalidImageName at once, not a pull
    # retried for ever), and says plainly what to do.
    image = container(find(rendered[overlay], "DaemonSet", "nodelocal"))["image"]
    assert image == PLACEHOLDER_IMAGE and not valid_image(image)
    base = (KUSTOMIZE_ROOT / "base" / "kustomization.yaml").read_text()
    assert "kustomize edit set image REPLACE-ME/nodelocal=REGISTRY/nodelocal:TAG" in base


def test_the_image_set_in_an_overlay_of_ones_own_replaces_the_placeholder(tmp_path: Path) -> None:
    ov = tmp_path / "overlay"
    ov.mkdir()
    (ov / "kustomization.yaml").write_text(yaml.safe_dump({  # what `kustomize edit set image` writes
        "resources": [os.path.relpath(KUSTOMIZE_ROOT / "overlays" / "iptables", ov)],
        "images": [{"name": "REPLACE-ME/nodelocal", "newName": "registry.example/nodelocal", "newTag": "0.1.0"}],
    }))
    image = container(find(kustomize(ov), "DaemonSet", "nodelocal"))["image"]
    assert image == "registry.example/nodelocal:0.1.0" and valid_image(image)


def test_config_file_in_the_configmap_is_applied_live() -> None:
    base = yaml.safe_load((KUSTOMIZE_ROOT / "base" / "kustomization.yaml").read_text())
    gen = base["configMapGenerator"][0]
    assert gen["name"] == "nodelocal-config" and gen["options"]["disableNameSuffixHash"] is True


# --------------------------------------------------------------------------------------------------
# Examples, pod side, image


def test_pod_example_is_what_dnsconfig_prints(capsys: pytest.CaptureFixture[str]) -> None:
    pod = yaml.safe_load((REPO / "config" / "examples" / "pod-dnsconfig.yaml").read_text())
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(pod, version, strict=True)
    assert main(["dnsconfig", "--namespace", "default"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert {k: pod["spec"][k] for k in ("dnsPolicy", "dnsConfig")} == printed
    assert printed == dnsconfig.stanza("default")


def test_dnsconfig_flags_and_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dnsconfig", "-n", "shop", "--cluster-domain", "k8s.example", "--ndots", "2",
                 "--nameserver", "169.254.20.10", "--nameserver", "10.96.0.10", "--json"]) == 0
    doc = yaml.safe_load(capsys.readouterr().out)
    assert doc["dnsConfig"] == {"nameservers": ["169.254.20.10", "10.96.0.10"],
                                "searches": ["shop.svc.k8s.example", "svc.k8s.example", "k8s.example"],
                                "options": [{"name": "ndots", "value": "2"}]}
    for bad, field in ((["-n", "Shop_Floor"], "--namespace"), (["-n", "a", "--ndots", "16"], "--ndots"),
                       (["-n", "a", "--nameserver", "dns.local"], "--nameserver")):
        assert main(["dnsconfig", *bad]) == 2
        assert capsys.readouterr().err.startswith(f"nodelocal: config error: {field}: ")


def test_kube_dns_configmap_example(tmp_path: Path) -> None:
    cm = yaml.safe_load((REPO / "config" / "examples" / "kube-dns-configmap.yaml").read_text())
    kubernetes_validate.validate(cm, K8S_VERSIONS[0], strict=True)
    vol = ConfigMapVolume(tmp_path / "kube-dns")
    vol.write(cm["data"])
    kd = kubedns.read_dir(str(tmp_path / "kube-dns"))
    assert kd.stub_domains == {"corp.example": ("10.150.0.1:53", "10.150.0.2:5353")}
    assert kd.upstream_nameservers == ("192.0.2.53:53", "192.0.2.54:53")


def test_kubelet_example_points_at_the_link_local_address() -> None:
    kc = yaml.safe_load((REPO / "config" / "examples" / "kubelet-config.yaml").read_text())
    assert kc["kind"] == "KubeletConfiguration" and kc["clusterDNS"] == [LINK_LOCAL]


def test_node_local_dns_swap_patch_keeps_the_addon_args() -> None:
    patch = yaml.safe_load((REPO / "config" / "examples" / "node-local-dns-swap.yaml").read_text())
    c = patch["spec"]["template"]["spec"]["containers"][0]
    assert c["name"] == "node-cache" and "args" not in c and "command" not in c  # the add-on's stay
    # The add-on's args, as its DaemonSet has them after the install's sed, mean `serve` here.
    addon = ["-localip", "169.254.20.10,10.96.0.10", "-conf", "/etc/Corefile", "-upstreamsvc",
             "kube-dns-upstream", "-pidfile", "/tmp/node-cache.pid"]
    ns = build_parser().parse_args(compat.normalise(addon))
    assert ns.command == "serve" and ns.conf == "/etc/Corefile" and ns.pidfile == "/tmp/node-cache.pid"


def test_containerfile_installs_what_the_code_runs() -> None:
    p = subprocess.run([sys.executable, str(REPO / "hack" / "check_image_packages.py")], capture_output=True,
                       text=True, timeout=60, check=False)
    assert p.returncode == 0, p.stdout + p.stderr


def test_expand_follows_kubernetes_rules() -> None:
    env = {"A": "1", "B": "x"}
    assert expand("$(A),$(B)", env) == "1,x"
    assert expand("$$(A) $(C)", env) == "$(A) $(C)"  # escaped, and undefined: both stay literal
    c = {"env": [{"name": "L", "value": "$(LATER)"}, {"name": "LATER", "value": "v"}]}
    assert container_env(c, {})["L"] == "$(LATER)"  # only variables defined before are expanded
