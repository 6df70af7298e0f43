#!/usr/bin/env bash
# Create (or reuse) a virtual environment for one Python and install afar with its extras into it.
# Usage: scripts/setup-venv.sh [PYTHON] -> prints the venv's python executable on its last line.
# With AFAR_OLDEST=1 the venv (.venv-X.Y-oldest) gets the oldest distributed (and dask) that
# pyproject.toml claims to support, read from its dependency list.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${1:-${PYTHON:-python3}}"
version="$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
venv="$root/.venv-$version"
pins=()
if [[ "${AFAR_OLDEST:-}" == 1 ]]; then
  venv="$venv-oldest"
  oldest="$("$python" - "$root/pyproject.toml" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
print(re.search(r'"distributed>=([0-9][0-9.]*)"', text).group(1))
PY
)"
  # Bokeh of that time too: distributed's performance_report of then stops a newer Bokeh's
  # server in a way that Bokeh 3.7 refuses ("Cannot synchronously wait on a running loop").
  pins=("distributed==$oldest" "dask==$oldest" "bokeh<3.7")
fi
if [[ ! -x "$venv/bin/python" ]]; then
  "$python" -m venv "$venv" >&2
fi
"$venv/bin/python" -m pip install --quiet --upgrade pip >&2
"$venv/bin/python" -m pip install --quiet -e "$root[test]" "${pins[@]}" >&2
echo "$venv/bin/python"
