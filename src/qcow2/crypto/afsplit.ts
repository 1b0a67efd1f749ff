/**
 * Anti-forensic information splitting (LUKS1 spec section 2.4; QEMU
 * crypto/afsplit.c): a key of n bytes becomes `stripes` blocks of n bytes, all
 * of which are needed to recover it, so that wiping any part of the key
 * material destroys the key.
 */
import { createHash, randomBytes } from 'node:crypto';

/**
 * The diffusion function H: the block is hashed digest-sized piece by piece,
 * each piece prefixed with its big-endian u32 index; the last piece may be
 * short and keeps only as many digest bytes as it had.
 */
function diffuse(hash: string, block: Uint8Array): void {
  const index = Buffer.alloc(4);
  let pos = 0;
  for (let i = 0; pos < block.length; i++) {
    const h = createHash(hash);
    index.writeUInt32BE(i >>> 0, 0);
    h.update(index);
    const digest = h.update(block.subarray(pos, pos + Math.min(block.length - pos, hashLen(hash)))).digest();
    const n = Math.min(digest.length, block.length - pos);
    block.set(digest.subarray(0, n), pos);
    pos += n;
  }
}

const digestLengths = new Map<string, number>();
function hashLen(hash: string): number {
  let n = digestLengths.get(hash);
  if (n === undefined) {
    n = createHash(hash).digest().length;
    digestLengths.set(hash, n);
  }
  return n;
}

function xorInto(dst: Uint8Array, a: Uint8Array, b: Uint8Array): void {
  for (let i = 0; i < dst.length; i++) dst[i] = a[i]! ^ b[i]!;
}

/** Splits key into key.length x stripes bytes; `random` supplies the first stripes-1 blocks. */
export function afSplit(
  hash: string,
  key: Uint8Array,
  stripes: number,
  random: (n: number) => Uint8Array = (n) => randomBytes(n),
): Uint8Array {
  const n = key.length;
  const out = new Uint8Array(n * stripes);
  const d = new Uint8Array(n);
  for (let i = 0; i < stripes - 1; i++) {
    const s = out.subarray(i * n, (i + 1) * n);
    s.set(random(n).subarray(0, n));
    xorInto(d, s, d);
    diffuse(hash, d);
  }
  xorInto(out.subarray((stripes - 1) * n), key, d);
  return out;
}

/** Merges split key material back into the keyBytes-long key. */
export function afMerge(hash: string, material: Uint8Array, keyBytes: number, stripes: number): Uint8Array {
  const d = new Uint8Array(keyBytes);
  for (let i = 0; i < stripes - 1; i++) {
    xorInto(d, material.subarray(i * keyBytes, (i + 1) * keyBytes), d);
    diffuse(hash, d);
  }
  const key = new Uint8Array(keyBytes);
  xorInto(key, material.subarray((stripes - 1) * keyBytes, stripes * keyBytes), d);
  return key;
}
