/**
 * The LUKS1 partition header as qcow2 carries it (qcow2.txt "Full disk
 * encryption header pointer": the extension names a cluster-aligned area of
 * the image file that holds a LUKS1 header and its key material). Layout from
 * the LUKS1 on-disk format 1.2.1, as QEMU's crypto/block-luks.c reads it:
 * every integer big-endian, strings NUL-padded.
 *
 * Decoding only reads fields; validateLuksHeader applies QEMU's sanity checks
 * (qcrypto_block_luks_check_header) plus the bounds this engine needs so that a
 * hostile header can neither hang us (iteration counts, stripes) nor make us
 * read outside the area the extension describes.
 */
import { CorruptImageError, InvalidImageError, UnsupportedFeatureError } from '../errors.js';

export const LUKS_MAGIC = Uint8Array.from([0x4c, 0x55, 0x4b, 0x53, 0xba, 0xbe]); // "LUKS\xba\xbe"
export const LUKS_VERSION = 1;
export const LUKS_SECTOR_SIZE = 512;
export const LUKS_NUM_KEY_SLOTS = 8;
export const LUKS_STRIPES = 4000;
export const LUKS_DIGEST_LEN = 20;
export const LUKS_SALT_LEN = 32;
export const LUKS_UUID_LEN = 40;
export const LUKS_NAME_LEN = 32;
/** Key material starts here; also the alignment unit of every slot's area (QCRYPTO_BLOCK_LUKS_KEY_SLOT_OFFSET). */
export const LUKS_KEY_SLOT_OFFSET = 4096;
export const LUKS_KEY_SLOT_ENABLED = 0x00ac71f3;
export const LUKS_KEY_SLOT_DISABLED = 0x0000dead;
export const LUKS_MIN_SLOT_KEY_ITERS = 1000;
export const LUKS_MIN_MASTER_KEY_ITERS = 1000;
export const LUKS_DEFAULT_ITER_TIME_MS = 2000;

/** Field positions of the partition header (LUKS1 spec table 1). */
export const LUKS_FIELDS = {
  magic: 0,
  version: 6,
  cipherName: 8,
  cipherMode: 40,
  hashSpec: 72,
  payloadOffset: 104,
  keyBytes: 108,
  mkDigest: 112,
  mkDigestSalt: 132,
  mkDigestIterations: 164,
  uuid: 168,
  keySlots: 208,
} as const;
/** Field positions inside one key slot (LUKS1 spec table 2). */
export const LUKS_SLOT_FIELDS = { active: 0, iterations: 4, salt: 8, keyMaterialOffset: 40, stripes: 44 } as const;
export const LUKS_SLOT_SIZE = 48;
export const LUKS_HEADER_SIZE = LUKS_FIELDS.keySlots + LUKS_NUM_KEY_SLOTS * LUKS_SLOT_SIZE; // 592

/**
 * Default bounds on work a header may ask for. QEMU accepts any u32; a hostile
 * image could ask for 2^32 PBKDF2 rounds per slot (hours). 2^26 is about 8x
 * what qemu-img's default 2 s iter-time gives on a fast machine today.
 */
export const LUKS_DEFAULT_MAX_ITERATIONS = 1 << 26;
/** cryptsetup only accepts 4000; allow some room, but never gigabytes of key material. */
export const LUKS_DEFAULT_MAX_STRIPES = 1 << 16;

export interface LuksKeySlot {
  /** The raw active word: LUKS_KEY_SLOT_ENABLED or LUKS_KEY_SLOT_DISABLED in a valid header. */
  active: number;
  iterations: number;
  salt: Uint8Array;
  keyMaterialOffsetSector: number;
  stripes: number;
}

export interface LuksHeader {
  version: number;
  cipherName: string;
  cipherMode: string;
  hashSpec: string;
  payloadOffsetSector: number;
  keyBytes: number;
  mkDigest: Uint8Array;
  mkDigestSalt: Uint8Array;
  mkDigestIterations: number;
  uuid: string;
  slots: LuksKeySlot[];
}

export interface LuksLimits {
  maxIterations?: number;
  maxStripes?: number;
}

function readName(buf: Uint8Array, pos: number, len: number, what: string): string {
  const raw = buf.subarray(pos, pos + len);
  const end = raw.indexOf(0);
  if (end < 0) throw new CorruptImageError(`LUKS header ${what} is not NUL-terminated`);
  for (let i = 0; i < end; i++) {
    if (raw[i]! < 0x20 || raw[i]! > 0x7e) throw new CorruptImageError(`LUKS header ${what} holds non-printable bytes`);
  }
  return String.fromCharCode(...raw.subarray(0, end));
}

function writeName(buf: Uint8Array, pos: number, len: number, s: string, what: string): void {
  // One byte is kept for the NUL, as QEMU's create refuses names of len or more.
  if (s.length >= len || !/^[\x20-\x7e]*$/.test(s)) throw new InvalidImageError(`LUKS ${what} '${s}' does not fit the header`);
  for (let i = 0; i < s.length; i++) buf[pos + i] = s.charCodeAt(i);
}

/** Decodes the 592-byte partition header; checks only magic, version and string fields. */
export function decodeLuksHeader(buf: Uint8Array): LuksHeader {
  if (buf.length < LUKS_HEADER_SIZE) {
    throw new CorruptImageError(`LUKS header is truncated (${buf.length} of ${LUKS_HEADER_SIZE} bytes)`);
  }
  for (let i = 0; i < LUKS_MAGIC.length; i++) {
    if (buf[i] !== LUKS_MAGIC[i]) throw new CorruptImageError('Volume is not in LUKS format (bad magic)');
  }
  const v = new DataView(buf.buffer, buf.byteOffset, LUKS_HEADER_SIZE);
  const version = v.getUint16(LUKS_FIELDS.version);
  if (version !== LUKS_VERSION) throw new UnsupportedFeatureError(`LUKS version ${version} is not supported`);
  const slots: LuksKeySlot[] = [];
  for (let i = 0; i < LUKS_NUM_KEY_SLOTS; i++) {
    const p = LUKS_FIELDS.keySlots + i * LUKS_SLOT_SIZE;
    slots.push({
      active: v.getUint32(p + LUKS_SLOT_FIELDS.active),
      iterations: v.getUint32(p + LUKS_SLOT_FIELDS.iterations),
      salt: buf.slice(p + LUKS_SLOT_FIELDS.salt, p + LUKS_SLOT_FIELDS.salt + LUKS_SALT_LEN),
      keyMaterialOffsetSector: v.getUint32(p + LUKS_SLOT_FIELDS.keyMaterialOffset),
      stripes: v.getUint32(p + LUKS_SLOT_FIELDS.stripes),
    });
  }
  return {
    version,
    cipherName: readName(buf, LUKS_FIELDS.cipherName, LUKS_NAME_LEN, 'cipher name'),
    cipherMode: readName(buf, LUKS_FIELDS.cipherMode, LUKS_NAME_LEN, 'cipher mode'),
    hashSpec: readName(buf, LUKS_FIELDS.hashSpec, LUKS_NAME_LEN, 'hash spec'),
    payloadOffsetSector: v.getUint32(LUKS_FIELDS.payloadOffset),
    keyBytes: v.getUint32(LUKS_FIELDS.keyBytes),
    mkDigest: buf.slice(LUKS_FIELDS.mkDigest, LUKS_FIELDS.mkDigest + LUKS_DIGEST_LEN),
    mkDigestSalt: buf.slice(LUKS_FIELDS.mkDigestSalt, LUKS_FIELDS.mkDigestSalt + LUKS_SALT_LEN),
    mkDigestIterations: v.getUint32(LUKS_FIELDS.mkDigestIterations),
    // QEMU reads the uuid as a string for display only; tolerate any bytes up to the NUL.
    uuid: decodeUuid(buf.subarray(LUKS_FIELDS.uuid, LUKS_FIELDS.uuid + LUKS_UUID_LEN)),
    slots,
  };
}

function decodeUuid(raw: Uint8Array): string {
  const end = raw.indexOf(0);
  return Buffer.from(raw.subarray(0, end < 0 ? raw.length : end)).toString('latin1');
}

export function encodeLuksHeader(h: LuksHeader): Uint8Array {
  const buf = new Uint8Array(LUKS_HEADER_SIZE);
  const v = new DataView(buf.buffer);
  buf.set(LUKS_MAGIC, LUKS_FIELDS.magic);
  v.setUint16(LUKS_FIELDS.version, h.version);
  writeName(buf, LUKS_FIELDS.cipherName, LUKS_NAME_LEN, h.cipherName, 'cipher name');
  writeName(buf, LUKS_FIELDS.cipherMode, LUKS_NAME_LEN, h.cipherMode, 'cipher mode');
  writeName(buf, LUKS_FIELDS.hashSpec, LUKS_NAME_LEN, h.hashSpec, 'hash spec');
  v.setUint32(LUKS_FIELDS.payloadOffset, h.payloadOffsetSector);
  v.setUint32(LUKS_FIELDS.keyBytes, h.keyBytes);
  buf.set(h.mkDigest.subarray(0, LUKS_DIGEST_LEN), LUKS_FIELDS.mkDigest);
  buf.set(h.mkDigestSalt.subarray(0, LUKS_SALT_LEN), LUKS_FIELDS.mkDigestSalt);
  v.setUint32(LUKS_FIELDS.mkDigestIterations, h.mkDigestIterations);
  writeName(buf, LUKS_FIELDS.uuid, LUKS_UUID_LEN, h.uuid, 'uuid');
  h.slots.forEach((s, i) => {
    const p = LUKS_FIELDS.keySlots + i * LUKS_SLOT_SIZE;
    v.setUint32(p + LUKS_SLOT_FIELDS.active, s.active);
    v.setUint32(p + LUKS_SLOT_FIELDS.iterations, s.iterations);
    buf.set(s.salt.subarray(0, LUKS_SALT_LEN), p + LUKS_SLOT_FIELDS.salt);
    v.setUint32(p + LUKS_SLOT_FIELDS.keyMaterialOffset, s.keyMaterialOffsetSector);
    v.setUint32(p + LUKS_SLOT_FIELDS.stripes, s.stripes);
  });
  return buf;
}

/**
 * Sectors a slot's key material occupies: key bytes x stripes rounded to a
 * sector, then to the key-slot alignment (qcrypto_block_luks_splitkeylen_sectors,
 * which follows cryptsetup rather than the spec text).
 */
export function splitKeySectors(keyBytes: number, stripes: number): number {
  const sectors = Math.ceil((keyBytes * stripes) / LUKS_SECTOR_SIZE);
  const align = LUKS_KEY_SLOT_OFFSET / LUKS_SECTOR_SIZE;
  return Math.ceil(sectors / align) * align;
}

/**
 * QEMU's qcrypto_block_luks_check_header, with its messages, plus: bounded
 * iterations and stripes, and key material inside the area the qcow2
 * extension describes (QEMU's qcow2_crypto_hdr_read_func refuses reads past it).
 */
export function validateLuksHeader(h: LuksHeader, areaLength: number, limits: LuksLimits = {}): void {
  const maxIter = limits.maxIterations ?? LUKS_DEFAULT_MAX_ITERATIONS;
  const maxStripes = limits.maxStripes ?? LUKS_DEFAULT_MAX_STRIPES;
  if (h.keyBytes === 0 || h.keyBytes > 64) throw new CorruptImageError(`LUKS header key size ${h.keyBytes} bytes is invalid`);
  if (h.mkDigestIterations === 0) throw new CorruptImageError('LUKS header master key digest iterations is 0');
  if (h.mkDigestIterations > maxIter) {
    throw new CorruptImageError(
      `LUKS master key digest iterations ${h.mkDigestIterations} exceed the limit of ${maxIter} (refusing to spend unbounded time)`,
    );
  }
  const spans: [number, number][] = [];
  h.slots.forEach((s, i) => {
    if (s.stripes === 0) throw new CorruptImageError(`Keyslot ${i} is corrupted (stripes == 0)`);
    if (s.stripes > maxStripes) throw new CorruptImageError(`Keyslot ${i} stripes ${s.stripes} exceed the limit of ${maxStripes}`);
    if (s.active !== LUKS_KEY_SLOT_ENABLED && s.active !== LUKS_KEY_SLOT_DISABLED) {
      throw new CorruptImageError(`Keyslot ${i} state (active/disable) is corrupted`);
    }
    const start = s.keyMaterialOffsetSector;
    const len = splitKeySectors(h.keyBytes, s.stripes);
    if (start + len > h.payloadOffsetSector) {
      throw new CorruptImageError(`Keyslot ${i} is overlapping with the encrypted payload`);
    }
    spans.forEach(([s2, l2], j) => {
      if (start + len > s2 && s2 + l2 > start) throw new CorruptImageError(`Keyslots ${j} and ${i} are overlapping in the header`);
    });
    spans.push([start, len]);
    if (s.active !== LUKS_KEY_SLOT_ENABLED) return;
    if (start * LUKS_SECTOR_SIZE < LUKS_HEADER_SIZE) {
      throw new CorruptImageError(`Keyslot ${i} key material overlaps the LUKS partition header`);
    }
    if (start * LUKS_SECTOR_SIZE + h.keyBytes * s.stripes > areaLength) {
      throw new CorruptImageError(`Keyslot ${i} key material lies outside the encryption header area (${areaLength} bytes)`);
    }
    if (s.iterations === 0) throw new CorruptImageError(`Keyslot ${i} iterations is 0`);
    if (s.iterations > maxIter) {
      throw new CorruptImageError(
        `Keyslot ${i} iterations ${s.iterations} exceed the limit of ${maxIter} (refusing to spend unbounded time)`,
      );
    }
  });
}
