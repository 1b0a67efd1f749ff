/**
 * The reference raw-disk model: what a guest must see after each operation,
 * per DESIGN.md's guest-visible table (checked against qemu-io 7.2; where the
 * table is silent the model mirrors QEMU, see the notes on each method).
 *
 * Every mutating operation comes as a pair: expectX() says whether the
 * implementation must accept it (see Verdict), and x() applies it to the model
 * (call it only when the implementation accepted the op).
 */
import { ModelBitmaps } from './bitmaps.js';
import { ANY, Layer, SECTOR } from './layer.js';
import type { BackingModel, Compat, Expectation, ImageConfig, MetaModel, SnapshotModel } from './types.js';

const OK: Expectation = { verdict: 'ok' };
const refuse = (reason: string): Expectation => ({ verdict: 'refuse', reason });
const either = (reason: string): Expectation => ({ verdict: 'either', reason });

interface Snapshot extends SnapshotModel {
  layer: Layer;
}

export class DiskModel {
  active: Layer;
  readonly backing?: BackingModel;
  meta: MetaModel;
  /** Persistent dirty bitmaps (the harness's bitmap ops and the ops that dirty them keep it). */
  readonly bitmaps = new ModelBitmaps();
  /** The image has an external data file (fixed at creation; amend cannot add or drop one here). */
  readonly dataFile: boolean;
  /** The image is encrypted (fixed at creation). */
  readonly encrypted: boolean;
  private snaps: Snapshot[] = [];
  /** Once a compressed cluster may exist anywhere, a zstd -> v2 downgrade may be refused. */
  private compressedEver = false;
  /**
   * With lazy refcounts, an I/O error while marking the image dirty (the flush
   * before or after the header write) may leave the dirty bit on disk with the
   * driver not knowing it set it, so even a clean close keeps it (QEMU 7.2's
   * qcow2_mark_dirty does the same; the next read-write open repairs it). Set by
   * faultedIo(); the end check then takes either value of the flag.
   */
  dirtyFlagUnknown = false;

  /**
   * regrowTail 'unspecified' mirrors QEMU 7.2 (see resize()); 'zeros' holds an
   * implementation to DESIGN.md's table (grown area reads zeros, always).
   */
  constructor(
    cfg: ImageConfig,
    private readonly opts: { regrowTail?: 'zeros' | 'unspecified' } = {},
  ) {
    if (cfg.size % SECTOR !== 0) throw new Error(`model size ${cfg.size} is not a multiple of ${SECTOR}`);
    this.backing = cfg.backing;
    this.dataFile = cfg.dataFile !== undefined;
    this.encrypted = cfg.encrypted === true;
    const backingEnd = cfg.backing ? Math.min(cfg.size, cfg.backing.size) / SECTOR : 0;
    this.active = new Layer(cfg.size, new Map(), Math.ceil(backingEnd));
    // Preallocated clusters read as before (QEMU's preallocate_co leaves extended L2 subclusters
    // unallocated, so a backing file still shows through) but have host offsets: compressed writes may fail.
    // Whether the dirty bit is on at the end depends on whether the last session allocated.
    if (cfg.dirty) this.dirtyFlagUnknown = true;
    if (cfg.preallocation === 'metadata') {
      for (let c = 0; c * cfg.clusterSize < cfg.size; c++) this.active.maybeAllocated.add(c);
    }
    this.meta = {
      compat: cfg.compat,
      refcountBits: cfg.refcountBits,
      lazyRefcounts: cfg.lazyRefcounts,
      compressionType: cfg.compressionType,
      extendedL2: cfg.extendedL2,
      clusterSize: cfg.clusterSize,
    };
  }

  get size(): number {
    return this.active.size;
  }

  get snapshots(): readonly SnapshotModel[] {
    return this.snaps.map(({ id, name }) => ({ id, name }));
  }

  // ---- reads -------------------------------------------------------------

  /** Stamp of a sector of a layer: > 0 data of that op, 0 zeros, ANY (-1) unspecified. */
  stampAt(layer: Layer, sector: number): number {
    if (layer.undefinedSectors.size && layer.undefinedSectors.has(sector)) return ANY;
    const v = layer.sectors.get(sector);
    if (v !== undefined) return v;
    if (sector < layer.backingEnd && this.backing) return this.backing.sectors.get(sector) ?? 0;
    return 0;
  }

  /** A snapshot's layer, found as QEMU finds it (id first, then first matching name). */
  snapshotLayer(nameOrId: string): Layer | undefined {
    return this.findSnapshot(nameOrId)?.layer;
  }

  // ---- guest I/O ---------------------------------------------------------

  private rangeCheck(off: number, len: number): Expectation | undefined {
    if (off < 0 || len < 0 || off % SECTOR || len % SECTOR) return refuse('range not sector aligned');
    if (off + len > this.size) return refuse(`range ${off}+${len} past the end (${this.size})`);
    return undefined;
  }

  expectWrite(off: number, len: number): Expectation {
    return this.rangeCheck(off, len) ?? OK;
  }

  write(off: number, len: number, stamp: number): void {
    for (let s = off / SECTOR; s < (off + len) / SECTOR; s++) this.active.setStamp(s, stamp);
    this.markAllocated(off, len);
  }

  /**
   * Compressed writes take whole clusters: offset cluster aligned, length one
   * cluster, or the last partial cluster of an unaligned image. QEMU refuses to
   * compress over a cluster that already has a host offset (EIO), so the write
   * is certain to succeed only where the model knows the cluster unallocated.
   */
  expectWriteCompressed(off: number, len: number): Expectation {
    const bad = this.rangeCheck(off, len);
    if (bad) return bad;
    // qcow2_co_pwritev_compressed_part: -ENOTSUP with an external data file.
    if (this.dataFile) return refuse('no compressed clusters with an external data file');
    // QEMU 7.2 would store the cluster unencrypted; our engine refuses, and the harness does not ask QEMU.
    if (this.encrypted) return refuse('no compressed clusters in an encrypted image');
    const cs = this.meta.clusterSize;
    if (off % cs !== 0) return refuse('compressed write not cluster aligned');
    const wantLen = Math.min(cs, this.size - off);
    if (len !== wantLen) return refuse('compressed write must be exactly one cluster');
    if (this.active.allocUnknown || this.active.maybeAllocated.has(off / cs)) {
      return either('compressed write over a cluster that may be allocated');
    }
    return OK;
  }

  writeCompressed(off: number, len: number, stamp: number): void {
    this.write(off, len, stamp);
    this.compressedEver = true;
  }

  /** write -z, with or without unmap, at any alignment: zeros. */
  expectWriteZeroes(off: number, len: number): Expectation {
    return this.rangeCheck(off, len) ?? OK;
  }

  writeZeroes(off: number, len: number): void {
    for (let s = off / SECTOR; s < (off + len) / SECTOR; s++) this.active.setZero(s);
    // Whether QEMU keeps, allocates or frees clusters here depends on their
    // prior state and the alignment; the model does not guess.
    this.markAllocated(off, len);
  }

  expectDiscard(off: number, len: number): Expectation {
    return this.rangeCheck(off, len) ?? OK;
  }

  /**
   * Only whole clusters are discarded; the last cluster of an image whose size
   * is not cluster aligned counts as whole when the range reaches the end
   * (QEMU's block layer splits off unaligned heads and tails and the driver
   * ignores them). Extended L2 changes nothing: QEMU 7.2 discards whole
   * clusters only, never single subclusters. A discarded cluster reads zeros,
   * except on a v2 image with a backing file, where discard does nothing.
   */
  discard(off: number, len: number): void {
    if (this.meta.compat === '0.10' && this.backing) return;
    const cs = this.meta.clusterSize;
    const end = off + len;
    for (let c = Math.floor(off / cs); c * cs < end; c++) {
      const cStart = c * cs;
      const cEnd = Math.min(cStart + cs, this.size);
      if (off > cStart || end < cEnd) continue;
      for (let s = cStart / SECTOR; s < cEnd / SECTOR; s++) this.active.setZero(s);
      this.active.maybeAllocated.delete(c);
    }
  }

  /**
   * After an op that failed part-way (an injected I/O error), a sector the
   * implementation still shows with its old value gets it back from `before`
   * (the active layer as it was before the op).
   */
  restoreSector(before: Layer, sector: number): void {
    if (before.undefinedSectors.has(sector)) this.active.undefinedSectors.add(sector);
    else this.active.undefinedSectors.delete(sector);
    const v = before.sectors.get(sector);
    if (v === undefined) this.active.sectors.delete(sector);
    else this.active.sectors.set(sector, v);
  }

  /** An op ran with an injected I/O error (failed or not): see dirtyFlagUnknown. */
  faultedIo(): void {
    if (this.meta.lazyRefcounts) this.dirtyFlagUnknown = true;
  }

  /** A failed op may have allocated clusters in its range whatever the range now reads. */
  markMaybeAllocated(off: number, len: number): void {
    this.markAllocated(off, len);
  }

  private markAllocated(off: number, len: number): void {
    if (len === 0) return;
    const cs = this.meta.clusterSize;
    for (let c = Math.floor(off / cs); c * cs < off + len; c++) this.active.maybeAllocated.add(c);
  }

  // ---- snapshots ---------------------------------------------------------

  private findSnapshot(nameOrId: string): Snapshot | undefined {
    return this.snaps.find((s) => s.id === nameOrId) ?? this.snaps.find((s) => s.name === nameOrId);
  }

  /**
   * QEMU accepts duplicate snapshot names (ids stay unique). A snapshot adds one
   * reference to every cluster the active layer uses, so with narrow refcounts
   * it is refused (EINVAL) once a refcount would overflow, which depends on
   * allocation: "either" as soon as the width may not hold the new maximum.
   */
  expectSnapshotCreate(_name: string): Expectation {
    // qcow2_snapshot_create: -ENOTSUP with an external data file.
    if (this.dataFile) return refuse('no internal snapshots with an external data file');
    const bits = this.meta.refcountBits;
    if (bits < 53 && 2 ** bits - 1 < this.maxRefcount(1)) return either('a refcount may overflow the refcount width');
    return OK;
  }

  snapshotCreate(name: string): void {
    // QEMU picks the highest numeric id plus one.
    const maxId = this.snaps.reduce((m, s) => Math.max(m, Number.parseInt(s.id, 10) || 0), 0);
    this.snaps.push({ id: String(maxId + 1), name, layer: this.active.clone() });
  }

  /**
   * Applying takes the snapshot's references before dropping the active
   * layer's, so a refcount briefly holds one more: with narrow refcounts QEMU
   * may refuse (EINVAL), as for create.
   */
  expectSnapshotApply(nameOrId: string): Expectation {
    if (!this.findSnapshot(nameOrId)) return refuse(`no snapshot '${nameOrId}'`);
    const bits = this.meta.refcountBits;
    if (bits < 53 && 2 ** bits - 1 < this.maxRefcount(1)) return either('a refcount may overflow while applying');
    return OK;
  }

  /** Active := the snapshot's content and virtual size. */
  snapshotApply(nameOrId: string): void {
    const s = this.findSnapshot(nameOrId);
    if (!s) throw new Error(`model: no snapshot ${nameOrId}`);
    this.active = s.layer.clone();
  }

  /**
   * qemu-img snapshot -d looks snapshots up by name only (first match), unlike
   * -a which tries the id first; an API that also accepts ids is not wrong, so
   * deleting by id is "either".
   */
  expectSnapshotDelete(nameOrId: string): Expectation {
    if (this.snaps.some((s) => s.name === nameOrId)) return OK;
    if (this.snaps.some((s) => s.id === nameOrId)) return either('qemu-img snapshot -d finds snapshots by name only');
    return refuse(`no snapshot '${nameOrId}'`);
  }

  snapshotDelete(nameOrId: string): void {
    const s = this.snaps.find((x) => x.name === nameOrId) ?? this.snaps.find((x) => x.id === nameOrId);
    if (!s) throw new Error(`model: no snapshot ${nameOrId}`);
    this.snaps.splice(this.snaps.indexOf(s), 1);
  }

  /**
   * An upper bound on any refcount (with `extraSnapshots` more snapshots): one
   * reference from the active layer and one per snapshot, times the number of
   * compressed clusters that can share one host cluster (QEMU packs them).
   */
  private maxRefcount(extraSnapshots: number): number {
    // Compressed clusters are packed at byte granularity: a byte each is a safe bound.
    const perHost = this.compressedEver ? this.meta.clusterSize : 1;
    return (1 + this.snaps.length + extraSnapshots) * perHost;
  }

  // ---- amend -------------------------------------------------------------

  /**
   * Narrowing refcounts is refused when some refcount does not fit; widths that
   * hold maxRefcount() always fit, narrower ones depend on sharing.
   */
  expectAmendRefcountBits(bits: number): Expectation {
    if (!Number.isInteger(bits) || bits < 1 || bits > 64 || (bits & (bits - 1)) !== 0) {
      return refuse(`refcount_bits=${bits} is not a power of two in 1..64`);
    }
    if (this.meta.compat === '0.10' && bits !== 16) return refuse('compat=0.10 requires refcount_bits=16');
    if (bits < 53 && 2 ** bits - 1 < this.maxRefcount(0)) return either('refcounts may not fit the narrower width');
    return OK;
  }

  amendRefcountBits(bits: number): void {
    this.meta.refcountBits = bits;
  }

  expectAmendCompat(compat: Compat): Expectation {
    if (compat === '1.1' || this.meta.compat === '0.10') return OK;
    if (this.meta.refcountBits !== 16) return refuse('compat=0.10 requires refcount_bits=16');
    if (this.dataFile) return refuse('Cannot downgrade an image with a data file');
    // QEMU 7.2's downgrade writes plain zeros into zero clusters, which then decrypt to garbage.
    if (this.encrypted) return refuse('no downgrade of an encrypted image');
    if (this.meta.extendedL2) return refuse('v2 cannot express extended L2 entries');
    // A v2 snapshot has no virtual size of its own: every snapshot must match the image.
    if (this.snaps.some((x) => x.layer.size !== this.size)) return refuse('internal snapshots of another size prevent downgrade');
    if (this.meta.compressionType === 'zstd' && this.compressedEver) {
      return either('zstd-compressed clusters may exist');
    }
    return OK;
  }

  /** Downgrade drops lazy refcounts and zstd; zero clusters are expanded, so allocation becomes unknown. */
  amendCompat(compat: Compat): void {
    if (compat === this.meta.compat) return;
    this.meta.compat = compat;
    if (compat === '0.10') {
      this.meta.lazyRefcounts = false;
      this.meta.compressionType = 'zlib';
      this.active.allocUnknown = true;
      for (const s of this.snaps) s.layer.allocUnknown = true;
    }
  }

  expectAmendLazyRefcounts(on: boolean): Expectation {
    if (on && this.meta.compat === '0.10') return refuse('lazy refcounts need compat=1.1');
    return OK;
  }

  amendLazyRefcounts(on: boolean): void {
    this.meta.lazyRefcounts = on;
  }

  // ---- resize ------------------------------------------------------------

  /**
   * Shrinking needs --shrink; v2 images with snapshots cannot be resized. Growing
   * an image whose backing file would show through the new area past the old
   * last cluster needs zero clusters, which v2 lacks, so QEMU refuses it there.
   */
  expectResize(size: number, shrink: boolean): Expectation {
    if (size <= 0 || size % SECTOR) return refuse('size not a positive multiple of 512');
    // QEMU checks this before comparing sizes: even a same-size resize is refused.
    if (this.meta.compat === '0.10' && this.snaps.length > 0) return refuse("can't resize a v2 image with snapshots");
    if (size === this.size) return OK;
    if (size < this.size && !shrink) return refuse('shrinking needs --shrink');
    // QEMU zero-writes the head of the new area up to the next cluster boundary
    // with plain data, and the clusters past it with zero clusters, which v2 lacks.
    const zeroClustersFrom = Math.ceil(this.size / this.meta.clusterSize) * this.meta.clusterSize;
    if (this.meta.compat === '0.10' && this.backing && this.backing.size > this.size && size > zeroClustersFrom) {
      return refuse('v2 cannot zero the new area over a backing file');
    }
    // With subclusters QEMU zeroes from the next subcluster boundary, which may
    // fall inside a compressed last cluster: that part cannot be zeroed (ENOTSUP).
    if (
      size > this.size &&
      this.meta.extendedL2 &&
      this.backing &&
      this.backing.size > this.size &&
      this.size % this.meta.clusterSize !== 0 &&
      this.compressedEver
    ) {
      return either('zeroing part of a compressed cluster with extended L2');
    }
    return OK;
  }

  /**
   * Grown area reads zeros (never the backing file); a shrink drops the tail.
   *
   * One exception, observed on QEMU 7.2 and allowed by its block layer's
   * contract (truncate without BDRV_REQ_ZERO_WRITE leaves the new area
   * unspecified): growing an image whose old size is not cluster aligned
   * re-exposes whatever the old last cluster held past the old end (e.g. data
   * cut off by an earlier shrink). QEMU zero-writes that head only when a
   * backing file would otherwise show through. With regrowTail 'unspecified'
   * the model leaves those sectors open instead of demanding zeros (for QEMU;
   * corpus/qemu-stale-tail-after-regrow documents it).
   */
  resize(size: number): void {
    const cs = this.meta.clusterSize;
    const old = this.size;
    if (size < old) {
      this.active.truncate(size);
      const lastCluster = Math.ceil(size / cs);
      for (const c of this.active.maybeAllocated) if (c >= lastCluster) this.active.maybeAllocated.delete(c);
      return;
    }
    if (size === old) return;
    const backingShowsThrough = this.backing !== undefined && this.backing.size > old;
    this.active.backingEnd = Math.min(this.active.backingEnd, this.active.sectorCount);
    this.active.size = size;
    const tailEnd = Math.min(size, Math.ceil(old / cs) * cs);
    // Hiding a backing file that reaches past the old end writes explicit zeros up to the next
    // subcluster boundary, which may allocate the old last cluster (on any implementation).
    if (old % cs !== 0 && backingShowsThrough) this.active.maybeAllocated.add(Math.floor(old / cs));
    if (old % cs !== 0 && this.opts.regrowTail === 'unspecified' && !backingShowsThrough) {
      for (let s = old / SECTOR; s < tailEnd / SECTOR; s++) this.active.undefinedSectors.add(s);
    }
  }
}
