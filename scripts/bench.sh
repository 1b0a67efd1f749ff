#!/usr/bin/env bash
# Speed of our CLI against qemu-img/qemu-io, measured in one run on this machine
# (issue 3 done-means 6, issue 5 done-means 4). Arguments go to `bench`
# (see --help); --json prints one JSON document.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -f dist/cli/commands/bench.js ] || [ ! -f dist/harness/bench.js ]; then
  npm run build >&2
fi
exec node dist/cli/main.js bench "$@"
