#!/usr/bin/env bash
# What tests/browser needs: Debian's chromium (Playwright's own browser download cannot work on
# a machine without the internet at large), JupyterLab and Playwright in the given venv.
# Usage: scripts/setup-browser.sh VENV_PYTHON
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv_python="$1"
if [[ ! -x /usr/bin/chromium ]]; then
  echo "setup-browser: installing Debian's chromium" >&2
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >&2
fi
"$venv_python" -m pip install --quiet -e "$root[test,browser]" >&2
