/**
 * 64-bit helpers over DataView. qcow2 fields are big-endian u64; host offsets
 * fit in 56 bits, so a plain number carries them once validated.
 */

/** Reads a u64 as a number; values above 2^53 lose precision (callers validate ranges). */
export function getU64(view: DataView, pos: number): number {
  return view.getUint32(pos) * 2 ** 32 + view.getUint32(pos + 4);
}

export function setU64(view: DataView, pos: number, value: number): void {
  const hi = Math.floor(value / 2 ** 32);
  view.setUint32(pos, hi >>> 0);
  view.setUint32(pos + 4, value >>> 0);
}

export function getBig64(view: DataView, pos: number): bigint {
  return view.getBigUint64(pos);
}

export function setBig64(view: DataView, pos: number, value: bigint): void {
  view.setBigUint64(pos, value);
}

export function viewOf(buf: Uint8Array): DataView {
  return new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
}

export function alignUp(n: number, a: number): number {
  return Math.ceil(n / a) * a;
}

export function alignDown(n: number, a: number): number {
  return Math.floor(n / a) * a;
}

export function isAligned(n: number, a: number): boolean {
  return n % a === 0;
}

const utf8 = new TextDecoder('utf-8', { fatal: false });
const utf8e = new TextEncoder();

export function decodeString(buf: Uint8Array): string {
  return utf8.decode(buf);
}

/**
 * A name QEMU reads into a NUL-terminated C string (the backing file name,
 * the backing format and data file extensions, snapshot ids and names,
 * bitmap names: qcow2_do_open, qcow2_read_extensions, qcow2_read_snapshots,
 * bitmap_list_load's g_strndup): what follows a NUL byte is not part of it.
 */
export function decodeCString(buf: Uint8Array): string {
  const nul = buf.indexOf(0);
  return utf8.decode(nul >= 0 ? buf.subarray(0, nul) : buf);
}

export function encodeString(s: string): Uint8Array {
  return utf8e.encode(s);
}

/** True when every byte is zero; fast path over 32-bit words when aligned. */
export function isAllZero(buf: Uint8Array): boolean {
  const n = buf.length;
  let i = 0;
  if ((buf.byteOffset & 3) === 0) {
    const words = new Uint32Array(buf.buffer, buf.byteOffset, n >>> 2);
    for (let w = 0; w < words.length; w++) if (words[w] !== 0) return false;
    i = words.length << 2;
  }
  for (; i < n; i++) if (buf[i] !== 0) return false;
  return true;
}
