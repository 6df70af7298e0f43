#!/usr/bin/env bash
# Set up everything on a fresh machine and run afar's checks and tests on one Python.
# Usage: bash scripts/test.sh [PYTHON] [pytest arguments...]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${1:-${PYTHON:-python3}}"
shift || true
venv_python="$(bash "$root/scripts/setup-venv.sh" "$python" | tail -n 1)"
cd "$root"
"$venv_python" -m ruff check afar tests benchmarks examples
"$venv_python" -m ruff format --check afar tests benchmarks examples
"$venv_python" -m pytest -q -p no:cacheprovider "$@"
