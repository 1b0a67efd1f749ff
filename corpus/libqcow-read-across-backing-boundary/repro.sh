#!/bin/sh
# Reader finding: libqcow (libqcow 20201213) reading an image written by qemu.
# read: reader libqcow: whole disk at the end: at guest offset 5120 expected op #1, read zeros
# The image is saved next to this script (image.qcow2, with its backing file if any).
# Ops that made it (qemu), for the record:
#   1: write 5120 512
# Exits 1 while the misread is present, 0 once it is gone.
set -u
here=$(cd "$(dirname "$0")" && pwd)
w=$(mktemp -d); trap 'rm -rf "$w"' EXIT; cd "$w"
bug() { echo "BUG: $*"; exit 1; }
cp "$here/image.qcow2" image.qcow2
cp "$here/backing.qcow2" .
# The image is valid: QEMU checks it clean and its reading is the reference.
qemu-img check -q -f qcow2 image.qcow2 || echo "note: qemu-img check is not clean (rc $?)"
qemu-img convert -U -f qcow2 -O raw image.qcow2 expected.raw || { echo "qemu-img convert failed"; exit 2; }
[ -x /usr/bin/python3 ] && /usr/bin/python3 -c "import pyqcow" 2>/dev/null || { echo "needs python3-libqcow (apt-get install python3-libqcow)"; exit 2; }
cat > compare.py <<'PY'
import os, sys, pyqcow
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
PY
/usr/bin/python3 compare.py image.qcow2 expected.raw || bug "libqcow misreads the image"
echo "no problem found"
exit 0
