/**
 * Unlocking and creating LUKS1 volumes as QEMU's crypto/block-luks.c does
 * (qcrypto_block_luks_open / _load_key / _create / _store_key), over the
 * header area a qcow2 image's full disk encryption extension points to.
 */
import { createHash, pbkdf2Sync, randomBytes, randomUUID, timingSafeEqual } from 'node:crypto';
import { CorruptImageError, InvalidArgumentError } from '../errors.js';
import { afMerge, afSplit } from './afsplit.js';
import { checkHashName, cryptRange, makeSectorCipher, parseCipherSpec, type CipherSpec, type SectorCipher } from './cipher.js';
import {
  decodeLuksHeader,
  encodeLuksHeader,
  LUKS_DEFAULT_ITER_TIME_MS,
  LUKS_DIGEST_LEN,
  LUKS_HEADER_SIZE,
  LUKS_KEY_SLOT_DISABLED,
  LUKS_KEY_SLOT_ENABLED,
  LUKS_KEY_SLOT_OFFSET,
  LUKS_MIN_MASTER_KEY_ITERS,
  LUKS_MIN_SLOT_KEY_ITERS,
  LUKS_NUM_KEY_SLOTS,
  LUKS_SALT_LEN,
  LUKS_SECTOR_SIZE,
  LUKS_STRIPES,
  LUKS_VERSION,
  splitKeySectors,
  validateLuksHeader,
  type LuksHeader,
  type LuksLimits,
} from './luks-header.js';

/** The passphrase did not open any key slot. The image is not touched. */
export class WrongPassphraseError extends InvalidArgumentError {}

/** Reads `length` bytes at `offset` inside the LUKS header area. */
export type AreaReader = (offset: number, length: number) => Uint8Array;

export interface UnlockedLuks {
  header: LuksHeader;
  spec: CipherSpec;
  /** Index of the key slot the passphrase opened. */
  slot: number;
  masterKey: Uint8Array;
  cipher: SectorCipher;
}

export function passphraseBytes(p: string | Uint8Array): Buffer {
  // QEMU hands the secret to PBKDF2 as a C string (strlen): bytes after a NUL are ignored.
  const b = typeof p === 'string' ? Buffer.from(p, 'utf8') : Buffer.from(p);
  const nul = b.indexOf(0);
  return nul < 0 ? b : b.subarray(0, nul);
}

/** Reads and validates the header of an area of areaLength bytes, without any key derivation. */
export function readLuksHeader(read: AreaReader, areaLength: number, limits?: LuksLimits): { header: LuksHeader; spec: CipherSpec } {
  if (areaLength < LUKS_HEADER_SIZE) {
    throw new CorruptImageError(`encryption header area of ${areaLength} bytes cannot hold a LUKS header (${LUKS_HEADER_SIZE})`);
  }
  const header = decodeLuksHeader(read(0, LUKS_HEADER_SIZE));
  validateLuksHeader(header, areaLength, limits);
  const spec = parseCipherSpec(header.cipherName, header.cipherMode, header.keyBytes);
  checkHashName(header.hashSpec);
  return { header, spec };
}

function masterKeyDigest(h: LuksHeader, key: Uint8Array): Buffer {
  return pbkdf2Sync(key, h.mkDigestSalt, h.mkDigestIterations, LUKS_DIGEST_LEN, h.hashSpec);
}

/**
 * Tries every active slot in order, as qcrypto_block_luks_find_key does: derive
 * the slot key with PBKDF2, decrypt the key material from IV sector 0, merge
 * the stripes, and accept the key whose PBKDF2 digest matches the header's.
 */
export function unlockLuks(read: AreaReader, areaLength: number, passphrase: string | Uint8Array, limits?: LuksLimits): UnlockedLuks {
  const { header, spec } = readLuksHeader(read, areaLength, limits);
  const pass = passphraseBytes(passphrase);
  const headerBytes = read(0, LUKS_HEADER_SIZE);
  for (let i = 0; i < LUKS_NUM_KEY_SLOTS; i++) {
    const s = header.slots[i]!;
    if (s.active !== LUKS_KEY_SLOT_ENABLED) continue;
    const material = read(s.keyMaterialOffsetSector * LUKS_SECTOR_SIZE, header.keyBytes * s.stripes);
    const id = slotIdentity(pass, headerBytes, i, material);
    const key = unlockedSlots.get(id) ?? mergeSlotKey(header, spec, s, pass, material);
    if (timingSafeEqual(masterKeyDigest(header, key), header.mkDigest)) {
      remember(id, key);
      return { header, spec, slot: i, masterKey: key.slice(), cipher: makeSectorCipher(spec, key) };
    }
  }
  throw new WrongPassphraseError('Invalid password, cannot unlock any keyslot');
}

/** Derives the slot key and merges the slot's stripes: what a candidate master key costs. */
function mergeSlotKey(header: LuksHeader, spec: CipherSpec, s: LuksHeader['slots'][number], pass: Uint8Array, material: Uint8Array): Uint8Array {
  const slotKey = pbkdf2Sync(pass, s.salt, s.iterations, header.keyBytes, header.hashSpec);
  const plain = cryptRange(makeSectorCipher(spec, slotKey), false, material);
  return afMerge(header.hashSpec, plain, header.keyBytes, s.stripes);
}

/**
 * Master keys already merged in this process, by a digest of everything the
 * merge reads: passphrase, header (salts, iterations, cipher) and the slot's
 * encrypted stripes. A fuzz run opens one encrypted image dozens of times
 * (every reopen, every crash state) and each merge is a PBKDF2 plus 4,000
 * stripe hashes; the same bytes give the same key, so it is derived once. The
 * master-key digest is still checked on every unlock.
 */
const unlockedSlots = new Map<string, Uint8Array>();
const UNLOCK_CACHE_ENTRIES = 32;

function slotIdentity(pass: Uint8Array, headerBytes: Uint8Array, slot: number, material: Uint8Array): string {
  const h = createHash('sha256');
  const len = Buffer.alloc(8);
  len.writeUInt32BE(pass.length, 0);
  len.writeUInt32BE(slot, 4);
  return h.update(len).update(pass).update(headerBytes).update(material).digest('hex');
}

function remember(id: string, key: Uint8Array): void {
  unlockedSlots.delete(id);
  unlockedSlots.set(id, key.slice());
  if (unlockedSlots.size > UNLOCK_CACHE_ENTRIES) unlockedSlots.delete(unlockedSlots.keys().next().value!);
}

export interface LuksCreateOptions {
  /** encrypt.cipher-alg: aes-128, aes-192 or aes-256 (default aes-256). */
  cipherAlg?: string;
  /** encrypt.cipher-mode: xts or cbc (default xts). */
  cipherMode?: string;
  /** encrypt.ivgen-alg: plain, plain64 or essiv (default plain64). */
  ivgenAlg?: string;
  /** encrypt.ivgen-hash-alg, essiv only (default sha256 when essiv). */
  ivgenHashAlg?: string;
  /** encrypt.hash-alg (default sha256). */
  hashAlg?: string;
  /** encrypt.iter-time in ms (default 2000): iterations are measured as QEMU does. */
  iterTimeMs?: number;
  /** Explicit PBKDF2 counts instead of measuring (tests, reproducible images). */
  slotIterations?: number;
  masterKeyIterations?: number;
  masterKey?: Uint8Array;
  uuid?: string;
  random?: (n: number) => Uint8Array;
}

export interface CreatedLuks {
  header: LuksHeader;
  /** The whole header area (payload offset bytes): header, slot 0's key material, zeros elsewhere. */
  area: Uint8Array;
  masterKey: Uint8Array;
  cipher: SectorCipher;
}

function cipherFromOptions(o: LuksCreateOptions): { name: string; mode: string; keyBytes: number } {
  const alg = o.cipherAlg ?? 'aes-256';
  const m = /^aes-(128|192|256)$/.exec(alg);
  if (!m) throw new InvalidArgumentError(`encrypt.cipher-alg '${alg}' is not supported (aes-128, aes-192, aes-256)`);
  const mode = o.cipherMode ?? 'xts';
  if (mode !== 'xts' && mode !== 'cbc') throw new InvalidArgumentError(`encrypt.cipher-mode '${mode}' is not supported (xts, cbc)`);
  const ivgen = o.ivgenAlg ?? 'plain64';
  if (ivgen !== 'plain' && ivgen !== 'plain64' && ivgen !== 'essiv') {
    throw new InvalidArgumentError(`encrypt.ivgen-alg '${ivgen}' is not supported (plain, plain64, essiv)`);
  }
  // QEMU writes ":hash" whenever ivgen-hash-alg is set, and defaults it only for essiv.
  const ivHash = o.ivgenHashAlg ?? (ivgen === 'essiv' ? 'sha256' : undefined);
  const keyBytes = (Number(m[1]) / 8) * (mode === 'xts' ? 2 : 1);
  return { name: 'aes', mode: ivHash === undefined ? `${mode}-${ivgen}` : `${mode}-${ivgen}:${ivHash}`, keyBytes };
}

/**
 * PBKDF2 rounds per second for this key/salt/output size, measured the way
 * qcrypto_pbkdf2_count_iters does: CPU time of a trial that grows until it
 * takes over 500 ms. Where QEMU gives up on a 0 ms reading ("Unable to get
 * accurate CPU usage", the clock's tick resolution), this grows the trial.
 */
export function countIterationsPerSecond(hash: string, key: Uint8Array, salt: Uint8Array, outLen: number): number {
  let iterations = 1 << 15;
  for (;;) {
    const t0 = process.cpuUsage();
    pbkdf2Sync(key, salt, iterations, outLen, hash);
    const d = process.cpuUsage(t0);
    const ms = (d.user + d.system) / 1000;
    if (ms > 500) return Math.floor((iterations * 1000) / ms);
    iterations = ms < 100 ? iterations * 10 : Math.floor((iterations * 1000) / ms);
  }
}

function checkedIterations(n: number, what: string): number {
  if (!Number.isInteger(n) || n < 1 || n > 0xffffffff) throw new InvalidArgumentError(`${what} ${n} must be an integer in 1..4294967295`);
  return n;
}

/**
 * Builds a LUKS1 header area as qemu-img create -o encrypt.format=luks does:
 * slots at 4096-byte aligned areas after the header, payload offset after
 * slot 7, slot 0 holding the master key, the other slots disabled (zero salt
 * and iterations).
 */
export function createLuks(passphrase: string | Uint8Array, o: LuksCreateOptions = {}): CreatedLuks {
  // Plain Uint8Arrays throughout (not Buffers), so results compare equal to decoded ones.
  const random = (n: number): Uint8Array => Uint8Array.from((o.random ?? randomBytes)(n).subarray(0, n));
  const c = cipherFromOptions(o);
  const hashSpec = checkHashName(o.hashAlg ?? 'sha256');
  const spec = parseCipherSpec(c.name, c.mode, c.keyBytes);
  const masterKey = o.masterKey ? Uint8Array.from(o.masterKey) : random(c.keyBytes);
  if (masterKey.length !== c.keyBytes) throw new InvalidArgumentError(`master key must be ${c.keyBytes} bytes`);
  const iterTime = o.iterTimeMs ?? LUKS_DEFAULT_ITER_TIME_MS;
  if (!Number.isInteger(iterTime) || iterTime < 1) throw new InvalidArgumentError(`encrypt.iter-time ${iterTime} must be a positive integer`);
  const mkDigestSalt = random(LUKS_SALT_LEN);
  const mkDigestIterations = checkedIterations(
    o.masterKeyIterations ??
      Math.max(
        Math.floor(Math.floor((countIterationsPerSecond(hashSpec, masterKey, mkDigestSalt, LUKS_DIGEST_LEN) * iterTime) / 1000) / 8),
        LUKS_MIN_MASTER_KEY_ITERS,
      ),
    'master key iterations',
  );
  const headerSectors = LUKS_KEY_SLOT_OFFSET / LUKS_SECTOR_SIZE;
  const slotSectors = splitKeySectors(c.keyBytes, LUKS_STRIPES);
  const header: LuksHeader = {
    version: LUKS_VERSION,
    cipherName: c.name,
    cipherMode: c.mode,
    hashSpec,
    payloadOffsetSector: headerSectors + LUKS_NUM_KEY_SLOTS * slotSectors,
    keyBytes: c.keyBytes,
    mkDigest: new Uint8Array(LUKS_DIGEST_LEN),
    mkDigestSalt,
    mkDigestIterations,
    uuid: o.uuid ?? randomUUID(),
    slots: Array.from({ length: LUKS_NUM_KEY_SLOTS }, (_, i) => ({
      active: LUKS_KEY_SLOT_DISABLED,
      iterations: 0,
      salt: new Uint8Array(LUKS_SALT_LEN),
      keyMaterialOffsetSector: headerSectors + i * slotSectors,
      stripes: LUKS_STRIPES,
    })),
  };
  header.mkDigest = Uint8Array.from(masterKeyDigest(header, masterKey));
  const area = new Uint8Array(header.payloadOffsetSector * LUKS_SECTOR_SIZE);
  const pass = passphraseBytes(passphrase);
  const slot = header.slots[0]!;
  slot.salt = random(LUKS_SALT_LEN);
  slot.iterations = checkedIterations(
    o.slotIterations ??
      Math.max(Math.floor((countIterationsPerSecond(hashSpec, pass, slot.salt, c.keyBytes) * iterTime) / 1000), LUKS_MIN_SLOT_KEY_ITERS),
    'key slot iterations',
  );
  const slotKey = pbkdf2Sync(pass, slot.salt, slot.iterations, c.keyBytes, hashSpec);
  const split = afSplit(hashSpec, masterKey, slot.stripes, random);
  area.set(cryptRange(makeSectorCipher(spec, slotKey), true, split), slot.keyMaterialOffsetSector * LUKS_SECTOR_SIZE);
  slot.active = LUKS_KEY_SLOT_ENABLED;
  area.set(encodeLuksHeader(header), 0);
  return { header, area, masterKey, cipher: makeSectorCipher(spec, masterKey) };
}

/**
 * Bytes of the LUKS header area a new image with these options gets (the
 * payload offset qcrypto_block_calculate_payload_offset reports for qemu-img
 * measure): the header sector block and eight aligned key slots. Checks the
 * cipher options as creation does.
 */
export function luksPayloadBytes(o: LuksCreateOptions = {}): number {
  const c = cipherFromOptions(o);
  checkHashName(o.hashAlg ?? 'sha256');
  return LUKS_KEY_SLOT_OFFSET + LUKS_NUM_KEY_SLOTS * splitKeySectors(c.keyBytes, LUKS_STRIPES) * LUKS_SECTOR_SIZE;
}
