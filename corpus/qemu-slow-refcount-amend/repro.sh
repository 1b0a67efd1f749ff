#!/bin/sh
# QEMU 7.2: qemu-img amend -o refcount_bits=64 does work quadratic in the cluster size on an
# empty image (it walks every refcount entry the refcount table could address). Measured by
# counting instructions with valgrind, so the verdict does not depend on the machine's speed.
# Exits 1 while the problem is present (each cluster-size doubling costs >= 3x the
# instructions), 0 once it is gone. Needs qemu-utils and valgrind.
set -u
w=$(mktemp -d); trap 'rm -rf "$w"' EXIT; cd "$w"
count() {
  qemu-img create -q -f qcow2 -o cluster_size=$1,refcount_bits=1,compat=1.1,lazy_refcounts=off,extended_l2=off,compression_type=zlib c$1.qcow2 1048576
  valgrind --tool=cachegrind --cache-sim=no --cachegrind-out-file=/dev/null \
    qemu-img amend -f qcow2 -o refcount_bits=64 c$1.qcow2 2>&1 | sed -n 's/.*I *refs: *//p' | tr -d ,
}
prev=
for cs in 2048 4096 8192; do
  n=$(count $cs)
  [ -n "$n" ] || { echo "could not count instructions at cluster size $cs (is valgrind installed?)"; exit 2; }
  echo "cluster_size=$cs: $n instructions"
  if [ -n "$prev" ] && [ "$n" -lt $((prev * 3)) ]; then echo "no problem found (less than 3x per doubling)"; exit 0; fi
  prev=$n
done
echo "BUG: qemu-img amend refcount_bits=64 costs >= 3x more instructions per doubling of the cluster size"
exit 1
