#!/usr/bin/env bash
# Installs what a fresh Debian/Ubuntu checkout needs to run qcow2-harness:
# qemu-utils (qemu-img, qemu-io — the reference implementation the tests and
# oracles compare against), the node dependencies, and the build.
# Safe to run again: every step is skipped or a no-op when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v qemu-img >/dev/null 2>&1 || ! command -v qemu-io >/dev/null 2>&1; then
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "setup: qemu-img/qemu-io are missing and apt-get is not available;" >&2
    echo "setup: install QEMU's tools (package qemu-utils or qemu-img) by hand, then re-run." >&2
    exit 1
  fi
  if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
  elif command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
  else
    echo "setup: qemu-utils must be installed, but this is not root and sudo is missing;" >&2
    echo "setup: run 'apt-get install -y qemu-utils' as root, then re-run." >&2
    exit 1
  fi
  echo "setup: installing qemu-utils"
  "${SUDO[@]}" apt-get update
  DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y qemu-utils
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
