/**
 * Mutations of the cluster-mapping and refcount structures (qcow2.txt
 * "Cluster mapping", "Host cluster management"): L1, L2 and refcount table
 * entries pointed at other metadata, past the end or misaligned, with
 * reserved or contradictory flag bits; refcounts off by one, zero or at
 * their maximum; leaked clusters; tables placed on top of each other.
 */
import {
  alignDown,
  encodeCompressed,
  entryOffset,
  L1_RESERVED_HI,
  L1_RESERVED_LO,
  L2_ENTRY_SIZE,
  L2_EXTENDED_ENTRY_SIZE,
  L2_RESERVED_HI,
  L2_RESERVED_LO,
  MAX_HOST_OFFSET,
  maxRefcount,
  OFLAG_COMPRESSED_HI,
  OFLAG_COPIED_HI,
  OFLAG_ZERO_LO,
  REFTABLE_RESERVED_LO,
  SECTOR_SIZE,
} from '../../qcow2/format/index.js';
import { readEntry, refcountOf, setRefcountIn, type DataClusterRef, type ImageLayout } from './analyze.js';
import { putEntry, putField, U32_MAX, U64_MAX, withOffset, type MutationContext } from './common.js';
import { putHeaderField, type MutableHeaderField } from './header.js';

/** Places that entries can be pointed at, named for test titles. */
function tableTargets(ctx: MutationContext): [string, number][] {
  const { lay, eofCluster, far } = ctx;
  const h = lay.header;
  const cs = lay.clusterSize;
  const t: [string, number][] = [
    ['past-eof', eofCluster],
    ['far-past-eof', far],
    ['beyond-56-bits', MAX_HOST_OFFSET - cs],
    ['header', 0],
    ['l1', alignDown(h.l1TableOffset, cs)],
    ['reftable', h.refcountTableOffset],
  ];
  if (lay.refblocks[0]) t.push(['refblock', lay.refblocks[0]]);
  if (lay.l2Tables.length > 0) t.push(['l2', lay.l2Tables[lay.l2Tables.length - 1]]);
  if (h.nbSnapshots > 0) t.push(['snapshot-table', alignDown(h.snapshotsOffset, cs)]);
  if (cs > SECTOR_SIZE) {
    const base = lay.l2Tables[0] ?? h.l1TableOffset;
    t.push(['misaligned', alignDown(base, cs) + SECTOR_SIZE]);
  }
  return t;
}

/** The first L2 entry (both halves, for extended L2) that maps nothing. */
function findUnallocatedL2Entry(img: Uint8Array, lay: ImageLayout): number | undefined {
  for (const l2 of lay.l2Tables) {
    for (let p = l2; p < l2 + lay.clusterSize; p += lay.l2EntrySize) {
      const e = readEntry(img, p);
      if (e.hi === 0 && e.lo === 0) {
        if (lay.l2EntrySize === L2_EXTENDED_ENTRY_SIZE) {
          const b = readEntry(img, p + L2_ENTRY_SIZE);
          if (b.hi !== 0 || b.lo !== 0) continue;
        }
        return p;
      }
    }
  }
  return undefined;
}

export function l1Mutations(ctx: MutationContext): void {
  const { lay, add, firstL1, eofCluster } = ctx;
  if (firstL1) {
    for (const [label, target] of tableTargets(ctx)) {
      if (target === entryOffset(firstL1.hi, firstL1.lo)) continue;
      add('l1', `first->${label}`, `first used L1 entry pointing ${label}`, (m) => {
        const [hi, lo] = withOffset(firstL1.hi, firstL1.lo, target);
        putEntry(m, firstL1.pos, hi, lo);
      });
    }
    add('l1', 'first-reserved-lo', 'reserved low bits of an L1 entry set', (m) => putEntry(m, firstL1.pos, firstL1.hi, firstL1.lo | L1_RESERVED_LO));
    add('l1', 'first-reserved-hi', 'reserved high bits of an L1 entry set', (m) => putEntry(m, firstL1.pos, firstL1.hi | L1_RESERVED_HI, firstL1.lo));
    add('l1', 'first-copied-flipped', 'OFLAG_COPIED flipped on an L1 entry', (m) => putEntry(m, firstL1.pos, firstL1.hi ^ OFLAG_COPIED_HI, firstL1.lo));
    add('l1', 'first-compressed-flag', 'compressed flag (reserved in L1) set', (m) => putEntry(m, firstL1.pos, firstL1.hi | OFLAG_COMPRESSED_HI, firstL1.lo));
    add('l1', 'first-all-ones', 'L1 entry all ones', (m) => putEntry(m, firstL1.pos, U32_MAX, U32_MAX));
    const second = lay.l1Entries.filter((e) => entryOffset(e.hi, e.lo) !== 0)[1];
    if (second) {
      add('l1', 'two-share-l2', 'two L1 entries pointing at the same L2 table (COPIED set on both)', (m) => putEntry(m, second.pos, firstL1.hi, firstL1.lo));
    }
  }
  const unusedL1 = lay.l1Entries.find((e) => entryOffset(e.hi, e.lo) === 0);
  if (unusedL1 && firstL1) {
    add('l1', 'unused->same-l2', 'an unused L1 entry pointing at an existing L2 table', (m) => putEntry(m, unusedL1.pos, firstL1.hi, firstL1.lo));
    add('l1', 'unused->past-eof', 'an unused L1 entry pointing past the end of the file', (m) => {
      const [hi, lo] = withOffset(OFLAG_COPIED_HI, 0, eofCluster);
      putEntry(m, unusedL1.pos, hi, lo);
    });
  }
}

/** A normal data cluster's L2 entry: retargeted, reserved or contradictory bits, shared. */
function normalL2(ctx: MutationContext, normal: DataClusterRef): void {
  const { img, lay, add } = ctx;
  const cs = lay.clusterSize;
  const e = readEntry(img, normal.l2EntryPos);
  for (const [label, target] of tableTargets(ctx)) {
    if (target === normal.hostOffset) continue;
    add('l2', `normal->${label}`, `a normal L2 entry pointing ${label}`, (m) => {
      const [hi, lo] = withOffset(e.hi, e.lo, target);
      putEntry(m, e.pos, hi, lo);
    });
  }
  add('l2', 'normal->own-l2', 'a normal L2 entry pointing at its own L2 table', (m) => {
    const [hi, lo] = withOffset(e.hi, e.lo, alignDown(e.pos, cs));
    putEntry(m, e.pos, hi, lo);
  });
  add('l2', 'normal-reserved-lo', 'reserved low bits of an L2 entry set', (m) => putEntry(m, e.pos, e.hi, e.lo | L2_RESERVED_LO));
  add('l2', 'normal-reserved-hi', 'reserved high bits of an L2 entry set', (m) => putEntry(m, e.pos, e.hi | L2_RESERVED_HI, e.lo));
  add('l2', 'normal-copied-flipped', 'OFLAG_COPIED flipped on a normal L2 entry', (m) => putEntry(m, e.pos, e.hi ^ OFLAG_COPIED_HI, e.lo));
  add('l2', 'normal-zero-flag', 'zero flag set on a normal entry (reserved in v2)', (m) => putEntry(m, e.pos, e.hi, e.lo | OFLAG_ZERO_LO));
  add('l2', 'normal-made-compressed', 'compressed flag set on a normal entry', (m) => putEntry(m, e.pos, e.hi | OFLAG_COMPRESSED_HI, e.lo));
  add('l2', 'normal-all-ones', 'L2 entry all ones', (m) => putEntry(m, e.pos, U32_MAX, U32_MAX));
  const other = lay.dataClusters.find((d) => !d.compressed && d.l2EntryPos !== normal.l2EntryPos);
  if (other) {
    add('l2', 'two-share-cluster', 'two L2 entries pointing at the same data cluster, both COPIED', (m) => putEntry(m, other.l2EntryPos, e.hi, e.lo));
  }
  if (lay.l2EntrySize === L2_EXTENDED_ENTRY_SIZE) {
    const bm = e.pos + L2_ENTRY_SIZE;
    add('l2', 'extl2-alloc-and-zero', 'subcluster bitmap with a subcluster both allocated and zero', (m) => putField(m, bm, 8, U64_MAX));
    add('l2', 'extl2-zero-only', 'subcluster bitmap all zero bits on an allocated cluster', (m) => {
      putField(m, bm, 8, 0xffff_ffff_0000_0000n);
    });
  }
}

/** An L2 entry that maps nothing, made to map something impossible. */
function unallocatedL2(ctx: MutationContext, at: number): void {
  const { img, lay, add, eofCluster } = ctx;
  const h = lay.header;
  const e = readEntry(img, at);
  if (lay.l2EntrySize === L2_EXTENDED_ENTRY_SIZE) {
    add('l2', 'extl2-alloc-bits-on-unallocated', 'allocation bits set on an unallocated cluster', (m) => putField(m, at + L2_ENTRY_SIZE, 8, 0xffff_ffffn));
  }
  add('l2', 'unallocated->past-eof', 'an unallocated L2 entry pointing past the end', (m) => {
    const [hi, lo] = withOffset(OFLAG_COPIED_HI, 0, eofCluster);
    putEntry(m, e.pos, hi, lo);
  });
  add('l2', 'unallocated->header', 'an unallocated L2 entry pointing at the header (COPIED)', (m) => putEntry(m, e.pos, OFLAG_COPIED_HI, 0));
  add('l2', 'zero-alloc->l1', 'an unallocated L2 entry made zero-allocated, pointing at the L1 table', (m) => {
    const [hi, lo] = withOffset(OFLAG_COPIED_HI, OFLAG_ZERO_LO, alignDown(h.l1TableOffset, lay.clusterSize));
    putEntry(m, e.pos, hi, lo);
  });
  add('l2', 'compressed->past-eof', 'a compressed descriptor pointing past the end', (m) => {
    const [hi, lo] = encodeCompressed(eofCluster, SECTOR_SIZE, h.clusterBits);
    putEntry(m, e.pos, hi, lo);
  });
  add('l2', 'compressed->header', 'a compressed descriptor naming the header as deflate data', (m) => putEntry(m, e.pos, OFLAG_COMPRESSED_HI, 0));
  add('l2', 'compressed-all-ones', 'a compressed descriptor with every offset and size bit set', (m) => putEntry(m, e.pos, (OFLAG_COMPRESSED_HI | 0x3fffffff) >>> 0, 0));
}

/** A compressed cluster's descriptor and payload (qcow2.txt "Compressed Clusters Descriptor"). */
function compressedL2(ctx: MutationContext, compressed: DataClusterRef): void {
  const { img, lay, add } = ctx;
  const e = readEntry(img, compressed.l2EntryPos);
  add('l2', 'compressed-copied', 'OFLAG_COPIED set on a compressed entry', (m) => putEntry(m, e.pos, e.hi | OFLAG_COPIED_HI, e.lo));
  add('l2', 'compressed-offset+1', 'compressed data offset moved by one byte (bad deflate stream)', (m) => putEntry(m, e.pos, e.hi, (e.lo + 1) >>> 0));
  add('l2', 'compressed-size-max', 'compressed sector count field at its maximum', (m) => {
    // x = 62 - (cluster_bits - 8): the sector count occupies bits x..61.
    const x = 62 - (lay.header.clusterBits - 8);
    const countMask = ((2 ** (62 - x) - 1) * 2 ** (x - 32)) >>> 0;
    putEntry(m, e.pos, (e.hi | countMask) >>> 0, e.lo);
  });
  add('l2', 'compressed-data-garbage', 'the compressed payload overwritten with 0xA5', (m) => {
    const n = Math.min(compressed.compressedSize ?? SECTOR_SIZE, m.length - compressed.hostOffset);
    m.fill(0xa5, compressed.hostOffset, compressed.hostOffset + n);
  });
  add('l2', 'compressed-data-zeros', 'the compressed payload overwritten with zeros', (m) => {
    const n = Math.min(compressed.compressedSize ?? SECTOR_SIZE, m.length - compressed.hostOffset);
    m.fill(0, compressed.hostOffset, compressed.hostOffset + n);
  });
}

export function l2Mutations(ctx: MutationContext): void {
  const { img, lay, add, normal, compressed } = ctx;
  const cs = lay.clusterSize;
  if (normal) normalL2(ctx, normal);
  const unallocL2 = findUnallocatedL2Entry(img, lay);
  if (unallocL2 !== undefined) unallocatedL2(ctx, unallocL2);
  if (compressed) compressedL2(ctx, compressed);
  if (lay.l2Tables.length > 0) {
    const l2 = lay.l2Tables[0];
    add('l2', 'table-all-ones', 'an entire L2 table of 0xff', (m) => m.fill(0xff, l2, l2 + cs));
    add('l2', 'table-pattern', 'an entire L2 table of a repeating pattern', (m) => {
      for (let i = l2; i < l2 + cs; i++) m[i] = (i * 37) & 0xff;
    });
  }
}

export function reftableMutations(ctx: MutationContext): void {
  const { lay, add, normal, eofCluster } = ctx;
  const cs = lay.clusterSize;
  const rt0 = lay.reftableEntries[0];
  if (rt0) {
    for (const [label, target] of tableTargets(ctx)) {
      if (target === entryOffset(rt0.hi, rt0.lo)) continue;
      add('reftable', `first->${label}`, `first reftable entry pointing ${label}`, (m) => {
        const [hi, lo] = withOffset(rt0.hi, rt0.lo, target);
        putEntry(m, rt0.pos, hi, lo);
      });
    }
    add('reftable', 'first-zero', 'first reftable entry cleared (every refcount reads 0)', (m) => putEntry(m, rt0.pos, 0, 0));
    add('reftable', 'first-reserved', 'reserved low bits of a reftable entry set', (m) => putEntry(m, rt0.pos, rt0.hi, rt0.lo | REFTABLE_RESERVED_LO));
    add('reftable', 'first-all-ones', 'reftable entry all ones', (m) => putEntry(m, rt0.pos, U32_MAX, U32_MAX));
  }
  const rtUnused = lay.reftableEntries.find((e) => entryOffset(e.hi, e.lo) === 0);
  if (rtUnused) {
    add('reftable', 'unused->past-eof', 'an unused reftable entry pointing past the end', (m) => {
      const [hi, lo] = withOffset(0, 0, eofCluster);
      putEntry(m, rtUnused.pos, hi, lo);
    });
    if (normal) {
      add('reftable', 'unused->data', 'an unused reftable entry pointing at a data cluster', (m) => {
        const [hi, lo] = withOffset(0, 0, alignDown(normal.hostOffset, cs));
        putEntry(m, rtUnused.pos, hi, lo);
      });
    }
  }
  if (lay.refblocks.length > 0) {
    const rb = lay.refblocks[0];
    add('reftable', 'refblock-all-ones', 'the first refcount block filled with 0xff', (m) => m.fill(0xff, rb, rb + cs));
    add('reftable', 'refblock-zeros', 'the first refcount block zeroed', (m) => m.fill(0, rb, rb + cs));
  }
}

export function refcountMutations(ctx: MutationContext): void {
  const { img, lay, add, normal, compressed, eofCluster } = ctx;
  const h = lay.header;
  const rmax = Math.min(maxRefcount(h.refcountOrder), 2 ** 32);
  const clusterOf = (off: number): number => Math.floor(off / lay.clusterSize);
  const targets: [string, number][] = [['header', 0], ['l1', clusterOf(h.l1TableOffset)], ['reftable', clusterOf(h.refcountTableOffset)]];
  if (lay.refblocks[0] !== undefined) targets.push(['refblock', clusterOf(lay.refblocks[0])]);
  if (lay.l2Tables[0] !== undefined) targets.push(['l2', clusterOf(lay.l2Tables[0])]);
  if (normal) targets.push(['data', clusterOf(normal.hostOffset)]);
  if (compressed) targets.push(['compressed', clusterOf(compressed.hostOffset)]);
  if (h.nbSnapshots > 0) targets.push(['snapshot-table', clusterOf(h.snapshotsOffset)]);
  if (lay.snapshotL1s[0]) targets.push(['snapshot-l1', clusterOf(lay.snapshotL1s[0].offset)]);
  for (const [label, idx] of targets) {
    const cur = refcountOf(img, lay, idx);
    if (cur === undefined) continue;
    const values: [string, number][] = [['zero', 0], ['plus-one', cur + 1], ['max', rmax]];
    if (cur > 1) values.push(['minus-one', cur - 1]);
    for (const [vl, v] of values) {
      if (v > rmax || v === cur) continue;
      add('refcount', `${label}=${vl}`, `refcount of the ${label} cluster (${cur}) set to ${v}`, (m) => {
        setRefcountIn(m, lay, idx, v);
      });
    }
  }
  // A refcount for a cluster past the end of the file.
  const pastEof = clusterOf(eofCluster) + 2;
  if (refcountOf(img, lay, pastEof) === 0) {
    add('refcount', 'past-eof=1', 'refcount 1 for a cluster past the end of the file', (m) => {
      setRefcountIn(m, lay, pastEof, 1);
    });
  }
}

export function leakMutations(ctx: MutationContext): void {
  const { img, lay, add, normal, eofCluster } = ctx;
  const cs = lay.clusterSize;
  const first = Math.floor(eofCluster / cs);
  for (const n of [1, 3]) {
    if (refcountOf(img, lay, first + n - 1) !== 0) continue;
    add('leak', `append-${n}`, `${n} clusters appended with refcount 1 and no reference`, (m) => {
      const grown = new Uint8Array(eofCluster + n * cs);
      grown.set(m);
      grown.fill(0x5c, eofCluster);
      for (let i = 0; i < n; i++) setRefcountIn(grown, lay, first + i, 1);
      return grown;
    });
  }
  if (normal) {
    add('leak', 'unreferenced-data', 'a data cluster whose L2 entry is cleared (its refcount stays 1)', (m) => {
      putEntry(m, normal.l2EntryPos, 0, 0);
      if (lay.l2EntrySize === L2_EXTENDED_ENTRY_SIZE) putEntry(m, normal.l2EntryPos + L2_ENTRY_SIZE, 0, 0);
    });
  }
}

export function overlapMutations(ctx: MutationContext): void {
  const { lay, add, normal, firstL1 } = ctx;
  const h = lay.header;
  const cs = lay.clusterSize;
  const rb0 = lay.refblocks[0];
  const l2 = lay.l2Tables[0];
  const ovl = (name: string, description: string, f: MutableHeaderField, value: number): void => {
    add('overlap', name, description, (m) => putHeaderField(m, f, value));
  };
  ovl('l1=reftable', 'L1 table placed on the refcount table', 'l1TableOffset', h.refcountTableOffset);
  ovl('reftable=l1', 'refcount table placed on the L1 table', 'refcountTableOffset', alignDown(h.l1TableOffset, cs));
  if (rb0) ovl('l1=refblock', 'L1 table placed on a refcount block', 'l1TableOffset', rb0);
  if (l2) ovl('reftable=l2', 'refcount table placed on an L2 table', 'refcountTableOffset', l2);
  if (h.nbSnapshots > 0) {
    ovl('snapshots=l1', 'snapshot table placed on the L1 table', 'snapshotsOffset', alignDown(h.l1TableOffset, cs));
    ovl('snapshots=header', 'snapshot table placed on the header', 'snapshotsOffset', 0);
  }
  if (firstL1 && rb0) {
    add('overlap', 'l1-entry=refblock', 'an L1 entry pointing at a refcount block (refblock read as L2)', (m) => {
      const [hi, lo] = withOffset(firstL1.hi, firstL1.lo, rb0);
      putEntry(m, firstL1.pos, hi, lo);
    });
  }
  if (normal && rb0) {
    add('overlap', 'data=refblock', 'a data cluster mapped onto the refcount block', (m) => {
      const e = readEntry(m, normal.l2EntryPos);
      const [hi, lo] = withOffset(e.hi, e.lo, rb0);
      putEntry(m, normal.l2EntryPos, hi, lo);
    });
  }
  if (h.backingFileOffset && l2) {
    ovl('backing-name=l2', 'backing file name read from an L2 table', 'backingFileOffset', l2);
  }
}
