#!/bin/sh
# Reproduces with qemu-img/qemu-io only: check: qemu-img check rc 2: corruptions=2 leaks=1 check-errors=0: Leaked cluster 5 refcount=1 reference=0 | ERROR cluster 6 refcount=0 reference=1 | ERROR OFLAG_COPIED data cluster: l2_entry=8000000000006000 refcount=0
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
qemu-img create -q -f raw backing.src 4096
qemu-io -f raw -c 'write -q -P 0xc8 0 512' backing.src
mv backing.src backing.raw
qemu-img create -q -f qcow2 -o cluster_size=4096,refcount_bits=1,compat=1.1,lazy_refcounts=on,extended_l2=off,compression_type=zlib -b backing.raw -F raw image.qcow2 4096
run qemu-io -f qcow2 -c 'write -q -P 0x01 0 512' -c flush -c abort image.qcow2 2>/dev/null; [ $? -eq 134 ] || bug "qemu-io failed"
run qemu-img amend -f qcow2 -o lazy_refcounts=off image.qcow2 || bug "op 2 failed: qemu-img amend -f qcow2 -o lazy_refcounts=off image.qcow2"
run qemu-img amend -f qcow2 -o lazy_refcounts=on image.qcow2 || bug "op 3 failed: qemu-img amend -f qcow2 -o lazy_refcounts=on image.qcow2"
run qemu-io -f qcow2 -c 'write -q -z -u 0 4096' -c 'write -q -P 0x05 0 512' -c flush -c abort image.qcow2 2>/dev/null; [ $? -eq 134 ] || bug "qemu-io failed"

cp image.qcow2 repaired.qcow2; run qemu-img check -q -r all -f qcow2 repaired.qcow2 >/dev/null 2>&1
run qemu-img check -f qcow2 repaired.qcow2 || bug "qemu-img check reports problems after repair"
# Expected guest view, built in a raw file.
qemu-img create -q -f raw expected.raw 4096
qemu-io -f raw -c 'write -q -P 0x05 0 512' expected.raw
run qemu-img compare -f qcow2 -F raw image.qcow2 expected.raw || bug "guest view differs from the expected one"
size=$(qemu-img info --output=json image.qcow2 | sed -n 's/.*"virtual-size": \([0-9]*\).*/\1/p')
[ "$size" = "4096" ] || bug "virtual size $size, expected 4096"
echo "no problem found"
exit 0
