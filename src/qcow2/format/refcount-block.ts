/**
 * Refcount block entries of width 1 << order bits (qcow2.txt "Host cluster
 * management"). Sub-byte widths pack from the least significant bit of each
 * byte, as QEMU does; wider ones are big-endian.
 */

export function refcountEntriesPerBlock(clusterBits: number, order: number): number {
  return 2 ** (clusterBits + 3 - order);
}

export function maxRefcount(order: number): number {
  return order >= 6 ? Number.MAX_SAFE_INTEGER : 2 ** (1 << order) - 1;
}

export function getRefcount(block: Uint8Array, view: DataView, index: number, order: number): number {
  switch (order) {
    case 0:
      return (block[index >>> 3] >>> (index & 7)) & 1;
    case 1:
      return (block[index >>> 2] >>> ((index & 3) * 2)) & 3;
    case 2:
      return (block[index >>> 1] >>> ((index & 1) * 4)) & 15;
    case 3:
      return block[index];
    case 4:
      return view.getUint16(index * 2);
    case 5:
      return view.getUint32(index * 4);
    case 6: {
      // Refcounts beyond 2^53 cannot be real; report them saturated so checks flag them.
      const hi = view.getUint32(index * 8);
      const lo = view.getUint32(index * 8 + 4);
      return hi >= 2 ** 21 ? Number.MAX_SAFE_INTEGER : hi * 2 ** 32 + lo;
    }
    default:
      throw new RangeError(`refcount order ${order}`);
  }
}

/**
 * getRefcount for entries [0, count) of a block into out[at..]: the width is decided once, not per entry
 * (check reads every refcount of the image this way).
 */
export function getRefcounts(block: Uint8Array, view: DataView, order: number, count: number, out: Float64Array, at: number): void {
  switch (order) {
    case 3:
      for (let i = 0; i < count; i++) out[at + i] = block[i]!;
      return;
    case 4:
      for (let i = 0; i < count; i++) out[at + i] = view.getUint16(i * 2);
      return;
    case 5:
      for (let i = 0; i < count; i++) out[at + i] = view.getUint32(i * 4);
      return;
    default:
      for (let i = 0; i < count; i++) out[at + i] = getRefcount(block, view, i, order);
  }
}

export function setRefcount(block: Uint8Array, view: DataView, index: number, order: number, value: number): void {
  switch (order) {
    case 0: {
      const b = index >>> 3;
      const s = index & 7;
      block[b] = (block[b] & ~(1 << s)) | ((value & 1) << s);
      return;
    }
    case 1: {
      const b = index >>> 2;
      const s = (index & 3) * 2;
      block[b] = (block[b] & ~(3 << s)) | ((value & 3) << s);
      return;
    }
    case 2: {
      const b = index >>> 1;
      const s = (index & 1) * 4;
      block[b] = (block[b] & ~(15 << s)) | ((value & 15) << s);
      return;
    }
    case 3:
      block[index] = value;
      return;
    case 4:
      view.setUint16(index * 2, value);
      return;
    case 5:
      view.setUint32(index * 4, value);
      return;
    case 6:
      view.setUint32(index * 8, Math.floor(value / 2 ** 32));
      view.setUint32(index * 8 + 4, value >>> 0);
      return;
    default:
      throw new RangeError(`refcount order ${order}`);
  }
}
