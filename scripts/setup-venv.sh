#!/usr/bin/env bash
# Create (or reuse) a virtual environment for one Python and install afar with its extras into it.
# Usage: scripts/setup-venv.sh [PYTHON] -> prints the venv's python executable on its last line.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${1:-${PYTHON:-python3}}"
version="$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
venv="$root/.venv-$version"
if [[ ! -x "$venv/bin/python" ]]; then
  "$python" -m venv "$venv" >&2
fi
"$venv/bin/python" -m pip install --quiet --upgrade pip >&2
"$venv/bin/python" -m pip install --quiet -e "$root[test]" >&2
echo "$venv/bin/python"
