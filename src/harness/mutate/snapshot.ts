/**
 * Snapshot table mutations (qcow2.txt "Snapshots"): the first entry's L1
 * table moved, resized or retargeted, its string and extra-data lengths
 * blown up, and the table itself overwritten.
 */
import { OFLAG_COPIED_HI, SECTOR_SIZE } from '../../qcow2/format/index.js';
import { readEntry } from './analyze.js';
import { putEntry, putField, U32_MAX, U64_MAX, withOffset, type MutationContext } from './common.js';
import { snapshotEntryLayout, type FieldPos } from './record-layout.js';

export function snapshotMutations(ctx: MutationContext): void {
  const { lay, add, eofCluster, far } = ctx;
  if (lay.snapshots.length === 0) return;
  const h = lay.header;
  const sl = snapshotEntryLayout();
  const s0 = lay.snapshots[0];
  const put = (f: FieldPos, v: number | bigint) => (m: Uint8Array) => putField(m, s0.entryPos + f.offset, f.width, v);
  add('snapshot', 'l1-offset=past-eof', 'snapshot L1 table past the end of the file', put(sl.l1TableOffset, eofCluster));
  add('snapshot', 'l1-offset=misaligned', 'snapshot L1 table not cluster aligned', put(sl.l1TableOffset, s0.entry.l1TableOffset + 1));
  add('snapshot', 'l1-offset=header', 'snapshot L1 table on the header', put(sl.l1TableOffset, 0));
  add('snapshot', 'l1-offset=far', 'snapshot L1 table at 2^55', put(sl.l1TableOffset, far));
  add('snapshot', 'l1-size=u32-max', 'snapshot L1 size huge', put(sl.l1Size, U32_MAX));
  add('snapshot', 'l1-size=above-32MiB', 'snapshot L1 size above the QEMU limit', put(sl.l1Size, 0x00400001));
  add('snapshot', 'l1-size=zero', 'snapshot L1 size zero', put(sl.l1Size, 0));
  add('snapshot', 'id-size=max', 'snapshot id string length 65535', put(sl.idSize, 0xffff));
  add('snapshot', 'name-size=max', 'snapshot name length 65535', put(sl.nameSize, 0xffff));
  add('snapshot', 'extra-size=huge', 'snapshot extra data size 2^32-1', put(sl.extraSize, U32_MAX));
  add('snapshot', 'extra-size=1025', 'snapshot extra data size just above the QEMU limit', put(sl.extraSize, 1025));
  add('snapshot', 'disk-size=u64-max', 'snapshot virtual disk size all ones', put(sl.diskSize, U64_MAX));
  const snapL1 = s0.entry.l1TableOffset;
  const retarget = (target: number) => (m: Uint8Array) => {
    const e = readEntry(m, snapL1);
    const [hi, lo] = withOffset(e.hi, e.lo, target);
    putEntry(m, snapL1, hi, lo);
  };
  add('snapshot', 'l1-entry->past-eof', 'first snapshot L1 entry pointing past the end', retarget(eofCluster));
  add('snapshot', 'l1-entry->reftable', 'first snapshot L1 entry pointing at the refcount table', retarget(h.refcountTableOffset));
  add('snapshot', 'l1-entry-copied-flipped', 'OFLAG_COPIED flipped on a snapshot L1 entry (QEMU ignores it there)', (m) => {
    const e = readEntry(m, snapL1);
    putEntry(m, snapL1, e.hi ^ OFLAG_COPIED_HI, e.lo);
  });
  add('snapshot', 'table-all-ones', 'the snapshot table overwritten with 0xff', (m) => {
    m.fill(0xff, h.snapshotsOffset, Math.min(m.length, h.snapshotsOffset + SECTOR_SIZE));
  });
}
