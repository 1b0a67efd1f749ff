/**
 * Virtual size changes (QEMU: qcow2_co_truncate). Growing enlarges the L1
 * table as needed; with a backing file that reaches into the new area, the
 * new area is zeroed so the backing data stays hidden, and the rest of the
 * old last cluster is always zeroed so that nothing from before a shrink
 * reappears. Shrinking drops every
 * cluster past the new end and the L2 tables wholly past it; the L1 table
 * keeps its size, as QEMU's does.
 */
import { assertBitmapsResizable } from './bitmap-ops.js';
import { InvalidArgumentError, LimitError, UnsupportedFeatureError } from './errors.js';
import { alignUp } from './format/bytes.js';
import { SECTOR_SIZE } from './format/constants.js';
import { dropL2Table, entryFor, resizeL1 } from './cluster-map.js';
import { resizeDataFile } from './data-file.js';
import { growDataFile } from './data-file-grow.js';
import type { ImageState } from './state.js';
import { maxVirtualSize } from './validate.js';
import { assertZeroizable, dropCluster, zeroRange } from './zero-discard.js';

export function resizeImage(img: ImageState, size: number, shrink: boolean): void {
  if (!Number.isInteger(size) || size < 0) throw new InvalidArgumentError(`invalid size ${size}`);
  if (size % SECTOR_SIZE !== 0) throw new InvalidArgumentError(`The new size must be a multiple of ${SECTOR_SIZE}`);
  if (size > maxVirtualSize(img.clusterBits, img.layout.extended)) {
    // qcow2_co_truncate's words: qcow2_grow_l1_table refuses an L1 table past QCOW_MAX_L1_SIZE with EFBIG.
    throw new LimitError('Failed to grow the L1 table: File too large');
  }
  // QEMU checks this before comparing sizes: even a same-size resize is refused.
  if (img.version < 3 && img.snapshots.length > 0) {
    throw new UnsupportedFeatureError("Can't resize a v2 image which has snapshots");
  }
  assertBitmapsResizable(img);
  const old = img.virtualSize;
  if (size === old) return;
  if (size < old) {
    if (!shrink) throw new InvalidArgumentError('Use the --shrink option to perform a shrink operation.');
    shrinkTo(img, size);
    return;
  }
  const needed = Math.ceil(size / img.bytesPerL1Entry);
  if (needed > img.l1Entries) resizeL1(img, needed);
  const backingReaches = img.backing !== null && img.backing.virtualSize > old;
  // Over a backing file the new area must hide it: explicit zeros up to the next
  // subcluster boundary, zero (sub)clusters after it (QEMU: BDRV_REQ_ZERO_WRITE),
  // which v2 and compressed clusters cannot express — then the resize is refused.
  const zeroStart = alignUp(old, img.subclusterSize);
  if (backingReaches && size > zeroStart) assertZeroizable(img, zeroStart);
  img.header.size = size;
  img.writeHeader();
  growDataFile(img, old, size);
  // The caller called beforeChange; header.size is already the new size, so the ranges below are in bounds.
  if (backingReaches) {
    zeroRange(img, old, size - old, false);
  } else {
    // The last old cluster may hold bytes past the old end (left by a shrink); the
    // new area must read as zeros. QEMU 7.2 exposes them (see corpus/qemu-stale-tail-after-regrow).
    // Only an allocated cluster can hold such bytes; an unallocated one stays so.
    const tailEnd = Math.min(size, alignUp(old, img.clusterSize));
    const last = entryFor(img, Math.floor(old / img.clusterSize));
    if (tailEnd > old && img.layout.offset(last) !== 0) zeroRange(img, old, tailEnd - old, false);
  }
  img.flush();
}

function shrinkTo(img: ImageState, size: number): void {
  const cs = img.clusterSize;
  const firstDropped = alignUp(size, cs) / cs;
  const clusters = Math.ceil(img.virtualSize / cs);
  for (let vc = firstDropped; vc < clusters; vc++) dropCluster(img, vc);
  const firstL1 = Math.ceil(size / img.bytesPerL1Entry);
  for (let i = firstL1; i < img.l1Entries; i++) dropL2Table(img, i);
  img.header.size = size;
  img.writeHeader();
  resizeDataFile(img, size);
  img.flush();
}
