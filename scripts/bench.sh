#!/usr/bin/env bash
# Speed of our CLI against qemu-img/qemu-io, measured in one run on this machine
# (issue 3 done-means 6, issue 5 done-means 4). Arguments go to `bench`
# (see --help); --json prints one JSON document.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -f dist/harness/bench.js ] || [ ! -f dist/cli/main.js ]; then
  npm run build >&2
fi
# Calls the harness directly so the bench runs whether or not the CLI wires `bench` yet.
exec node --input-type=module -e '
import { benchCommand } from "./dist/harness/bench.js";
process.exitCode = await benchCommand(process.argv.slice(1));
' -- "$@"
