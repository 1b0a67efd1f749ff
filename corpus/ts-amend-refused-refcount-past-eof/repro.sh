#!/bin/sh
# Reproduces with qemu-img/qemu-io only: op: op #3 'amend refcount_bits=2' failed: LimitError: cluster 5 past the end of the file has refcount 1; repair the image first
# Exits 1 while the problem is present, 0 once it is gone. Needs qemu-utils.
set -u
here=$(cd "$(dirname "$0")" && pwd)
w=$(mktemp -d); trap 'rm -rf "$w"' EXIT; cd "$w"
bug() { echo "BUG: $*"; exit 1; }
run() { timeout 60 "$@"; rc=$?; [ $rc -eq 124 ] && bug "hang: $*"; return $rc; }

# The image our target left behind, checked as it is (ts-target findings show here).
if [ -f "$here/image.qcow2" ]; then
  cp "$here/image.qcow2" saved.qcow2
  run qemu-img check -q -f qcow2 saved.qcow2 >/dev/null 2>&1; rc=$?
  [ $rc -ne 0 ] && [ $rc -ne 124 ] && bug "saved image.qcow2 fails qemu-img check (rc $rc)"
fi
# Found on target ts: with qcow2-harness installed, replay it there too.
if command -v qcow2-harness >/dev/null 2>&1; then
  qcow2-harness replay "$here" || bug "replay on ts still fails"
fi

# The same ops through QEMU (the reference: for a finding against another target this part shows what QEMU does).
qemu-img create -q -f qcow2 -o cluster_size=8192,refcount_bits=1,compat=1.1,lazy_refcounts=off,extended_l2=off,compression_type=zstd image.qcow2 8192
run qemu-io -f qcow2 -c 'write -q -P 0x01 0 512' image.qcow2 # some of these fail, as they must
run qemu-img amend -f qcow2 -o refcount_bits=2 image.qcow2 || bug "op 3 failed: qemu-img amend -f qcow2 -o refcount_bits=2 image.qcow2"

run qemu-img check -f qcow2 image.qcow2 || bug "qemu-img check reports problems"
# Expected guest view, built in a raw file.
qemu-img create -q -f raw expected.raw 8192
run qemu-img compare -f qcow2 -F raw image.qcow2 expected.raw || bug "guest view differs from the expected one"
size=$(qemu-img info --output=json image.qcow2 | sed -n 's/.*"virtual-size": \([0-9]*\).*/\1/p')
[ "$size" = "8192" ] || bug "virtual size $size, expected 8192"
echo "no problem found"
exit 0
