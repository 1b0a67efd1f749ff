/**
 * repro.sh for a reader finding: the saved image (image.qcow2 and its backing
 * files, in the entry) read through the implementation itself and compared
 * with QEMU's reading of it (qemu-img convert -O raw), so a maintainer can
 * reproduce without this project. For libqcow the script reads through
 * libqcow's own Python binding; for other readers it replays the entry when
 * qcow2-harness is installed. Exits 1 while the misread is present, 0 once it
 * is gone.
 */
import type { TraceConfig } from '../config.js';
import { backingChain } from '../config.js';
import type { OracleName } from '../oracles.js';
import { formatOp, type Op } from '../ops.js';

export interface ReaderReproInput {
  target: string;
  producer: string;
  config: TraceConfig;
  ops: Op[];
  oracle: OracleName;
  message: string;
  implementation?: string;
}

/** Reads the image through pyqcow (parents opened as the header names them) and compares it with a raw file. */
const PYQCOW_COMPARE = `import os, sys, pyqcow
image, expected = sys.argv[1], sys.argv[2]
files = []
p = image
while p:
    f = pyqcow.file(); f.open(p); files.append(f)
    b = f.get_backing_filename()
    p = os.path.join(os.path.dirname(p), b.decode() if isinstance(b, bytes) else b) if b else None
for child, parent in zip(files, files[1:]):
    child.set_parent(parent)
want = open(expected, "rb").read()
size = files[0].get_media_size()
if size != len(want):
    print("libqcow media size %d, QEMU %d" % (size, len(want))); sys.exit(1)
step = 1 << 20
for off in range(0, size, step):
    n = min(step, size - off)
    got = files[0].read_buffer_at_offset(n, off)
    if got != want[off:off + n]:
        i = next(i for i in range(n) if i >= len(got) or got[i] != want[off + i])
        s = (off + i) // 512 * 512
        print("libqcow %s at guest offset %d: reads %s..., QEMU reads %s..." % (
            pyqcow.get_version(), off + i, bytes(got[s - off:s - off + 8]).hex(), want[s:s + 8].hex()))
        sys.exit(1)
print("libqcow %s reads the image as QEMU does" % pyqcow.get_version())
`;

export function readerReproScript(r: ReaderReproInput): string {
  const L: string[] = [];
  L.push('#!/bin/sh');
  L.push(`# Reader finding: ${r.target}${r.implementation ? ` (${r.implementation})` : ''} reading an image written by ${r.producer}.`);
  L.push(`# ${r.oracle}: ${r.message.replace(/\n/g, ' ')}`);
  L.push('# The image is saved next to this script (image.qcow2, with its backing chain if any).');
  L.push(`# Ops that made it (${r.producer}), for the record:`);
  r.ops.forEach((op, i) => L.push(`#   ${i + 1}: ${formatOp(op)}`));
  L.push('# Exits 1 while the misread is present, 0 once it is gone.');
  L.push('set -u');
  L.push('here=$(cd "$(dirname "$0")" && pwd)');
  L.push('w=$(mktemp -d); trap \'rm -rf "$w"\' EXIT; cd "$w"');
  L.push('bug() { echo "BUG: $*"; exit 1; }');
  L.push('cp "$here/image.qcow2" image.qcow2');
  for (const l of backingChain(r.config)) L.push(`cp "$here/${l.file}" .`);
  L.push('# The image is valid: QEMU checks it clean and its reading is the reference.');
  L.push('qemu-img check -q -f qcow2 image.qcow2 || echo "note: qemu-img check is not clean (rc $?)"');
  L.push('qemu-img convert -U -f qcow2 -O raw image.qcow2 expected.raw || { echo "qemu-img convert failed"; exit 2; }');
  if (r.target === 'libqcow') {
    L.push('[ -x /usr/bin/python3 ] && /usr/bin/python3 -c "import pyqcow" 2>/dev/null || { echo "needs python3-libqcow (apt-get install python3-libqcow)"; exit 2; }');
    L.push("cat > compare.py <<'PY'");
    L.push(PYQCOW_COMPARE.trimEnd());
    L.push('PY');
    L.push('timeout 30 /usr/bin/python3 compare.py image.qcow2 expected.raw; rc=$?');
    L.push('[ $rc -eq 124 ] && bug "libqcow does not finish reading the image within 30 s (hang)"');
    L.push('[ $rc -ne 0 ] && bug "libqcow misreads the image"');
  } else {
    L.push('command -v qcow2-harness >/dev/null 2>&1 || { echo "needs qcow2-harness to drive this reader"; exit 2; }');
    // replay's verdict depends on an external block; whether the trace still fails does not.
    L.push('qcow2-harness replay --json "$here" 2>/dev/null | tail -n 1 | grep -q \'"failure":\' && bug "replay still shows the misread by ' + r.target + '"');
  }
  L.push('echo "no problem found"');
  L.push('exit 0');
  return L.join('\n') + '\n';
}
