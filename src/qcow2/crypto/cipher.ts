/**
 * Sector ciphers as QEMU's crypto layer drives them (crypto/block.c
 * qcrypto_block_cipher_{en,de}crypt_helper): data is processed in 512-byte
 * sectors and the cipher is re-keyed with a fresh IV at every sector boundary,
 * the IV coming from the sector number through an IV generator
 * (crypto/ivgen-plain.c, ivgen-plain64.c, ivgen-essiv.c).
 *
 * Only AES exists in node:crypto among QEMU's LUKS ciphers; serpent, twofish
 * and cast5 are refused with UnsupportedFeatureError, as are key sizes
 * OpenSSL lacks (aes-192-xts).
 */
import { createCipheriv, createDecipheriv, createHash, getHashes } from 'node:crypto';
import { InvalidArgumentError, UnsupportedFeatureError } from '../errors.js';
import { nativeAddon, type NativeAddon } from '../storage/native.js';

export const CRYPTO_SECTOR_SIZE = 512;
const AES_BLOCK = 16;

export type CipherMode = 'xts' | 'cbc';
export type IvGen = 'plain' | 'plain64' | 'essiv';

export interface CipherSpec {
  /** LUKS cipher name: only 'aes'. */
  name: 'aes';
  mode: CipherMode;
  ivgen: IvGen;
  /** Hash of the ESSIV generator; undefined for plain/plain64 (a given one is ignored, as dm-crypt does). */
  ivHash?: string;
  /** Master key length in bytes (twice the AES key for XTS). */
  keyBytes: number;
}

/** QEMU's QCryptoHashAlgorithm names, all of which node:crypto provides. */
const HASHES = ['md5', 'sha1', 'sha224', 'sha256', 'sha384', 'sha512', 'ripemd160'] as const;

export function checkHashName(name: string): string {
  if (!(HASHES as readonly string[]).includes(name) || !getHashes().includes(name)) {
    throw new UnsupportedFeatureError(`hash algorithm '${name}' is not supported`);
  }
  return name;
}

/**
 * Parses the LUKS cipher name and mode string "<mode>-<ivgen>[:<ivhash>]"
 * (qcrypto_block_luks_parse_header), e.g. aes + xts-plain64, aes + cbc-essiv:sha256.
 */
export function parseCipherSpec(cipherName: string, cipherMode: string, keyBytes: number): CipherSpec {
  const dash = cipherMode.indexOf('-');
  if (dash < 0) throw new UnsupportedFeatureError(`Unexpected cipher mode string format ${cipherMode}`);
  const mode = cipherMode.slice(0, dash);
  const rest = cipherMode.slice(dash + 1);
  const colon = rest.indexOf(':');
  const ivgen = colon < 0 ? rest : rest.slice(0, colon);
  const ivHash = colon < 0 ? undefined : checkHashName(rest.slice(colon + 1));
  if (cipherName !== 'aes') throw new UnsupportedFeatureError(`cipher '${cipherName}' is not supported (only aes)`);
  if (mode !== 'xts' && mode !== 'cbc') throw new UnsupportedFeatureError(`cipher mode '${mode}' is not supported (only xts, cbc)`);
  if (ivgen !== 'plain' && ivgen !== 'plain64' && ivgen !== 'essiv') {
    throw new UnsupportedFeatureError(`IV generator '${ivgen}' is not supported`);
  }
  if (ivgen === 'essiv' && ivHash === undefined) throw new UnsupportedFeatureError('Missing IV generator hash specification');
  const spec: CipherSpec = { name: 'aes', mode, ivgen, keyBytes };
  if (ivgen === 'essiv') spec.ivHash = ivHash;
  opensslName(spec); // reject key sizes early, before any key derivation
  return spec;
}

function opensslName(spec: CipherSpec): string {
  const aesBits = ((spec.mode === 'xts' ? spec.keyBytes / 2 : spec.keyBytes) * 8) | 0;
  const ok = spec.mode === 'xts' ? aesBits === 128 || aesBits === 256 : aesBits === 128 || aesBits === 192 || aesBits === 256;
  if (!ok) throw new UnsupportedFeatureError(`aes-${spec.mode} with a ${spec.keyBytes}-byte key is not supported`);
  return `aes-${aesBits}-${spec.mode}`;
}

/** Writes the little-endian sector number into a zeroed IV (plain truncates to 32 bits). */
function sectorIv(sector: number, width: 4 | 8): Buffer {
  const iv = Buffer.alloc(AES_BLOCK);
  iv.writeUInt32LE(sector % 0x1_0000_0000, 0);
  if (width === 8) iv.writeUInt32LE(Math.floor(sector / 0x1_0000_0000), 4);
  return iv;
}

export interface SectorCipher {
  readonly spec: CipherSpec;
  /** Encrypts data (a whole number of sectors) whose first sector has IV sector number firstSector. */
  encrypt(firstSector: number, data: Uint8Array): Uint8Array;
  decrypt(firstSector: number, data: Uint8Array): Uint8Array;
}

/** The addon calls the sector cipher runs on; without them it runs on node:crypto alone. */
export type SectorCipherNative = Pick<Required<NativeAddon>, 'sectorCipherNew' | 'sectorCipherRun'>;

/** The native sector cipher of the project's addon, or null where the addon or the calls are absent. */
export function nativeSectorCipher(): SectorCipherNative | null {
  const a = nativeAddon();
  if (a instanceof Error || !a.sectorCipherNew || !a.sectorCipherRun) return null;
  return { sectorCipherNew: a.sectorCipherNew, sectorCipherRun: a.sectorCipherRun };
}

const IVGEN_CODE: Record<IvGen, number> = { plain: 0, plain64: 1, essiv: 2 };

/**
 * Builds the sector cipher for a master key; the key is copied, callers may
 * wipe theirs. With `native` (the default where the addon has it; null for
 * node:crypto alone) sectors run
 * in C on one keyed context per direction; node:crypto, which needs a new
 * Cipheriv per sector IV, runs whenever the native call is absent or refuses
 * (then it raises the error OpenSSL gave, as it always did), with the same bytes.
 */
export function makeSectorCipher(spec: CipherSpec, key: Uint8Array, native: SectorCipherNative | null = nativeSectorCipher()): SectorCipher {
  if (key.length !== spec.keyBytes) throw new InvalidArgumentError(`key is ${key.length} bytes, cipher needs ${spec.keyBytes}`);
  const algo = opensslName(spec);
  const k = Buffer.from(key);
  let ivFor: (sector: number) => Buffer;
  let essivKey: Buffer | undefined;
  if (spec.ivgen === 'essiv') {
    // ESSIV: IV = E_{H(key)}(plain64 IV), with an AES of the digest's size
    // (qcrypto_block_luks_essiv_cipher: dm-crypt keys ESSIV with the whole digest).
    const salt = createHash(spec.ivHash!).update(k).digest();
    if (salt.length !== 16 && salt.length !== 24 && salt.length !== 32) {
      throw new UnsupportedFeatureError(`No AES cipher with key size ${salt.length} available`);
    }
    essivKey = salt;
    const ecb = `aes-${salt.length * 8}-ecb`;
    ivFor = (sector) => {
      const c = createCipheriv(ecb, salt, null).setAutoPadding(false);
      return Buffer.concat([c.update(sectorIv(sector, 8)), c.final()]);
    };
  } else {
    const width = spec.ivgen === 'plain' ? 4 : 8;
    ivFor = (sector) => sectorIv(sector, width);
  }
  const aesBits = (spec.mode === 'xts' ? spec.keyBytes / 2 : spec.keyBytes) * 8;
  const handle = native?.sectorCipherNew(aesBits, spec.mode === 'xts' ? 0 : 1, k, IVGEN_CODE[spec.ivgen], essivKey);
  const runJs = (enc: boolean, firstSector: number, data: Uint8Array): Uint8Array => {
    const out = new Uint8Array(data.length);
    for (let pos = 0, s = firstSector; pos < data.length; pos += CRYPTO_SECTOR_SIZE, s++) {
      const iv = ivFor(s);
      const c = (enc ? createCipheriv(algo, k, iv) : createDecipheriv(algo, k, iv)).setAutoPadding(false);
      const chunk = data.subarray(pos, pos + CRYPTO_SECTOR_SIZE);
      const a = c.update(chunk);
      const b = c.final();
      out.set(a, pos);
      out.set(b, pos + a.length);
    }
    return out;
  };
  const run = (enc: boolean, firstSector: number, data: Uint8Array): Uint8Array => {
    if (data.length % CRYPTO_SECTOR_SIZE !== 0) {
      throw new InvalidArgumentError(`encrypted I/O of ${data.length} bytes is not a multiple of ${CRYPTO_SECTOR_SIZE}`);
    }
    if (handle !== undefined && Number.isSafeInteger(firstSector) && firstSector >= 0) {
      const out = new Uint8Array(data.length);
      if (native!.sectorCipherRun(handle, enc, firstSector, data, out) === 0) return out;
    }
    return runJs(enc, firstSector, data);
  };
  return {
    spec,
    encrypt: (firstSector, data) => run(true, firstSector, data),
    decrypt: (firstSector, data) => run(false, firstSector, data),
  };
}

/**
 * Runs the sector cipher over a byte range that need not be a whole number of
 * sectors: key material (key bytes x stripes) is encrypted from sector 0 and
 * its last sector may be partial. QEMU's helper passes the tail to the cipher
 * as is, so a partial last sector only works for lengths the mode accepts
 * (XTS >= 16 bytes, CBC multiples of 16); key material always is one.
 */
export function cryptRange(cipher: SectorCipher, enc: boolean, data: Uint8Array): Uint8Array {
  const whole = data.length - (data.length % CRYPTO_SECTOR_SIZE);
  const out = new Uint8Array(data.length);
  out.set(enc ? cipher.encrypt(0, data.subarray(0, whole)) : cipher.decrypt(0, data.subarray(0, whole)), 0);
  if (whole < data.length) {
    const tail = data.subarray(whole);
    if (tail.length % AES_BLOCK !== 0) throw new InvalidArgumentError(`key material tail of ${tail.length} bytes is not whole AES blocks`);
    // Pad to a sector, run, and keep the prefix: both modes process a sector's
    // blocks so that a block's output does not depend on the blocks after it (CBC)
    // or on the sector length (XTS, when no ciphertext stealing is needed).
    const padded = new Uint8Array(CRYPTO_SECTOR_SIZE);
    padded.set(tail);
    const sector = whole / CRYPTO_SECTOR_SIZE;
    const res = enc ? cipher.encrypt(sector, padded) : cipher.decrypt(sector, padded);
    out.set(res.subarray(0, tail.length), whole);
  }
  return out;
}
