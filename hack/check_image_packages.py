#!/usr/bin/env python3
"""Checks that config/container/Containerfile installs what the agent runs, as this project installs it.

No container engine runs here, so the image is checked by reading it:
  1. the rule tools the network-setup code runs (found by driving every rules backend with a recording
     fake runner, not by a list kept by hand) are each provided by a Debian package the Containerfile
     installs (dpkg -S on this machine, which has the same Debian release as the image);
  2. those packages are in hack/setup.sh's APT_PACKAGES (the tests run the same tools);
  3. the base image is Python <major.minor> of this venv on the Debian release of this machine;
  4. the Python packages come from setup.cfg (the Containerfile installs the project itself, no list of its own).
Exit 0 and one line per check when all hold; 1 and what differs otherwise.

    .venv/bin/python hack/check_image_packages.py
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONTAINERFILE = REPO / "config" / "container" / "Containerfile"
SETUP_SH = REPO / "hack" / "setup.sh"
sys.path.insert(0, str(REPO))


def containerfile_packages(text: str) -> set[str]:
    """Packages named by `apt-get install` in the Containerfile's RUN lines (continuations joined)."""
    joined = re.sub(r"\\\n", " ", text)
    pkgs: set[str] = set()
    for line in joined.splitlines():
        if not line.strip().startswith("RUN"):
            continue
        for cmd in re.split(r"&&|;", line):
            words = shlex.split(cmd.replace("RUN", " ", 1) if cmd.strip().startswith("RUN") else cmd)
            if "apt-get" in words and "install" in words:
                pkgs |= {w for w in words[words.index("install") + 1:] if not w.startswith("-")}
    return pkgs


def setup_sh_packages(text: str) -> set[str]:
    """Every word of hack/setup.sh's APT_PACKAGES=(...) and APT_PACKAGES+=(...) lines."""
    out: set[str] = set()
    for m in re.finditer(r"APT_PACKAGES\+?=\(([^)]*)\)", text):
        out |= set(m.group(1).split())
    return out


def base_images(text: str) -> list[str]:
    return re.findall(r"^FROM\s+(\S+)", text, flags=re.M)


def tools_the_code_runs() -> set[str]:
    """argv[0] of every command the rules backends run for ensure, heartbeat, remove and detection."""
    from nodelocal.netsetup import backends
    from nodelocal.netsetup.plan import build_plan
    from nodelocal.netsetup.runner import Result

    seen: set[str] = set()

    def runner(argv: Sequence[str], stdin: str | None = None) -> Result:
        seen.add(argv[0])
        return Result(0, "", "")

    plan = build_plan(("169.254.20.10", "10.96.0.10", "fd53::10"), 53, 8080, ("10.96.0.10", "fd53:96::a"),
                      lambda ip: False)
    backends.detect(runner)
    for name in backends.BACKENDS:
        backend = backends.make(name, runner)
        for step in (lambda b=backend: b.ensure(plan), lambda b=backend: b.heartbeat(plan),
                     lambda b=backend: b.remove()):
            try:
                step()
            except Exception:  # an empty fake output may not satisfy every parser: the commands are recorded
                pass
    return seen


def debian_package_of(tool: str) -> str | None:
    path = shutil.which(tool)
    if path is None:
        return None
    real = str(Path(path).resolve())
    for candidate in (path, real, "/usr" + path if not path.startswith("/usr") else path):
        p = subprocess.run(["dpkg", "-S", candidate], capture_output=True, text=True, check=False)
        if p.returncode == 0:
            return p.stdout.split(":", 1)[0].strip()
    # Debian's alternatives: iptables-nft etc. are symlinks into xtables-*-multi of the iptables package.
    p = subprocess.run(["dpkg", "-S", Path(real).name], capture_output=True, text=True, check=False)
    return p.stdout.split(":", 1)[0].strip() if p.returncode == 0 else None


def main() -> int:
    text = CONTAINERFILE.read_text()
    problems: list[str] = []
    image_pkgs = containerfile_packages(text)
    project_pkgs = setup_sh_packages(SETUP_SH.read_text())

    tools = tools_the_code_runs()
    owners: dict[str, str | None] = {t: debian_package_of(t) for t in sorted(tools)}
    for tool, pkg in owners.items():
        if pkg is None:
            problems.append(f"{tool}: not installed here, so its Debian package is unknown (run hack/setup.sh)")
        elif pkg not in image_pkgs:
            problems.append(f"{tool}: from Debian package {pkg}, which the Containerfile does not install")
    print(f"check: the code runs {', '.join(sorted(tools))}: packages "
          f"{', '.join(sorted({p for p in owners.values() if p}))}")

    for pkg in sorted(image_pkgs - project_pkgs):
        problems.append(f"{pkg}: installed in the image but not by hack/setup.sh (the tests would not run it)")
    print(f"check: the image installs {', '.join(sorted(image_pkgs))}; hack/setup.sh has them all"
          if image_pkgs <= project_pkgs else "check: the image installs packages hack/setup.sh does not")

    release = ""
    with open("/etc/os-release") as f:
        for line in f:
            if line.startswith("VERSION_CODENAME="):
                release = line.split("=", 1)[1].strip().strip('"')
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    for image in base_images(text):
        if not re.fullmatch(rf"(\S+/)?python:{re.escape(py)}-slim-{re.escape(release)}", image):
            problems.append(f"FROM {image}: expected python:{py}-slim-{release} (this venv's Python, this "
                            "machine's Debian release)")
    print(f"check: base images {', '.join(base_images(text))} (want Python {py} on Debian {release})")

    if "pip wheel" not in text or "COPY setup.cfg" not in text:
        problems.append("the Containerfile should build the project's own wheel (setup.cfg's install_requires)")
    else:
        print("check: Python packages come from setup.cfg (the project's wheel)")

    for p in problems:
        print(f"check_image_packages: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
