/**
 * Targeted corruptions the generic generator (src/harness/mutate) does not
 * make, each aimed at one failure a previous sweep found or the brief names:
 * NUL bytes inside names QEMU reads as C strings, a zero cluster with a
 * misaligned host offset, an L2 table of seeded garbage, host offsets no
 * refcount table can cover. Deterministic: garbage comes from a fixed seed.
 */
import {
  analyzeImage,
  putEntry,
  rewriteHeaderCluster,
  withOffset,
  type ImageLayout,
  type Mutation,
} from '../../src/harness/mutate/index.js';
import { prng } from '../../src/harness/prng.js';
import {
  encodeSnapshotTable,
  OFLAG_COPIED_HI,
  OFLAG_ZERO_LO,
  SECTOR_SIZE,
  viewOf,
} from '../../src/qcow2/format/index.js';

type Edit = (m: Uint8Array, lay: ImageLayout) => void;

/** 2^54: far past any file, aligned for every cluster size, inside the 56-bit offset field. */
const HUGE = 2 ** 54;

/** A name with a NUL byte put at its middle (a one-byte name becomes the empty C string). */
function withNul(s: string): string {
  const at = Math.floor(s.length / 2);
  return `${s.slice(0, at)}\u0000${s.slice(at + 1)}`;
}

function garbageTable(m: Uint8Array, at: number, bytes: number, seed: number, aligned: number | undefined): void {
  const r = prng(seed);
  const v = viewOf(m);
  for (let p = at; p + 8 <= at + bytes; p += 8) {
    const hi = Math.floor(r() * 2 ** 32);
    const lo = Math.floor(r() * 2 ** 32);
    if (aligned === undefined) {
      v.setUint32(p, hi);
      v.setUint32(p + 4, lo);
    } else {
      // Random flags, a cluster-aligned offset below 2^40: past the alignment checks, into the rest.
      const off = Math.floor(r() * 2 ** (40 - Math.log2(aligned))) * aligned;
      const [h, l] = withOffset(hi & 0xc0000000, lo & 1, off);
      putEntry(m, p, h, l);
    }
  }
}

/** Where the strings of a snapshot entry can start at the earliest: past the fixed fields (those of an empty entry). */
function lastStringStart(id: string): number {
  const empty = { l1TableOffset: 0, l1Size: 0, id: '', name: '', dateSec: 0, dateNsec: 0, vmClockNsec: 0, vmStateSize: 0, vmStateSizeLarge: 0, diskSize: 0, icount: 0n, extraUnknown: new Uint8Array(0) };
  return encodeSnapshotTable([empty]).length - 8 + new TextEncoder().encode(id).length;
}

function targeted(lay: ImageLayout): [string, string, Edit][] {
  const out: [string, string, Edit][] = [];
  const cs = lay.clusterSize;
  const v3 = lay.header.version === 3;
  if (lay.backingName !== undefined && lay.backingName.length > 0) {
    out.push(['nul:backing-name', 'a NUL byte inside the backing file name (QEMU reads up to it)', (m) => {
      m[lay.header.backingFileOffset + Math.floor(lay.backingName!.length / 2)] = 0;
    }]);
  }
  const ext = lay.extensions;
  if (ext.backingFormat !== undefined) {
    out.push(['nul:backing-format', 'a NUL byte inside the backing format extension', (m) => {
      rewriteHeaderCluster(m, lay, { ...structuredClone(ext), backingFormat: withNul(ext.backingFormat!) });
    }]);
  }
  if (ext.dataFile !== undefined) {
    out.push(['nul:data-file-name', 'a NUL byte inside the external data file name', (m) => {
      rewriteHeaderCluster(m, lay, { ...structuredClone(ext), dataFile: withNul(ext.dataFile!) });
    }]);
  }
  if (lay.snapshots.length > 0) {
    const first = lay.snapshots[0]!;
    const name = new TextEncoder().encode(first.entry.name);
    if (name.length > 0) {
      out.push(['nul:snapshot-name', 'a NUL byte inside the first snapshot name (same table length)', (m) => {
        // The name is the entry's last string (after the id): its first match after the fixed fields.
        const at = Buffer.from(m.buffer, m.byteOffset, m.length).indexOf(name, first.entryPos + lastStringStart(first.entry.id));
        m[at + Math.floor(name.length / 2)] = 0;
      }]);
    }
  }
  const normal = lay.dataClusters.find((d) => !d.compressed);
  if (normal && v3) {
    out.push(['l2:zero-alloc-misaligned', 'a data entry made an allocated zero cluster with a host offset 512 bytes off', (m) => {
      const vv = viewOf(m);
      const p = normal.l2EntryPos;
      const [hi, lo] = withOffset(vv.getUint32(p), vv.getUint32(p + 4), normal.hostOffset + SECTOR_SIZE);
      if (lay.l2EntrySize === 16) {
        putEntry(m, p, hi, lo);
        // Extended L2: every subcluster reads as zero, none allocated.
        vv.setUint32(p + 8, 0xffffffff);
        vv.setUint32(p + 12, 0);
      } else {
        putEntry(m, p, hi, (lo | OFLAG_ZERO_LO) >>> 0);
      }
    }]);
  }
  if (normal) {
    out.push(['l2:entry-huge', `a data entry pointing at 2^54 (no refcount table can cover it)`, (m) => {
      const vv = viewOf(m);
      const [hi, lo] = withOffset(vv.getUint32(normal.l2EntryPos), vv.getUint32(normal.l2EntryPos + 4), HUGE);
      putEntry(m, normal.l2EntryPos, hi, lo);
    }]);
  }
  const l2 = lay.l2Tables[0];
  if (l2 !== undefined) {
    out.push(['l2:garbage', 'the first L2 table filled with seeded random entries', (m) => garbageTable(m, l2, cs, 0x5eed, undefined)]);
    out.push(['l2:garbage-aligned', 'the first L2 table filled with random flags and aligned offsets below 2^40', (m) => garbageTable(m, l2, cs, 0x5eed + 1, cs)]);
  }
  const l1 = lay.l1Entries.find((e) => e.hi !== 0 || e.lo !== 0);
  if (l1) {
    out.push(['l1:entry-huge', 'the first used L1 entry pointing at 2^54, COPIED set', (m) => {
      const [hi, lo] = withOffset(l1.hi, l1.lo, HUGE);
      putEntry(m, l1.pos, (hi | OFLAG_COPIED_HI) >>> 0, lo);
    }]);
  }
  const unused = lay.l1Entries.find((e) => e.hi === 0 && e.lo === 0);
  if (unused) {
    out.push(['l1:unused-entry-huge', 'an unused L1 entry pointing at 2^54, COPIED set', (m) => {
      putEntry(m, unused.pos, ...withOffset(OFLAG_COPIED_HI, 0, HUGE));
    }]);
  }
  return out;
}

/** The targeted mutations that apply to this image, named `sweep:...`-free as the generator names its own. */
export function sweepMutations(image: Uint8Array): Mutation[] {
  const img = new Uint8Array(image);
  const lay = analyzeImage(img);
  return targeted(lay).map(([name, description, edit]) => ({
    name,
    kind: name.startsWith('l1') ? 'l1' : name.startsWith('l2') ? 'l2' : 'header',
    description,
    apply: () => {
      const copy = img.slice();
      edit(copy, lay);
      return copy;
    },
  }));
}
