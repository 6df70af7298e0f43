#!/usr/bin/env bash
# Run a command with CPython 3.14 and 3.15, which this machine's Debian release does not ship.
#
# Debian's unstable suite ("sid") has python3.14 and python3.15, built against a newer glibc
# than the host's, so they run inside a minimal sid root made with debootstrap. This script
# makes that root once (about a minute; later calls reuse it), then runs the command inside it
# in a private mount namespace, with the project folder mounted at the same path, so that the
# project's scripts, venvs and tests see the same paths as outside. Nothing stays mounted after.
#
# Usage: bash scripts/sid-python.sh COMMAND [ARGS...]
#   e.g. bash scripts/sid-python.sh bash scripts/test.sh python3.15
# Needs root (debootstrap, mount, chroot). AFAR_SID_ROOT chooses where the sid root lives.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
sid="${AFAR_SID_ROOT:-/var/cache/afar/sid-root}"
packages="python3.14,python3.14-venv,python3.14-dev,python3.15,python3.15-venv,python3.15-dev"
packages+=",ca-certificates,build-essential,git"

if [[ ! -x "$sid/usr/bin/python3.15" || ! -x "$sid/usr/bin/python3.14" ]]; then
  if ! command -v debootstrap >/dev/null 2>&1; then
    echo "sid-python: installing debootstrap" >&2
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >&2
  fi
  echo "sid-python: making a Debian sid root with Python 3.14 and 3.15 in $sid" >&2
  rm -rf "$sid.partial"
  mkdir -p "$(dirname "$sid")"
  debootstrap --variant=minbase --include="$packages" sid "$sid.partial" >&2
  rm -rf "$sid"
  mv "$sid.partial" "$sid"
fi

# What the sid root needs from the host to reach the package index.
for file in /etc/resolv.conf /etc/hosts /etc/ssl/certs/ca-certificates.crt; do
  [[ -e "$file" ]] && cp -L "$file" "$sid$file" 2>/dev/null || true
done
mkdir -p "$sid$root"

quoted="$(printf '%q ' "$@")"
exec unshare --mount --propagation private bash -c "
  set -e
  mount --bind /proc '$sid/proc'
  mount --bind /dev '$sid/dev'
  mkdir -p '$sid/dev/shm' && mount -t tmpfs tmpfs '$sid/dev/shm'
  # Pseudo-terminals (the terminal tests): /dev/pts is a mount of its own, not in /dev's bind.
  if mountpoint -q /dev/pts; then mount --bind /dev/pts '$sid/dev/pts'; fi
  mount --bind '$root' '$sid$root'
  exec chroot '$sid' /usr/bin/env -i HOME=/root PATH=/usr/local/bin:/usr/bin:/bin \
    LANG=C.UTF-8 TERM=\"\${TERM:-dumb}\" CI=\"\${CI:-}\" \
    bash -c 'cd \"\$1\" && shift && exec \"\$@\"' _ '$root' $quoted
"
