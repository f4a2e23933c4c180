#!/usr/bin/env bash
# Sets up everything the tests and the benchmark need, on Debian 12: the DNS peers and tools from
# Debian's packages, and a virtualenv (.venv) holding nodelocal (editable) with its test tools.
# Run it again at any time; it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# dig/kdig (manual checks), dnsperf (benchmark), unbound and dnsmasq (peers in tests and benchmark).
APT_PACKAGES=(dnsutils knot-dnsutils dnsperf unbound dnsmasq-base procps)

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

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'
echo "setup: done ($(.venv/bin/python -m nodelocal --version))"
