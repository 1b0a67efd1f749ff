#!/bin/sh
# QEMU 7.2: qemu-img check -r all of an image whose refcount table entry 0 has a
# reserved bit set fails and marks the image corrupt, so the image that read fine
# before the repair can no longer be opened read/write (trace.json says why).
# Exits 1 while the problem is present, 0 once it is gone, 2 when the setup does
# not go as planned. Needs qemu-utils, od, dd and printf.
set -u
w=$(mktemp -d); trap 'rm -rf "$w"' EXIT; cd "$w"
run() { timeout 60 "$@"; rc=$?; [ $rc -eq 124 ] && { echo "BUG: hang: $*"; exit 1; }; return $rc; }
setup() { echo "setup: $*"; exit 2; }
show() { echo "$1: exit $2"; [ -n "$3" ] && printf '%s\n' "$3" | sed 's/^/    /'; }
# Eight bytes of a file at an offset, as 16 hex digits (POSIX od reads them in file order).
hex8() { od -An -tx1 -j"$2" -N8 "$1" | tr -d ' \n'; }

qemu-img create -q -f qcow2 -o cluster_size=65536,refcount_bits=16,compat=1.1 image.qcow2 4M || setup "qemu-img create failed"
qemu-io -f qcow2 -c 'write -q -P 0x11 0 1M' image.qcow2 || setup "qemu-io write failed"

# The refcount table's offset is the header's big-endian u64 at byte 48; its entry 0
# names the refcount block covering the first clusters. Set reserved bit 0 of it.
rt=$((0x$(hex8 image.qcow2 48)))
e0=$(hex8 image.qcow2 "$rt")
[ "$e0" = 0000000000020000 ] || setup "refcount table entry 0 (at $rt) is $e0, expected 0000000000020000"
printf '\001' | dd of=image.qcow2 bs=1 seek=$((rt + 7)) conv=notrunc 2>/dev/null || setup "dd failed"
echo "refcount table entry 0 at offset $rt: $e0 -> $(hex8 image.qcow2 "$rt")"

out=$(run qemu-io -r -f qcow2 -c 'read -q -P 0x11 0 1M' image.qcow2 2>&1) && [ -z "$out" ] || setup "the patched image does not read back before the repair: $out"
echo "before the repair: qemu-io reads the data back"
out=$(run qemu-img check image.qcow2 2>&1); show "qemu-img check" $? "$out"

out=$(run qemu-img check -r all image.qcow2 2>&1); rc=$?; show "qemu-img check -r all" $rc "$out"
problems=''
[ $rc -eq 0 ] || problems="$problems; check -r all exits $rc"
out=$(run qemu-img check image.qcow2 2>&1); rc=$?; show "qemu-img check after the repair" $rc "$out"
[ $rc -eq 0 ] || problems="$problems; qemu-img check after the repair exits $rc"
qemu-img info image.qcow2 | grep -q 'corrupt: true' && problems="$problems; the repair marked the image corrupt"
# A read/write open (no -r) that reads the guest back: the data, then zeros.
out=$(run qemu-io -f qcow2 -c 'read -q -P 0x11 0 1M' -c 'read -q -P 0 1M 3M' image.qcow2 2>&1); rc=$?
show "qemu-io read/write open and read back after the repair" $rc "$out"
[ $rc -eq 0 ] && [ -z "$out" ] || problems="$problems; the repaired image does not open read/write and read back"

[ -z "$problems" ] || { echo "BUG: ${problems#; }"; exit 1; }
echo "no problem found"
exit 0
