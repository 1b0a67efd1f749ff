/**
 * One guest-visible disk state: the active layer or a snapshot's frozen copy.
 *
 * Content is kept as a sparse map from 512-byte sector index to a *stamp*
 * (the number of the op that wrote it; the bytes are derived from the stamp
 * and the sector, see src/harness/data.ts). Storing stamps instead of bytes
 * keeps snapshots cheap to copy and makes every comparison exact.
 *
 *   map has s -> stamp > 0   sector holds that op's data
 *   map has s -> 0           sector reads zeros (explicitly, even over a backing file)
 *   map lacks s              sector reads the backing file if s < backingEnd, else zeros
 *   undefinedSectors has s   any content is acceptable (see DiskModel.resize)
 */
export const SECTOR = 512;
export const ZERO = 0;
/** stampAt() result for a sector whose content the model does not prescribe. */
export const ANY = -1;

export class Layer {
  constructor(
    /** Virtual size in bytes (a multiple of SECTOR). */
    public size: number,
    public sectors: Map<number, number> = new Map(),
    /** First sector past which the backing file never shows through (0 = no backing). */
    public backingEnd = 0,
    /** Clusters that may be allocated in the image; clusters not listed are known unallocated. */
    public maybeAllocated: Set<number> = new Set(),
    /** True once we cannot tell which clusters are allocated (every cluster "maybe"). */
    public allocUnknown = false,
    /** Sectors whose content is unspecified until next written. */
    public undefinedSectors: Set<number> = new Set(),
  ) {}

  clone(): Layer {
    return new Layer(
      this.size,
      new Map(this.sectors),
      this.backingEnd,
      new Set(this.maybeAllocated),
      this.allocUnknown,
      new Set(this.undefinedSectors),
    );
  }

  get sectorCount(): number {
    return this.size / SECTOR;
  }

  setStamp(sector: number, stamp: number): void {
    this.sectors.set(sector, stamp);
    if (this.undefinedSectors.size) this.undefinedSectors.delete(sector);
  }

  /** Makes a sector read zeros; only sectors the backing file could show through need an entry. */
  setZero(sector: number): void {
    if (sector < this.backingEnd) this.sectors.set(sector, ZERO);
    else this.sectors.delete(sector);
    if (this.undefinedSectors.size) this.undefinedSectors.delete(sector);
  }

  /** Drops everything at or past `sizeBytes` (shrink). */
  truncate(sizeBytes: number): void {
    const end = sizeBytes / SECTOR;
    for (const s of this.sectors.keys()) if (s >= end) this.sectors.delete(s);
    for (const s of this.undefinedSectors) if (s >= end) this.undefinedSectors.delete(s);
    this.backingEnd = Math.min(this.backingEnd, end);
    this.size = sizeBytes;
  }
}
