/**
 * An L1 table held in memory (qcow2.txt "Cluster mapping"): the bytes as
 * stored, big-endian u64 entries of L1_ENTRY_SIZE bytes each. The one place
 * that knows where entry i lives; the bytes and their view cannot drift
 * apart because they are one object.
 */
import { getU64, viewOf } from './format/bytes.js';
import { L1_ENTRY_SIZE } from './format/constants.js';
import { entryOffset, isCopied, makeEntry } from './format/entries.js';
import type { BlockStorage } from './storage/types.js';

export class L1Table {
  readonly view: DataView;

  constructor(readonly bytes: Uint8Array) {
    this.view = viewOf(bytes);
  }

  static empty(): L1Table {
    return new L1Table(new Uint8Array(0));
  }

  /** Reads `entries` entries at `offset` (an empty table for 0 entries, without touching storage). */
  static read(storage: BlockStorage, offset: number, entries: number): L1Table {
    return new L1Table(entries > 0 ? storage.read(offset, entries * L1_ENTRY_SIZE) : new Uint8Array(0));
  }

  /** A table of `entries` entries holding a copy of as many of src's entries as fit (the rest zero). */
  static resizedCopy(src: Uint8Array, entries: number): L1Table {
    const bytes = new Uint8Array(entries * L1_ENTRY_SIZE);
    bytes.set(src.subarray(0, Math.min(bytes.length, src.length)));
    return new L1Table(bytes);
  }

  get entries(): number {
    return this.bytes.length / L1_ENTRY_SIZE;
  }

  get byteLength(): number {
    return this.bytes.length;
  }

  /** Byte position of entry i inside the table (add the table's host offset for the file). */
  static entryPos(i: number): number {
    return i * L1_ENTRY_SIZE;
  }

  hiAt(i: number): number {
    return this.view.getUint32(L1Table.entryPos(i));
  }

  loAt(i: number): number {
    return this.view.getUint32(L1Table.entryPos(i) + 4);
  }

  /** The whole entry as a number, for messages (bits above 2^53 may round). */
  rawAt(i: number): number {
    return getU64(this.view, L1Table.entryPos(i));
  }

  l2OffsetAt(i: number): number {
    return entryOffset(this.hiAt(i), this.loAt(i));
  }

  copiedAt(i: number): boolean {
    return isCopied(this.hiAt(i));
  }

  setHi(i: number, hi: number): void {
    this.view.setUint32(L1Table.entryPos(i), hi);
  }

  /** Points entry i at an L2 table; a nonzero offset is COPIED (the active table's own L2 tables). */
  set(i: number, l2Offset: number): void {
    const [hi, lo] = makeEntry(l2Offset, l2Offset !== 0);
    this.view.setUint32(L1Table.entryPos(i), hi);
    this.view.setUint32(L1Table.entryPos(i) + 4, lo);
  }

  /** Puts back bytes taken with entryBytes (undoing a set whose write failed). */
  restore(i: number, bytes: Uint8Array): void {
    this.bytes.set(bytes, L1Table.entryPos(i));
  }

  /** A copy of entry i's bytes, to write it alone. */
  entryBytes(i: number): Uint8Array {
    return this.bytes.slice(L1Table.entryPos(i), L1Table.entryPos(i) + L1_ENTRY_SIZE);
  }

  /** Visits every entry naming an L2 table (offset ≠ 0). */
  forEachL2(visit: (i: number, l2Offset: number) => void): void {
    for (let i = 0; i < this.entries; i++) {
      const off = this.l2OffsetAt(i);
      if (off !== 0) visit(i, off);
    }
  }
}
