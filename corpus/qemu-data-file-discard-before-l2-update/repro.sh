#!/bin/sh
# Reproduces with qemu-img/qemu-io only: crash: crash state 1 of 1 (qemu-io killed (sigraise 9) after the 3 commands of its batch, write cache on) at op #4: at guest offset 0 read foreign bytes, which it never held since the last flush (op #1 or zeros) (8 sectors differ) [every-prefix: 1 crash states of 2 pending writes]
# Exits 1 while the problem is present, 0 once it is gone. Needs qemu-utils.
set -u
here=$(cd "$(dirname "$0")" && pwd)
w=$(mktemp -d); trap 'rm -rf "$w"' EXIT; cd "$w"
bug() { echo "BUG: $*"; exit 1; }
run() { timeout 60 "$@"; rc=$?; [ $rc -eq 124 ] && bug "hang: $*"; return $rc; }

# The image our target left behind, checked as it is (ts-target findings show here).
if [ -f "$here/image.qcow2" ] && [ -f "$here/image.data" ]; then
  cp "$here/image.qcow2" saved.qcow2
  cp "$here/image.data" saved.data
  run qemu-img check -q --object 'secret,id=sec0,data=qcow2-harness' --image-opts 'driver=qcow2,file.filename=saved.qcow2,encrypt.key-secret=sec0,data-file.filename=saved.data' >/dev/null 2>&1; rc=$?
  [ $rc -ne 0 ] && [ $rc -ne 124 ] && bug "saved image.qcow2 fails qemu-img check (rc $rc)"
fi

# The same ops through QEMU.
for try in 1 2 3 4 5; do qemu-img create -q -f qcow2 --object 'secret,id=sec0,data=qcow2-harness' -o cluster_size=4096,refcount_bits=16,compat=1.1,lazy_refcounts=off,extended_l2=off,compression_type=zlib,data_file=image.data,encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10 image.qcow2 65536 2>create.err && break; grep -q 'accurate CPU usage' create.err || { cat create.err; bug "qemu-img create failed"; }; done
cp image.qcow2 crash.qcow2 && cp image.data crash.data
run qemu-io --object 'secret,id=sec0,data=qcow2-harness' --image-opts -c 'write -q -P 0x01 0 4096' -c 'flush' -c 'discard -q 0 4096' 'driver=qcow2,file.filename=image.qcow2,encrypt.key-secret=sec0' || bug "qemu-io failed"
# op 4 (crash): the batch again on the copy, killed before it closes the image, write cache on
qemu-io -t writeback -c 'write -q -P 0x01 0 4096' -c 'flush' -c 'discard -q 0 4096' -c 'sigraise 9' --object 'secret,id=sec0,data=qcow2-harness' --image-opts 'driver=qcow2,file.filename=crash.qcow2,encrypt.key-secret=sec0,data-file.filename=crash.data' >/dev/null 2>&1
run qemu-io -c flush --object 'secret,id=sec0,data=qcow2-harness' --image-opts 'driver=qcow2,file.filename=crash.qcow2,encrypt.key-secret=sec0,data-file.filename=crash.data' >/dev/null || bug "the crash state does not open"
run qemu-img check --object 'secret,id=sec0,data=qcow2-harness' --image-opts 'driver=qcow2,file.filename=crash.qcow2,encrypt.key-secret=sec0,data-file.filename=crash.data' >/dev/null 2>&1; rc=$?; [ $rc -eq 0 ] || [ $rc -eq 3 ] || bug "qemu-img check of the crash state: rc $rc"
run qemu-img convert -O raw --object 'secret,id=sec0,data=qcow2-harness' --image-opts 'driver=qcow2,file.filename=crash.qcow2,encrypt.key-secret=sec0,data-file.filename=crash.data' crash.raw || bug "the crash state does not read"
qemu-img create -q -f raw at-flush.raw 65536
qemu-io -f raw -c 'write -q -P 0x01 0 4096' at-flush.raw
qemu-img create -q -f raw now.raw 65536
cmp -l crash.raw at-flush.raw 2>/dev/null | awk '{print $1}' | sort > differ-flush; cmp -l crash.raw now.raw 2>/dev/null | awk '{print $1}' | sort > differ-now
bad=$(comm -12 differ-flush differ-now | sort -n | head -1)
[ -z "$bad" ] || bug "crash state: guest byte $((bad - 1)) is neither its value at the last flush nor after the batch"
echo "crash state as allowed"

run qemu-img check --object 'secret,id=sec0,data=qcow2-harness' --image-opts 'driver=qcow2,file.filename=image.qcow2,encrypt.key-secret=sec0' || bug "qemu-img check reports problems"
# Expected guest view, built in a raw file.
qemu-img create -q -f raw expected.raw 65536
run qemu-img compare --object 'secret,id=sec0,data=qcow2-harness' --image-opts 'driver=qcow2,file.filename=image.qcow2,encrypt.key-secret=sec0' 'driver=raw,file.filename=expected.raw' || bug "guest view differs from the expected one"
size=$(qemu-img info --output=json image.qcow2 | sed -n 's/.*"virtual-size": \([0-9]*\).*/\1/p')
[ "$size" = "65536" ] || bug "virtual size $size, expected 65536"
echo "no problem found"
exit 0
