#!/usr/bin/python3
"""libqcow (Debian python3-libqcow, module pyqcow) as a qcow2-harness reader.

Run with the system Python (/usr/bin/python3), the one Debian's binding is
built for. libqcow reads qcow2 v2 and v3; what it declines it declines at
open, and the adapter names the feature from the image header so the harness
counts the refusal against it (qcow2.txt "Header": incompatible_features at
byte 72 of a version 3 header). It has no snapshot API and takes only qcow
images as parents, so a raw backing file is declined by name too.
"""
import os
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import qcow2_harness_kit as kit  # noqa: E402

import pyqcow  # noqa: E402

# qcow2.txt "Header", incompatible feature bits, by the name the harness counts refusals under.
INCOMPATIBLE = {0: "dirty", 1: "corrupt", 2: "data_file", 3: "compression_type=zstd", 4: "extended_l2"}


def header_features(path):
    """Incompatible features the header sets (empty for a version 2 image)."""
    with open(path, "rb") as f:
        head = f.read(80)
    if len(head) < 80 or struct.unpack(">I", head[4:8])[0] < 3:
        return []
    bits = struct.unpack(">Q", head[72:80])[0]
    return [name for bit, name in INCOMPATIBLE.items() if bits & (1 << bit)] + (
        ["incompatible bits 0x%x" % (bits & ~0x1F)] if bits & ~0x1F else []
    )


class LibqcowReader(kit.Reader):
    implementation = "libqcow %s" % pyqcow.get_version()
    snapshots = False

    def __init__(self):
        self.files = []

    def open(self, path, backing):
        self.close()
        for link in backing:
            if link["format"] != "qcow2":
                raise kit.Unsupported("libqcow takes only qcow images as parents", ["backing=" + link["format"]])
        chain = [path] + [link["path"] for link in backing]
        opened = []
        for p in chain:
            f = pyqcow.file()
            try:
                f.open(p)
            except (IOError, OSError) as e:
                declined = [x for x in header_features(p) if x not in ("dirty",)]
                if declined:
                    raise kit.Unsupported(str(e).split(". ")[1] if ". " in str(e) else str(e), declined)
                # A valid image libqcow should read: a failure, not a refusal.
                raise
            opened.append(f)
        for child, parent in zip(opened, opened[1:]):
            child.set_parent(parent)
        self.files = opened

    def read(self, offset, length):
        return self.files[0].read_buffer_at_offset(length, offset)

    def size(self):
        return self.files[0].get_media_size()

    def close(self):
        for f in self.files:
            try:
                f.close()
            except (IOError, OSError):
                pass
        self.files = []


if __name__ == "__main__":
    sys.exit(kit.serve(LibqcowReader()))
