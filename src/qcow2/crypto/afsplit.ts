/**
 * Anti-forensic information splitting (LUKS1 spec section 2.4; QEMU
 * crypto/afsplit.c): a key of n bytes becomes `stripes` blocks of n bytes, all
 * of which are needed to recover it, so that wiping any part of the key
 * material destroys the key.
 */
import { createHash, hash as oneShotHash, randomBytes } from 'node:crypto';
import { nativeAddon, type NativeAddon } from '../storage/native.js';

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

/** The addon call the diffusion chain runs on; without it, node:crypto one piece at a time. */
export type AfNative = Pick<Required<NativeAddon>, 'afDiffuse'>;

/** The native diffusion chain of the project's addon, or null where the addon or the call is absent. */
export function nativeAf(): AfNative | null {
  const a = nativeAddon();
  return a instanceof Error || !a.afDiffuse ? null : { afDiffuse: a.afDiffuse };
}

/**
 * d = 0, then d = H(d ^ block) for the first `count` n-byte blocks of
 * material: the loop both split and merge run (qcrypto_afsplit_encode and
 * _decode). Natively it is one call for all stripes x pieces; node:crypto
 * does each piece when the call is absent or refuses (a hash it lacks).
 */
function diffusionChain(
  hash: string,
  digestLen: number,
  material: Uint8Array,
  n: number,
  count: number,
  native: AfNative | null,
): Uint8Array {
  const d = new Uint8Array(n);
  const whole = Number.isInteger(n) && Number.isInteger(count);
  if (native && whole && native.afDiffuse(hash, digestLen, material, n, count, d) === 0) return d;
  d.fill(0); // a refusal may come after some blocks
  const scratch = Buffer.alloc(4 + digestLen);
  for (let i = 0; i < count; i++) {
    xorInto(d, material.subarray(i * n, (i + 1) * n), d);
    diffuse(hash, digestLen, d, scratch);
  }
  return d;
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
  native: AfNative | null = nativeAf(),
): Uint8Array {
  const n = key.length;
  const digestLen = hashLen(hash);
  const out = new Uint8Array(n * stripes);
  if (stripes > 1) out.set(random(n * (stripes - 1)).subarray(0, n * (stripes - 1)));
  const d = diffusionChain(hash, digestLen, out, n, stripes - 1, native);
  xorInto(out.subarray((stripes - 1) * n), key, d);
  return out;
}

/** Merges split key material back into the keyBytes-long key (`native`: null for node:crypto alone). */
export function afMerge(
  hash: string,
  material: Uint8Array,
  keyBytes: number,
  stripes: number,
  native: AfNative | null = nativeAf(),
): Uint8Array {
  const d = diffusionChain(hash, hashLen(hash), material, keyBytes, stripes - 1, native);
  const key = new Uint8Array(keyBytes);
  xorInto(key, material.subarray((stripes - 1) * keyBytes, stripes * keyBytes), d);
  return key;
}
