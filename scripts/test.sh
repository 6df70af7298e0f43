#!/usr/bin/env bash
# Set up everything on a fresh machine and run afar's checks and tests on one Python.
# Usage: bash scripts/test.sh [PYTHON] [pytest arguments...]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${1:-${PYTHON:-python3}}"
shift || true
venv_python="$(bash "$root/scripts/setup-venv.sh" "$python" | tail -n 1)"
# AFAR_BROWSER=1: also what a user sees in JupyterLab, in a real browser (tests/browser).
browser="${AFAR_BROWSER:-0}"
if [[ "$browser" == 1 ]]; then
  bash "$root/scripts/setup-browser.sh" "$venv_python"
fi
cd "$root"
"$venv_python" -m ruff check afar tests benchmarks examples
"$venv_python" -m ruff format --check afar tests benchmarks examples
if (($#)); then
  exec "$venv_python" -m pytest -q -p no:cacheprovider "$@"
fi
# The deployment tests start their own scheduler and worker processes and check that no Dask
# client other than theirs exists in the process: they run in a pytest process of their own,
# apart from the LocalCluster of tests/cluster, which stays the default client for its session.
status=0
"$venv_python" -m pytest -q -p no:cacheprovider tests/unit tests/cluster tests/ipython || status=$?
"$venv_python" -m pytest -q -p no:cacheprovider tests/deploy || status=$?
if [[ "$browser" == 1 ]]; then
  "$venv_python" -m pytest -q -p no:cacheprovider tests/browser || status=$?
fi
exit $status
