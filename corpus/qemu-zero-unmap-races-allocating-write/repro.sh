#!/bin/sh
# Reproduces with qemu-img/qemu-io only: check: qemu-img check rc 2: corruptions=2 leaks=0 check-errors=0: ERROR cluster 5 refcount=0 reference=1 | ERROR OFLAG_COPIED data cluster: l2_entry=8000000000050000 refcount=0
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
qemu-img create -q -f qcow2 -o cluster_size=65536,refcount_bits=16,compat=1.1,lazy_refcounts=off,extended_l2=off,compression_type=zlib image.qcow2 1048576
run qemu-io -f qcow2 -c 'write -q -P 0x01 0 65536' -c 'write -q -z 0 65536' image.qcow2 || bug "qemu-io failed"
run qemu-io -c 'aio_write -q -P 0x51 0 65536' -c 'aio_write -q -z -u 0 65536' -c 'aio_flush' -c 'flush' image.qcow2 || bug "op 3 failed: qemu-io -c 'aio_write -q -P 0x51 0 65536' -c 'aio_write -q -z -u 0 65536' -c 'aio_flush' -c 'flush' image.qcow2"

run qemu-img check -f qcow2 image.qcow2 || bug "qemu-img check reports problems"
# Expected guest view, built in a raw file.
qemu-img create -q -f raw expected.raw 1048576
run qemu-img compare -f qcow2 -F raw image.qcow2 expected.raw || bug "guest view differs from the expected one"
size=$(qemu-img info --output=json image.qcow2 | sed -n 's/.*"virtual-size": \([0-9]*\).*/\1/p')
[ "$size" = "1048576" ] || bug "virtual size $size, expected 1048576"
echo "no problem found"
exit 0
