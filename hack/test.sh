#!/usr/bin/env bash
# The project's checks, as CI runs them: ruff, mypy (strict, nodelocal/), then pytest.
# Extra arguments go to pytest, e.g. hack/test.sh tests/unit -k wire
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
[ -x "$PY" ] || { echo "test: no .venv; run hack/setup.sh first" >&2; exit 2; }
export PATH="$PWD/.venv/bin:$PATH"  # tools installed into the venv (kubectl where the machine has none)
"$PY" -m ruff check nodelocal tests hack
"$PY" -m mypy
exec "$PY" -m pytest "$@"
