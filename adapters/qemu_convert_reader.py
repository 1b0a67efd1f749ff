#!/usr/bin/env python3
"""QEMU's qemu-img convert as a qcow2-harness reader: the kit's honest baseline.

Each open converts the image to a raw file once; reads come from that file;
snapshots are converted on demand (`-l snapshot.id=`). A campaign with it
should find nothing: it reads what QEMU reads. Options (for tests of the
harness itself, never for a real campaign): --ignore-backing reads as if the
image had no backing file; --stale keeps serving the first image it opened;
--oversize reads right but reports a disk one sector bigger than it is.
"""
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import qcow2_harness_kit as kit  # noqa: E402


class ConvertReader(kit.Reader):
    implementation = "qemu-img convert"
    snapshots = True

    def __init__(self, ignore_backing=False, stale=False, oversize=False):
        self.ignore_backing = ignore_backing
        self.stale = stale
        self.oversize = oversize
        self.tmp = tempfile.mkdtemp(prefix="qh-convert-")
        self.raw = None
        self.path = None

    def _convert(self, path, out, snapshot=None):
        src = path
        if self.ignore_backing:
            src = 'json:{"driver":"qcow2","backing":null,"file":{"driver":"file","filename":"%s"}}' % path
        cmd = ["qemu-img", "convert", "-U", "-O", "raw"]
        if not self.ignore_backing:
            cmd += ["-f", "qcow2"]
        if snapshot is not None:
            cmd += ["-l", "snapshot.id=" + snapshot]
        r = subprocess.run(cmd + [src, out], capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError("qemu-img convert failed: " + r.stderr.strip())

    def open(self, path, backing):
        self.path = path
        if self.stale and self.raw:
            return
        self.raw = os.path.join(self.tmp, "image.raw")
        self._convert(path, self.raw)

    def read(self, offset, length):
        with open(self.raw, "rb") as f:
            f.seek(offset)
            data = f.read(length)
        return data + bytes(length - len(data))

    def size(self):
        # qemu-img convert -O raw writes exactly the virtual size.
        return os.path.getsize(self.raw) + (512 if self.oversize else 0)

    def read_snapshot(self, snapshot_id, length):
        out = os.path.join(self.tmp, "snapshot.raw")
        self._convert(self.path, out, snapshot_id)
        with open(out, "rb") as f:
            return f.read(length)

    def close(self):
        for name in os.listdir(self.tmp):
            os.remove(os.path.join(self.tmp, name))


if __name__ == "__main__":
    sys.exit(kit.serve(ConvertReader(
        ignore_backing="--ignore-backing" in sys.argv, stale="--stale" in sys.argv, oversize="--oversize" in sys.argv)))
