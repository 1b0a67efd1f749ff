#!/usr/bin/env bash
# Installs what a fresh Debian/Ubuntu checkout needs to run qcow2-harness:
# qemu-utils (qemu-img, qemu-io — the reference implementation the tests and
# oracles compare against), python3-libqcow and libqcow-utils (libqcow, another
# qcow2 reader the harness can check), the node dependencies, and the build.
# Safe to run again: every step is skipped or a no-op when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages: qemu-utils is required (the oracles); python3-libqcow and
# libqcow-utils (libqcow, a second qcow2 reader, for the libqcow target) are
# installed when apt-get is there, else only reported.
need_qemu=0
command -v qemu-img >/dev/null 2>&1 && command -v qemu-io >/dev/null 2>&1 || need_qemu=1
missing=()
[ "$need_qemu" -eq 0 ] || missing+=(qemu-utils)
# Debian's python3 (not a pyenv one first on PATH) is the one that sees pyqcow.
/usr/bin/python3 -c 'import pyqcow' >/dev/null 2>&1 || missing+=(python3-libqcow)
command -v qcowinfo >/dev/null 2>&1 || missing+=(libqcow-utils)
# valgrind counts qemu-img's instructions for the slow-amend corpus entry (a
# verdict that does not depend on machine speed).
command -v valgrind >/dev/null 2>&1 || missing+=(valgrind)

if [ "${#missing[@]}" -gt 0 ]; then
  SUDO=()
  can_install=1
  if ! command -v apt-get >/dev/null 2>&1; then
    can_install=0
    why="apt-get is not available"
  elif [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO=(sudo); else can_install=0; why="this is not root and sudo is missing"; fi
  fi
  if [ "$can_install" -eq 1 ]; then
    echo "setup: installing ${missing[*]}"
    "${SUDO[@]}" apt-get update
    DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y "${missing[@]}"
  elif [ "$need_qemu" -eq 1 ]; then
    echo "setup: qemu-img/qemu-io are missing and $why;" >&2
    echo "setup: install QEMU's tools (Debian/Ubuntu package qemu-utils) by hand, then re-run." >&2
    exit 1
  else
    echo "setup: ${missing[*]} not installed ($why): the libqcow target (python3-libqcow) or the slow-amend replay (valgrind) will be unavailable." >&2
  fi
fi

if ! command -v node >/dev/null 2>&1; then
  echo "setup: node (>= 20) is required; install it first." >&2
  exit 1
fi
node_major="$(node -p 'process.versions.node.split(".")[0]')"
if [ "$node_major" -lt 20 ]; then
  echo "setup: node >= 20 is required (found $(node --version))." >&2
  exit 1
fi

# npm ci wipes and reinstalls node_modules; skip it when the installed tree
# was made from the current lock file (npm records it in
# node_modules/.package-lock.json), so a re-run is fast.
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci
fi
npm run build
echo "setup: done ($(qemu-img --version | head -n1))"
