/**
 * Qcow2Image: the public face of the engine. Guest I/O (read, write,
 * compressed write, write-zeroes, discard) with QEMU 7.2's semantics, plus
 * snapshots, amend, resize, check and info.
 *
 * A thin facade: each method checks the request (open, in range), marks
 * the change (ImageState.beforeChange) and calls one engine module. The
 * state lives in ImageState (state.ts); nothing in the engine imports this
 * file. docs/DESIGN.md describes the layout and the write ordering.
 */
import { type AmendOptions, amendImage } from './amend.js';
import { applyBitmapOp, bitmapView, type BitmapOp, type BitmapView } from './bitmap-ops.js';
import { bitmapsNeedStore, storeBitmaps } from './bitmaps.js';
import { checkImage } from './check.js';
import { entryFor } from './cluster-map.js';
import { InvalidArgumentError, SnapshotError, UnsupportedFeatureError } from './errors.js';
import { CRYPT_NONE } from './format/constants.js';
import { refuseSnapshotWithDataFile } from './data-file.js';
import { blockStatus, readGuest, type BlockStatus } from './guest-read.js';
import { writeCompressedGuest, writeGuest } from './guest-write.js';
import { hostRun, metadataPreallocated, type HostRun } from './host-status.js';
import { imageInfo } from './info.js';
import type { L2Entry } from './l2.js';
import { createState, openState } from './open.js';
import type { Refcounts } from './refcount.js';
import { resizeImage } from './resize.js';
import { applySnapshot, createSnapshot, deleteSnapshot } from './snapshot.js';
import { snapshotInfos } from './snapshot-table-io.js';
import type { ImageState } from './state.js';
import type { BlockStorage } from './storage/types.js';
import type { CheckResult, CreateOptions, GuestDevice, ImageInfo, OpenOptions, RepairMode, SnapshotInfo } from './types.js';
import { discardRange, zeroRange } from './zero-discard.js';

export type { BlockStatus } from './guest-read.js';
export type { HostRun } from './host-status.js';

export interface ImageLayer {
  backing: GuestDevice | null;
  dataStorage: BlockStorage;
  encrypted: boolean;
  /** qcow2_detect_metadata_preallocation: block status asks the file about data clusters (BDRV_BLOCK_RECURSE). */
  metadataPreallocated: boolean;
}
export type { BitmapOp, BitmapView } from './bitmap-ops.js';

export class Qcow2Image implements GuestDevice {
  private constructor(private readonly s: ImageState) {}

  static open(storage: BlockStorage, opts: OpenOptions = {}): Qcow2Image {
    return new Qcow2Image(openState(storage, opts));
  }

  static create(storage: BlockStorage, opts: CreateOptions, open: OpenOptions = {}): Qcow2Image {
    return new Qcow2Image(createState(storage, opts, open));
  }

  // ---------------------------------------------------------------- geometry

  get virtualSize(): number {
    return this.s.virtualSize;
  }

  get version(): 2 | 3 {
    return this.s.version;
  }

  get clusterSize(): number {
    return this.s.clusterSize;
  }

  /** The refcount structure, for tests that look at limits (read it, do not change it). */
  get refcounts(): Refcounts {
    return this.s.refcounts;
  }

  /** The L2 entry of a guest cluster, without allocating (tests and tools inspect the mapping). */
  entryFor(guestCluster: number): L2Entry {
    return entryFor(this.s, guestCluster);
  }

  // ---------------------------------------------------------------- guest I/O

  read(offset: number, length: number): Uint8Array {
    const out = new Uint8Array(length);
    this.readInto(offset, out);
    return out;
  }

  readInto(offset: number, dst: Uint8Array): void {
    this.checkRequest(offset, dst.length);
    readGuest(this.s, offset, dst);
  }

  blockStatus(offset: number, length: number): BlockStatus {
    this.checkRequest(offset, length);
    return blockStatus(this.s, offset, length);
  }

  /** Where [offset, offset+length) lives on the host, run by run, as QEMU's block status sees it (host-status.ts). */
  hostRun(offset: number, length: number): HostRun {
    this.checkRequest(offset, length);
    return hostRun(this.s, offset, length);
  }

  /** What QEMU's block layer knows of this layer beside its runs: the backing device, the file data clusters live in. */
  layer(): ImageLayer {
    this.assertOpen();
    const encrypted = this.s.header.cryptMethod !== CRYPT_NONE;
    return { backing: this.s.backing, dataStorage: this.s.data, encrypted, metadataPreallocated: metadataPreallocated(this.s) };
  }

  write(offset: number, data: Uint8Array): void {
    this.checkRequest(offset, data.length);
    this.s.beforeChange();
    this.s.bitmaps?.markDirty(offset, data.length);
    writeGuest(this.s, offset, data);
  }

  writeCompressed(offset: number, data: Uint8Array): void {
    this.checkRequest(offset, data.length);
    this.s.assertWritable();
    this.s.bitmaps?.markDirty(offset, data.length);
    writeCompressedGuest(this.s, offset, data);
  }

  /** write-zeroes (unmap: let zeroed clusters be deallocated, as qemu-io write -z -u). */
  writeZeroes(offset: number, length: number, opts: { unmap?: boolean } = {}): void {
    this.checkRequest(offset, length);
    if (length === 0) return;
    this.s.beforeChange();
    this.s.bitmaps?.markDirty(offset, length);
    zeroRange(this.s, offset, length, opts.unmap ?? false);
  }

  discard(offset: number, length: number): void {
    this.checkRequest(offset, length);
    if (length === 0) return;
    this.s.beforeChange();
    this.s.bitmaps?.markDirty(offset, length);
    discardRange(this.s, offset, length);
  }

  /** The guest's flush: what it wrote is durable (ImageState.flushGuest: what lazy refcounts leave out). */
  flush(): void {
    this.s.flushGuest();
  }

  /** Stores the persistent bitmaps first, as QEMU does on close (qcow2_inactivate); the state closes even if that fails. */
  close(): void {
    try {
      if (!this.s.closed && bitmapsNeedStore(this.s)) storeBitmaps(this.s);
    } finally {
      this.s.close();
    }
  }

  // ---------------------------------------------------------------- metadata operations

  info(): ImageInfo {
    return imageInfo(this.s);
  }

  listSnapshots(): SnapshotInfo[] {
    return snapshotInfos(this.s.snapshots);
  }

  createSnapshot(name: string): void {
    // qcow2_snapshot_create: -ENOTSUP with an external data file.
    refuseSnapshotWithDataFile(this.s);
    this.s.beforeChange();
    createSnapshot(this.s, name);
  }

  applySnapshot(nameOrId: string): void {
    this.s.beforeChange();
    // bdrv_snapshot_goto refuses while any dirty bitmap exists, before it looks for the snapshot.
    if (this.s.bitmaps?.list.length) throw new SnapshotError('Device has active dirty bitmaps');
    applySnapshot(this.s, nameOrId);
  }

  deleteSnapshot(nameOrId: string): void {
    this.s.beforeChange();
    deleteSnapshot(this.s, nameOrId);
  }

  amend(o: AmendOptions): void {
    this.s.assertWritable();
    amendImage(this.s, o);
  }

  resize(size: number, o: { shrink?: boolean } = {}): void {
    this.s.beforeChange();
    resizeImage(this.s, size, o.shrink ?? false);
    this.s.bitmaps?.resize(this.s.virtualSize);
  }

  // ---------------------------------------------------------------- persistent dirty bitmaps

  /** The persistent bitmaps with their dirty ranges (what qemu-nbd -B would export). */
  bitmaps(): BitmapView[] {
    this.assertOpen();
    return (this.s.bitmaps?.list ?? []).map((b) => bitmapView(this.s, b));
  }

  /** One `qemu-img bitmap` operation; stored on close. */
  bitmap(op: BitmapOp): void {
    this.assertOpen();
    applyBitmapOp(this.s, op);
  }

  check(repair: RepairMode = 'none'): CheckResult {
    // check reads metadata only: an encrypted image needs no passphrase (QEMU opens it with NO_IO).
    this.assertOpen(false);
    return checkImage(this.s, repair);
  }

  // ---------------------------------------------------------------- request checks

  /** Guest I/O needs an open image this engine can read, and a request inside the virtual disk. */
  private checkRequest(offset: number, length: number): void {
    this.assertOpen();
    if (!Number.isInteger(offset) || !Number.isInteger(length) || offset < 0 || length < 0) {
      throw new InvalidArgumentError(`invalid request: offset ${offset}, length ${length}`);
    }
    if (offset + length > this.virtualSize) {
      throw new InvalidArgumentError(`request [${offset}, ${offset + length}) is past the end of the ${this.virtualSize}-byte image`);
    }
  }

  private assertOpen(data = true): void {
    if (this.s.closed) throw new InvalidArgumentError('image is closed');
    if (data && this.s.header.cryptMethod !== CRYPT_NONE && !this.s.crypto) {
      throw new UnsupportedFeatureError("encrypted image opened without a passphrase: Parameter 'encrypt.key-secret' is required for cipher");
    }
    if (data && this.s.hasDataFile && !this.s.dataStorage) {
      throw new InvalidArgumentError("'data-file' is required for this image (it was opened without its data file)");
    }
  }
}
