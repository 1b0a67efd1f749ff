#!/bin/sh
# QEMU 7.2: a compressed write to an encrypted image is stored unencrypted.
# Exits 1 while the problem is present, 0 once it is gone. Needs qemu-utils.
set -u
w=$(mktemp -d); trap 'rm -rf "$w"' EXIT; cd "$w"
bug() { echo "BUG: $*"; exit 1; }
right='secret,id=k1,data=right'; wrong='secret,id=k2,data=wrong'
opts() { echo "driver=qcow2,file.filename=image.qcow2,encrypt.key-secret=$1"; }
qemu-img create -q -f qcow2 --object "$right" -o encrypt.format=aes,encrypt.key-secret=k1,cluster_size=65536 image.qcow2 128k || exit 2
qemu-io --object "$right" --image-opts -c 'write -q -c -P 0x5a 0 64k' -c 'write -q -P 0x5a 64k 64k' "$(opts k1)" || exit 2
# Legacy AES has no key check: a wrong passphrase opens the image and decrypts to garbage...
out=$(qemu-io --object "$wrong" -r --image-opts -c 'read -q -P 0x5a 64k 64k' "$(opts k2)" 2>&1)
echo "$out" | grep -q 'Pattern verification failed' || { echo "$out"; exit 2; }
# ...except in the compressed cluster, which was never encrypted.
out=$(qemu-io --object "$wrong" -r --image-opts -c 'read -q -P 0x5a 0 64k' "$(opts k2)" 2>&1)
echo "$out" | grep -q 'Pattern verification failed' || bug "the compressed cluster reads the guest data with a wrong key: it is stored unencrypted"
echo "no problem found"
exit 0
