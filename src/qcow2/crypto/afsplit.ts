/**
 * Anti-forensic information splitting (LUKS1 spec section 2.4; QEMU
 * crypto/afsplit.c): a key of n bytes becomes `stripes` blocks of n bytes, all
 * of which are needed to recover it, so that wiping any part of the key
 * material destroys the key.
 */
import { createHash, hash as oneShotHash, randomBytes } from 'node:crypto';

/**
 * The diffusion function H: the block is hashed digest-sized piece by piece,
 * each piece prefixed with its big-endian u32 index; the last piece may be
 * short and keeps only as many digest bytes as it had.
 *
 * `scratch` holds the index and one piece (4 + digest length bytes), so that
 * the 4,000 calls of one split or merge allocate nothing but the digests: a
 * hash object per piece cost more than the hashing (campaign profiles showed
 * the LUKS stripes merge at 10 % of a run's CPU).
 */
function diffuse(hash: string, digestLen: number, block: Uint8Array, scratch: Buffer): void {
  let pos = 0;
  for (let i = 0; pos < block.length; i++) {
    const n = Math.min(digestLen, block.length - pos);
    scratch.writeUInt32BE(i >>> 0, 0);
    scratch.set(block.subarray(pos, pos + n), 4);
    const digest = oneShotHash(hash, scratch.subarray(0, 4 + n), 'buffer');
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

/**
 * Splits key into key.length x stripes bytes; `random` supplies the first
 * stripes-1 blocks, drawn in one call.
 */
export function afSplit(
  hash: string,
  key: Uint8Array,
  stripes: number,
  random: (n: number) => Uint8Array = (n) => randomBytes(n),
): Uint8Array {
  const n = key.length;
  const digestLen = hashLen(hash);
  const scratch = Buffer.alloc(4 + digestLen);
  const out = new Uint8Array(n * stripes);
  if (stripes > 1) out.set(random(n * (stripes - 1)).subarray(0, n * (stripes - 1)));
  const d = new Uint8Array(n);
  for (let i = 0; i < stripes - 1; i++) {
    xorInto(d, out.subarray(i * n, (i + 1) * n), d);
    diffuse(hash, digestLen, d, scratch);
  }
  xorInto(out.subarray((stripes - 1) * n), key, d);
  return out;
}

/** Merges split key material back into the keyBytes-long key. */
export function afMerge(hash: string, material: Uint8Array, keyBytes: number, stripes: number): Uint8Array {
  const digestLen = hashLen(hash);
  const scratch = Buffer.alloc(4 + digestLen);
  const d = new Uint8Array(keyBytes);
  for (let i = 0; i < stripes - 1; i++) {
    xorInto(d, material.subarray(i * keyBytes, (i + 1) * keyBytes), d);
    diffuse(hash, digestLen, d, scratch);
  }
  const key = new Uint8Array(keyBytes);
  xorInto(key, material.subarray((stripes - 1) * keyBytes, stripes * keyBytes), d);
  return key;
}
