#!/usr/bin/env bash
# Set up everything on a fresh machine and run the quickstart against a local Dask cluster.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv_python="$(bash "$root/scripts/setup-venv.sh" "${1:-${PYTHON:-python3}}" | tail -n 1)"
cd "$root"
"$venv_python" examples/quickstart.py
