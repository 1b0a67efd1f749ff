#!/bin/sh
# QEMU 7.2: amend compat=0.10 of an encrypted image leaves its zero clusters reading garbage.
# Exits 1 while the problem is present, 0 once it is gone. Needs qemu-utils.
set -u
w=$(mktemp -d); trap 'rm -rf "$w"' EXIT; cd "$w"
bug() { echo "BUG: $*"; exit 1; }
key='secret,id=k1,data=pw'
opts='driver=qcow2,file.filename=image.qcow2,encrypt.key-secret=k1'
# LUKS creation benchmarks PBKDF2, and qemu-img 7.2 gives up now and then on a busy machine ("Unable to get accurate CPU usage").
for try in 1 2 3 4 5; do qemu-img create -q -f qcow2 --object "$key" -o encrypt.format=luks,encrypt.key-secret=k1,encrypt.iter-time=10,cluster_size=65536 image.qcow2 128k 2>create.err && break; grep -q 'accurate CPU usage' create.err || { cat create.err; exit 2; }; done
qemu-io --object "$key" --image-opts -c 'write -q -P 0x11 0 64k' -c 'write -q -z 0 64k' "$opts" || exit 2
out=$(qemu-io --object "$key" -r --image-opts -c 'read -q -P 0 0 64k' "$opts" 2>&1)
[ -z "$out" ] || { echo "$out"; exit 2; }
qemu-img amend --object "$key" -o compat=0.10 --image-opts "$opts" || { echo "amend refused: the bug is gone"; echo "no problem found"; exit 0; }
out=$(qemu-io --object "$key" -r --image-opts -c 'read -q -P 0 0 64k' "$opts" 2>&1)
[ -z "$out" ] || bug "after the downgrade the zeroed cluster no longer reads zeros: $out"
echo "no problem found"
exit 0
