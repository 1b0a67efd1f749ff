#!/bin/sh
# Reproduces with qemu-img/qemu-io only: exception: QemuToolError: qemu-img convert failed (rc 1): qemu-img: error while reading at byte 0: Input/output error
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

# The same ops through QEMU.
qemu-img create -q -f qcow2 -o cluster_size=4096,refcount_bits=16,compat=1.1,lazy_refcounts=off,extended_l2=off,compression_type=zstd image.qcow2 6656
run qemu-io -f qcow2 -c 'write -q -c -P 0x01 0 4096' image.qcow2 || bug "qemu-io failed"
run qemu-img snapshot -c 's0' image.qcow2 || bug "op 2 failed: qemu-img snapshot -c 's0' image.qcow2"
run qemu-io -f qcow2 -c 'write -q -P 0x03 0 512' image.qcow2 || bug "qemu-io failed"
run qemu-img amend -f qcow2 -o compat=0.10 image.qcow2 || bug "op 4 failed: qemu-img amend -f qcow2 -o compat=0.10 image.qcow2"

run qemu-img check -f qcow2 image.qcow2 || bug "qemu-img check reports problems"
# Expected guest view, built in a raw file.
qemu-img create -q -f raw expected.raw 6656
qemu-io -f raw -c 'write -q -P 0x03 0 512' -c 'write -q -P 0x01 512 3584' expected.raw
run qemu-img compare -f qcow2 -F raw image.qcow2 expected.raw || bug "guest view differs from the expected one"
size=$(qemu-img info --output=json image.qcow2 | sed -n 's/.*"virtual-size": \([0-9]*\).*/\1/p')
[ "$size" = "6656" ] || bug "virtual size $size, expected 6656"
echo "no problem found"
exit 0
