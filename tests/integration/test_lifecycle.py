"""The DaemonSet's life on a node, with this test playing kubelet in a hack/lab.sh lab (root only).

The rendered iptables overlay is run as kubelet would run it: its args and env expanded ($(VAR), the
Services' variables), its ConfigMaps mounted as `..data`-symlinked directories, its capabilities (and
nothing else) given to the process, its probes asked as the manifest says. Then, while pods query the
agent: the agent's ConfigMap and the kube-dns ConfigMap are updated (good), the agent's is broken, SIGHUP
is sent, it is repaired; no query fails. SIGTERM must end it within the grace period, teardown done.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.k8s.kubelet import (
    KUSTOMIZE_ROOT,
    REPO,
    ConfigMapVolume,
    args,
    container,
    container_env,
    find,
    image_entrypoint,
    kustomize,
    service_env,
)
from tests.netns.labctl import KUBE_DNS, LINK_LOCAL, ROOT_ONLY, TOOLS, Lab, wait_until

pytestmark = [pytest.mark.netns, ROOT_ONLY]

WEB, WEB_A = "web.default.svc.cluster.local", "10.96.1.5"
UPSTREAM_SVC = "10.96.0.11"  # the lab's kube-dns-upstream


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    missing = [t for t in (*TOOLS, "setpriv") if shutil.which(t) is None]
    if missing:
        pytest.fail(f"missing {', '.join(missing)}: run hack/setup.sh")
    lab = Lab(tmp_path / "lab")
    try:
        lab.lab("up")
        yield lab
    finally:
        if (lab.state / "coredns.log").exists():
            shutil.copy(lab.state / "coredns.log", tmp_path / "coredns.log")
        lab.lab("down", check=False)
        out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout
        assert lab.prefix not in out, "hack/lab.sh down left namespaces behind"


class Kubelet:
    """Runs the DaemonSet's container in the lab's node namespace as kubelet would.

    Volumes are either found by rewriting their mount paths in the args (the default), or, with
    bind_mounts, mounted at their real paths inside the process's own mount namespace (`ip netns exec`
    makes one; the host never sees these mounts): needed where the program reads a default path no arg
    names (node-cache's /etc/coredns/Corefile.base). The empty mount-point directories are created on
    the host if missing and removed by cleanup().
    """

    def __init__(self, docs: list[dict[str, Any]], lab: Lab, root: Path, name: str = "nodelocal",
                 container_name: str = "nodelocal", bind_mounts: bool = False, host_dirs: Path | None = None) -> None:
        self.ds = find(docs, "DaemonSet", name)
        self.pod = self.ds["spec"]["template"]["spec"]
        self.c = container(self.ds, container_name)
        self.lab = lab
        self.volumes: dict[str, ConfigMapVolume] = {}
        self.mounts: dict[str, Path] = {}
        configmaps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
        for v in self.pod["volumes"]:
            host = v.get("hostPath", {})
            if host.get("type") == "DirectoryOrCreate":
                # A host directory (/run/nodelocal: the handover socket): the test's own, shared by every
                # pod this test plays on the node (`host_dirs`), never the machine's.
                local = (host_dirs or root) / v["name"]
                local.mkdir(parents=True, exist_ok=True)
                for m in self.c["volumeMounts"]:
                    if m["name"] == v["name"]:
                        self.mounts[m["mountPath"]] = local
                continue
            if "configMap" not in v:
                continue  # hostPath /run/xtables.lock: the lab's node shares the host's file system
            vol = ConfigMapVolume(root / v["name"])
            cm = configmaps.get(v["configMap"]["name"])
            if cm is None:
                assert v["configMap"].get("optional"), f"ConfigMap {v['configMap']['name']} is not in the manifests"
            else:
                vol.write(self.project(v, cm["data"]))
            self.volumes[v["configMap"]["name"]] = vol
            for m in self.c["volumeMounts"]:
                if m["name"] == v["name"]:
                    self.mounts[m["mountPath"]] = vol.root
        self.env = container_env(self.c, service_env({"kube-dns": KUBE_DNS, "kube-dns-upstream": UPSTREAM_SVC}),
                                 fields={"status.hostIP": "10.250.0.1"})  # the lab node's own address
        argv = image_entrypoint() + args(self.c, self.env)
        self.created: list[Path] = []
        if not bind_mounts:
            for mount, local in self.mounts.items():
                argv = [a.replace(mount, str(local)) for a in argv]
        argv[0] = str(REPO / ".venv" / "bin" / argv[0])
        sc = self.c.get("securityContext", {})
        caps = sc.get("capabilities", {})
        if caps.get("drop") == ["ALL"]:
            # The container's capability set and no_new_privs (allowPrivilegeEscalation: false).
            plus = ",".join("+" + c.lower() for c in caps.get("add", []))
            argv = ["setpriv", f"--bounding-set=-all,{plus}", "--inh-caps=-all", "--no-new-privs", "--", *argv]
        if bind_mounts:
            emptydirs = {m["mountPath"]: root / m["name"] for m in self.c.get("volumeMounts", [])
                         if any(v["name"] == m["name"] and "emptyDir" in v for v in self.pod["volumes"])}
            if "/tmp" not in emptydirs:
                emptydirs["/tmp"] = root / "tmp"  # a container's /tmp is its own
            for local in emptydirs.values():
                local.mkdir(parents=True, exist_ok=True)
            binds = {**self.mounts, **emptydirs}
            for mount in binds:
                if not Path(mount).exists():
                    Path(mount).mkdir(parents=True)
                    self.created.append(Path(mount))
            steps = []
            repo = REPO.resolve()
            if repo.is_relative_to("/tmp"):
                # A checkout under /tmp (CI's clone may be one) holds the agent's .venv, which the bind
                # over /tmp would hide: carry it into the pod's /tmp first, and bind /tmp recursively.
                inner = emptydirs["/tmp"] / repo.relative_to("/tmp")
                inner.mkdir(parents=True, exist_ok=True)
                steps.append(f"mount --bind {shlex.quote(str(repo))} {shlex.quote(str(inner))}")
            steps += [f"mount --rbind {shlex.quote(str(local))} {shlex.quote(mount)}" for mount, local in binds.items()]
            script = " && ".join(steps)
            argv = ["sh", "-c", f'{script} && exec "$@"', "sh", *argv]
        self.argv = argv
        self.log = root / "agent.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @staticmethod
    def project(volume: dict[str, Any], data: dict[str, str]) -> dict[str, str]:
        """A ConfigMap's keys as the volume's `items` name them (all keys when it has none)."""
        items = volume["configMap"].get("items")
        return {i["path"]: data[i["key"]] for i in items} if items else dict(data)

    def cleanup(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait(5)
        for d in reversed(self.created):
            d.rmdir()

    def start(self) -> None:
        env = {"PATH": os.environ["PATH"], **self.env}
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(["ip", "netns", "exec", self.lab.ns("node"), *self.argv], env=env,
                                         stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def logs(self) -> str:
        return self.log.read_text(errors="replace")

    def probe(self, which: str) -> int:
        get = self.c[which]["httpGet"]
        url = f"http://{get['host']}:{get['port']}{get['path']}"
        p = self.lab.run("node", "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time",
                         str(self.c[which].get("timeoutSeconds", 1)), url, check=False)
        return int(p.stdout or 0)

    def started(self) -> bool:
        """Ready as its readiness probe says, and past start-up (the agent logs `serving on` last)."""
        return self.probe("readinessProbe") == 200 and "serving on" in self.logs()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> float:
        """SIGTERM, as kubelet sends it; seconds until the process was gone (SIGKILL past the grace period)."""
        assert self.proc is not None
        grace = self.pod.get("terminationGracePeriodSeconds", 30)
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            return float("inf")
        return time.monotonic() - t0


class Queries:
    """Pods asking the agent in a loop (pod-a via the ClusterIP, pod-b via 169.254.20.10) until stopped."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.asked = 0
        self.failures: list[str] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        deadline = time.monotonic() + 120  # bounded whatever happens
        paths = (("pod-a", KUBE_DNS), ("pod-b", LINK_LOCAL))
        while not self.stopping.is_set() and time.monotonic() < deadline:
            pod, server = paths[self.asked % 2]
            self.asked += 1
            got = self.lab.dig(pod, server, WEB, timeout=2.0)
            if got != [WEB_A]:
                self.failures.append(f"{time.strftime('%T')} {pod} -> {server}: {got}")

    def __enter__(self) -> Queries:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join(10)


def reloads(lab: Lab, result: str) -> float:
    return lab.metrics().get(f'nodelocal_config_reloads_total{{result="{result}"}}', 0.0)


def test_daemonset_lifecycle_played_by_kubelet(lab: Lab, tmp_path: Path) -> None:
    docs = kustomize(KUSTOMIZE_ROOT / "overlays" / "iptables")
    kubelet = Kubelet(docs, lab, tmp_path / "pod")
    kubelet.start()
    try:
        # Probes as the manifest has them: liveness answers, readiness once CoreDNS (kube-dns-upstream) answered.
        delay = kubelet.c["livenessProbe"].get("initialDelaySeconds", 0)
        assert wait_until(lambda: not kubelet.alive() or kubelet.started(), 15, 0.2), kubelet.logs()
        assert kubelet.alive(), kubelet.logs()
        assert kubelet.probe("livenessProbe") == 200
        log = kubelet.logs()
        assert "rules backend iptables-nft (auto" in log and "serving on" in log
        assert "forwarding loop" not in log  # loop_detect is on in the manifest: CoreDNS and the node's resolver pass
        print(f"ready; liveness would first be asked after {delay}s")
        assert lab.dig("pod-a", KUBE_DNS, WEB) == [WEB_A]

        config_vol = kubelet.volumes["nodelocal-config"]
        kube_dns_vol = kubelet.volumes["kube-dns"]
        good = (kubelet.mounts["/etc/nodelocal"] / "config.yaml").read_text()
        with Queries(lab) as q:
            time.sleep(1)
            # 1. The agent's ConfigMap changes (a new cache budget): applied live.
            config_vol.write({"config.yaml": good + "cache:\n  max_bytes: 16777216\n"})
            assert wait_until(lambda: reloads(lab, "success") == 1, 10), kubelet.logs()
            assert lab.metric("nodelocal_cache_max_bytes") == 16777216
            # 2. The kube-dns ConfigMap appears with a stub domain (the node's resolver serves example.org).
            kube_dns_vol.write({"stubDomains": json.dumps({"example.org": ["10.250.0.53"]})})
            assert wait_until(lambda: reloads(lab, "success") == 2, 10), kubelet.logs()
            assert lab.dig("pod-a", KUBE_DNS, "example.org") == ["203.0.113.20"]
            assert lab.metric('nodelocal_cache_zone_misses_total{zone="example.org"}') >= 1
            # 3. A broken update: logged, counted, and the agent keeps serving with the config it has.
            config_vol.write({"config.yaml": good + "upstreams: [\n"})
            assert wait_until(lambda: reloads(lab, "failure") == 1, 10), kubelet.logs()
            assert lab.metric('coredns_nodecache_setup_errors_total{errortype="configmap"}') == 1
            # 4. SIGHUP: read again at once (still broken: counted again).
            assert kubelet.proc is not None
            kubelet.proc.send_signal(signal.SIGHUP)
            assert wait_until(lambda: reloads(lab, "failure") == 2, 5), kubelet.logs()
            # 5. Repaired.
            config_vol.write({"config.yaml": good})
            assert wait_until(lambda: reloads(lab, "success") == 3, 10), kubelet.logs()
            assert lab.metric("nodelocal_cache_max_bytes") == 32 * 1024 * 1024
            time.sleep(1)
        assert q.asked >= 20 and q.failures == [], f"{len(q.failures)} of {q.asked} failed: {q.failures[:5]}"
        assert kubelet.probe("livenessProbe") == 200 and kubelet.probe("readinessProbe") == 200
        print(f"{q.asked} queries during the ConfigMap updates, none failed")

        # SIGTERM: gone within the grace period, rules and interface removed.
        took = kubelet.stop()
        grace = kubelet.pod.get("terminationGracePeriodSeconds", 30)
        assert took < grace, f"still running after the {grace}s grace period: {kubelet.logs()[-2000:]}"
        assert kubelet.proc is not None and kubelet.proc.returncode == 0, kubelet.logs()[-2000:]
        print(f"SIGTERM to exit: {took:.2f}s (grace period {grace}s)")
        log = kubelet.logs()
        assert "rules removed" in log and "interface nodelocaldns removed" in log
        assert "nodelocaldns" not in lab.out("node", "ip", "link")
        assert "NODELOCAL" not in lab.out("node", "iptables-nft-save")
        assert "nodelocal" not in lab.out("node", "nft", "list", "tables")
        assert lab.dig("pod-a", KUBE_DNS, WEB) == [WEB_A]  # CoreDNS through kube-proxy's DNAT again
    finally:
        kubelet.cleanup()


def test_rolling_update_played_by_kubelet(lab: Lab, tmp_path: Path) -> None:
    """maxSurge 1 as kubelet plays it on one node: the new pod starts beside the old one, takes over its
    sockets and cache through the shared host directory, becomes ready; the old one lingers until its
    SIGTERM and exits without teardown. Pods query all along; none fails, and CoreDNS is not asked again."""
    docs = kustomize(KUSTOMIZE_ROOT / "overlays" / "iptables")
    host = tmp_path / "host"
    old = Kubelet(docs, lab, tmp_path / "old", host_dirs=host)
    new = Kubelet(docs, lab, tmp_path / "new", host_dirs=host)
    old.start()
    try:
        assert wait_until(lambda: not old.alive() or old.started(), 15, 0.2), old.logs()
        assert lab.dig("pod-a", KUBE_DNS, WEB) == [WEB_A]
        with Queries(lab) as q:
            time.sleep(1)
            new.start()
            assert wait_until(lambda: not new.alive() or new.started(), 15, 0.2), new.logs()
            assert wait_until(lambda: "lingering until SIGTERM" in old.logs(), 10), old.logs()
            assert old.alive()  # handed over, holding nothing, waiting for its pod to be deleted
            time.sleep(1)
            took = old.stop()
            time.sleep(1)
        assert q.asked >= 10 and q.failures == [], f"{len(q.failures)} of {q.asked} failed: {q.failures[:5]}"
        assert took < 2, f"the old pod took {took:.1f}s to go after SIGTERM"
        assert "left to the successor" in old.logs() and "rules removed" not in old.logs()
        # Every listener came from the old pod: UDP and TCP on each IP, the metrics and health listeners.
        serving = next(line for line in new.logs().splitlines() if "serving on" in line)
        assert f"taking {serving.count(', ') + 1} socket(s)" in new.logs(), new.logs()
        assert "nodelocaldns" in lab.out("node", "ip", "link") and "NODELOCAL" in lab.out("node", "iptables-nft-save")
        # The cache came along: the new agent (its /metrics now) answered every query without a miss.
        assert lab.metric("coredns_cache_misses_total") == 0 and lab.metric("coredns_cache_hits_total") > 0
        assert new.probe("readinessProbe") == 200 and new.probe("livenessProbe") == 200
        print(f"{q.asked} queries across the rolling update, none failed")
        new.stop()
        assert "rules removed" in new.logs()  # no successor this time: an uninstall tears down
        assert "nodelocaldns" not in lab.out("node", "ip", "link")
    finally:
        old.cleanup()
        new.cleanup()


# node-local-dns as its add-on installs it in iptables mode (cluster/addons/dns/nodelocaldns, after the
# documented sed: local DNS 169.254.20.10, DNS server 10.96.0.10, domain cluster.local), trimmed to what
# the node sees: its ConfigMap (the Corefile) and its DaemonSet's container, args, probe and volumes.
ADDON_INSTALL = """
apiVersion: v1
kind: ConfigMap
metadata: {name: node-local-dns, namespace: kube-system}
data:
  Corefile: |
    cluster.local:53 {
        errors
        cache {
                success 9984 30
                denial 9984 5
        }
        reload
        loop
        bind 169.254.20.10 10.96.0.10
        forward . __PILLAR__CLUSTER__DNS__ {
                force_tcp
        }
        prometheus :9253
        health 169.254.20.10:8080
        }
    in-addr.arpa:53 {
        errors
        cache 30
        reload
        loop
        bind 169.254.20.10 10.96.0.10
        forward . __PILLAR__CLUSTER__DNS__ {
                force_tcp
        }
        prometheus :9253
        }
    .:53 {
        errors
        cache 30
        reload
        loop
        bind 169.254.20.10 10.96.0.10
        forward . __PILLAR__UPSTREAM__SERVERS__
        prometheus :9253
        }
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: node-local-dns, namespace: kube-system, labels: {k8s-app: node-local-dns}}
spec:
  updateStrategy: {rollingUpdate: {maxUnavailable: 10%}}
  selector: {matchLabels: {k8s-app: node-local-dns}}
  template:
    metadata: {labels: {k8s-app: node-local-dns}}
    spec:
      priorityClassName: system-node-critical
      hostNetwork: true
      dnsPolicy: Default
      tolerations: [{key: CriticalAddonsOnly, operator: Exists}, {effect: NoExecute, operator: Exists}]
      containers:
      - name: node-cache
        image: registry.k8s.io/dns/k8s-dns-node-cache:1.26.4
        resources: {requests: {cpu: 25m, memory: 5Mi}}
        args: ["-localip", "169.254.20.10,10.96.0.10", "-conf", "/etc/Corefile", "-upstreamsvc",
               "kube-dns-upstream", "-pidfile", "/tmp/node-cache.pid"]
        securityContext: {capabilities: {add: [NET_ADMIN]}}
        livenessProbe:
          httpGet: {host: 169.254.20.10, path: /health, port: 8080}
          initialDelaySeconds: 60
          timeoutSeconds: 5
        volumeMounts:
        - {mountPath: /run/xtables.lock, name: xtables-lock, readOnly: false}
        - {name: config-volume, mountPath: /etc/coredns}
        - {name: kube-dns-config, mountPath: /etc/kube-dns}
      volumes:
      - name: xtables-lock
        hostPath: {path: /run/xtables.lock, type: FileOrCreate}
      - name: kube-dns-config
        configMap: {name: kube-dns, optional: true}
      - name: config-volume
        configMap:
          name: node-local-dns
          items: [{key: Corefile, path: Corefile.base}]
"""


def test_node_local_dns_with_only_its_image_swapped(lab: Lab, tmp_path: Path) -> None:
    """The migration path: the add-on's DaemonSet, ConfigMap and args, patched with
    config/examples/node-local-dns-swap.yaml, run as kubelet would; its Corefile then changes live."""
    kz = tmp_path / "kz"
    kz.mkdir()
    (kz / "addon.yaml").write_text(ADDON_INSTALL)
    shutil.copy(REPO / "config" / "examples" / "node-local-dns-swap.yaml", kz / "swap.yaml")
    (kz / "kustomization.yaml").write_text(
        "resources: [addon.yaml]\npatches:\n- path: swap.yaml\n  target: {kind: DaemonSet, name: node-local-dns}\n")
    docs = kustomize(kz)
    kubelet = Kubelet(docs, lab, tmp_path / "pod", name="node-local-dns", container_name="node-cache",
                      bind_mounts=True)
    assert kubelet.c["args"][:2] == ["-localip", "169.254.20.10,10.96.0.10"]  # the add-on's, untouched
    assert kubelet.c["image"].startswith("nodelocal:")
    kubelet.start()
    try:
        assert wait_until(lambda: not kubelet.alive() or kubelet.started(), 15, 0.2), kubelet.logs()
        assert kubelet.probe("livenessProbe") == 200
        log = kubelet.logs()
        assert "config from corefile /etc/coredns/Corefile.base" in log, log
        assert "zone .: host[udp: 10.250.0.53" in log  # __PILLAR__UPSTREAM__SERVERS__: the node's resolv.conf
        assert "cluster[tcp: 10.96.0.11:53]" in log  # __PILLAR__CLUSTER__DNS__: $KUBE_DNS_UPSTREAM_SERVICE_HOST
        assert (tmp_path / "pod" / "tmp" / "node-cache.pid").read_text().strip() == str(kubelet.proc.pid)  # type: ignore[union-attr]
        corefile = find(docs, "ConfigMap", "node-local-dns")["data"]["Corefile"]
        vol = kubelet.volumes["node-local-dns"]
        with Queries(lab) as q:
            time.sleep(0.5)
            # A block added to the Corefile (example.org to the node's resolver directly): applied live.
            vol.write({"Corefile.base": corefile + "example.org:53 {\n    cache 30\n    forward . 10.250.0.53\n}\n"})
            assert wait_until(lambda: reloads(lab, "success") == 1, 10), kubelet.logs()
            assert lab.dig("pod-b", LINK_LOCAL, "example.org") == ["203.0.113.20"]
            assert lab.metric('nodelocal_cache_zone_misses_total{zone="example.org"}') >= 1
            # A directive outside the subset: reported with its line, the running config stays.
            vol.write({"Corefile.base": corefile.replace("    errors\n", "    errors\n    rewrite name a b\n", 1)})
            assert wait_until(lambda: reloads(lab, "failure") == 1, 10), kubelet.logs()
            assert "Corefile.base:3: directive 'rewrite' is not supported" in kubelet.logs()
            assert lab.metric('coredns_nodecache_setup_errors_total{errortype="configmap"}') == 1
            time.sleep(0.5)
        assert q.asked >= 10 and q.failures == [], f"{len(q.failures)} of {q.asked} failed: {q.failures[:5]}"
        took = kubelet.stop()
        assert took < kubelet.pod.get("terminationGracePeriodSeconds", 30)
        assert "rules removed" in kubelet.logs() and "nodelocaldns" not in lab.out("node", "ip", "link")
        assert not (tmp_path / "pod" / "tmp" / "node-cache.pid").exists()
    finally:
        kubelet.cleanup()
    assert not any(d.exists() for d in kubelet.created)  # the mount points made on the host are gone again
