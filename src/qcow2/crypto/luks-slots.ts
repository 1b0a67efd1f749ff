/**
 * Key slot management as qemu-img amend does it for LUKS
 * (qcrypto_block_luks_amend_options: encrypt.state=active|inactive,
 * encrypt.new-secret, encrypt.old-secret, encrypt.keyslot, encrypt.iter-time).
 * Functions work on the header area in memory and return the byte ranges of
 * it that changed, so the caller writes back only those; the master key comes
 * from unlockLuks with the image's current passphrase.
 */
import { pbkdf2Sync, randomBytes } from 'node:crypto';
import { InvalidArgumentError } from '../errors.js';
import { afSplit } from './afsplit.js';
import { cryptRange, makeSectorCipher, type CipherSpec } from './cipher.js';
import { countIterationsPerSecond, passphraseBytes, unlockLuks, WrongPassphraseError } from './luks.js';
import {
  encodeLuksHeader,
  LUKS_FIELDS,
  LUKS_DEFAULT_ITER_TIME_MS,
  LUKS_HEADER_SIZE,
  LUKS_KEY_SLOT_DISABLED,
  LUKS_KEY_SLOT_ENABLED,
  LUKS_MIN_SLOT_KEY_ITERS,
  LUKS_NUM_KEY_SLOTS,
  LUKS_SALT_LEN,
  LUKS_SECTOR_SIZE,
  LUKS_SLOT_FIELDS,
  LUKS_SLOT_SIZE,
  type LuksHeader,
} from './luks-header.js';

/** A changed range of the header area: [offset, offset + length). */
export type AreaChange = { offset: number; length: number };

export interface SlotWriteOptions {
  /** encrypt.keyslot; default: the first inactive slot. */
  slot?: number;
  /** Explicit iterations instead of measuring encrypt.iter-time (tests). */
  iterations?: number;
  iterTimeMs?: number;
  /** Overwrite an active slot / erase the last one (qemu-img amend --force). */
  force?: boolean;
  random?: (n: number) => Uint8Array;
}

function rnd(o: { random?: (n: number) => Uint8Array }): (n: number) => Uint8Array {
  return (n) => Uint8Array.from((o.random ?? randomBytes)(n).subarray(0, n));
}

function checkSlotIndex(slot: number): void {
  if (!Number.isInteger(slot) || slot < 0 || slot >= LUKS_NUM_KEY_SLOTS) {
    throw new InvalidArgumentError(`Invalid keyslot ${slot} specified, must be between 0 and ${LUKS_NUM_KEY_SLOTS - 1}`);
  }
}

function keyMaterialRange(h: LuksHeader, slot: number): AreaChange {
  const s = h.slots[slot]!;
  return { offset: s.keyMaterialOffsetSector * LUKS_SECTOR_SIZE, length: h.keyBytes * s.stripes };
}

/** qcrypto_block_luks_amend_add_keyslot + _store_key: stores masterKey under passphrase; returns the slot used. */
export function addKeySlot(
  area: Uint8Array,
  h: LuksHeader,
  spec: CipherSpec,
  masterKey: Uint8Array,
  passphrase: string | Uint8Array,
  o: SlotWriteOptions = {},
): { slot: number; changes: AreaChange[] } {
  const slot = o.slot ?? h.slots.findIndex((s) => s.active !== LUKS_KEY_SLOT_ENABLED);
  if (slot < 0) throw new InvalidArgumentError("Can't add a keyslot - all keyslots are in use");
  checkSlotIndex(slot);
  const s = h.slots[slot]!;
  if (s.active === LUKS_KEY_SLOT_ENABLED && !o.force) {
    throw new InvalidArgumentError(`Refusing to overwrite active keyslot ${slot} - please erase it first`);
  }
  const range = keyMaterialRange(h, slot);
  if (range.offset + range.length > area.length) throw new InvalidArgumentError(`keyslot ${slot} key material lies outside the header area`);
  const random = rnd(o);
  const pass = passphraseBytes(passphrase);
  const salt = random(LUKS_SALT_LEN);
  const iterTime = o.iterTimeMs ?? LUKS_DEFAULT_ITER_TIME_MS;
  const iterations =
    o.iterations ?? Math.max(Math.floor((countIterationsPerSecond(h.hashSpec, pass, salt, h.keyBytes) * iterTime) / 1000), LUKS_MIN_SLOT_KEY_ITERS);
  if (!Number.isInteger(iterations) || iterations < 1 || iterations > 0xffffffff) {
    throw new InvalidArgumentError(`key slot iterations ${iterations} must be an integer in 1..4294967295`);
  }
  const slotKey = pbkdf2Sync(pass, salt, iterations, h.keyBytes, h.hashSpec);
  const split = afSplit(h.hashSpec, masterKey, s.stripes, random);
  area.set(cryptRange(makeSectorCipher(spec, slotKey), true, split), range.offset);
  h.slots[slot] = { ...s, active: LUKS_KEY_SLOT_ENABLED, iterations, salt };
  area.set(encodeLuksHeader(h), 0);
  return { slot, changes: [range, { offset: 0, length: LUKS_HEADER_SIZE }] };
}

export interface SlotEraseOptions {
  /** encrypt.keyslot: erase this slot. */
  slot?: number;
  /** encrypt.old-secret: erase every active slot this passphrase opens. */
  oldPassphrase?: string | Uint8Array;
  force?: boolean;
  random?: (n: number) => Uint8Array;
  /** Bounds for the unlock attempts with oldPassphrase. */
  maxIterations?: number;
}

/**
 * qcrypto_block_luks_amend_erase_keyslots: the key material is overwritten
 * with random bytes, then the slot is disabled with zero salt and iterations.
 * Erasing every active slot is refused without force, with QEMU's messages.
 */
export function eraseKeySlots(area: Uint8Array, h: LuksHeader, o: SlotEraseOptions): { slots: number[]; changes: AreaChange[] } {
  const active = h.slots.map((s, i) => (s.active === LUKS_KEY_SLOT_ENABLED ? i : -1)).filter((i) => i >= 0);
  let victims: number[];
  if (o.slot !== undefined) {
    const k = o.slot;
    checkSlotIndex(k);
    if (o.oldPassphrase !== undefined && !opensSlot(area, k, o.oldPassphrase, o.maxIterations)) {
      throw new InvalidArgumentError(`Given keyslot ${k} doesn't contain the given old password for erase operation`);
    }
    // QEMU's message ends with a space; kept without it.
    if (!o.force && !active.includes(k)) throw new InvalidArgumentError(`Given keyslot ${k} is already erased (inactive)`);
    if (!o.force && active.length === 1 && active[0] === k) {
      throw new InvalidArgumentError(
        `Attempt to erase the only active keyslot ${k} which will erase all the data in the image irreversibly - refusing operation`,
      );
    }
    victims = [k];
  } else if (o.oldPassphrase !== undefined) {
    victims = active.filter((i) => opensSlot(area, i, o.oldPassphrase!, o.maxIterations));
    if (victims.length === 0) throw new InvalidArgumentError('No keyslots match given (old) password for erase operation');
    if (!o.force && victims.length === active.length) {
      throw new InvalidArgumentError(
        'All the active keyslots match the (old) password that was given and erasing them will erase all the data in the image irreversibly - refusing operation',
      );
    }
  } else {
    throw new InvalidArgumentError(
      'To erase keyslot(s), either explicit keyslot index or the password currently contained in them must be given',
    );
  }
  const random = rnd(o);
  const changes: AreaChange[] = [];
  for (const i of victims) {
    const range = keyMaterialRange(h, i);
    area.set(random(range.length), range.offset);
    changes.push(range);
    h.slots[i] = { ...h.slots[i]!, active: LUKS_KEY_SLOT_DISABLED, iterations: 0, salt: new Uint8Array(LUKS_SALT_LEN) };
  }
  area.set(encodeLuksHeader(h), 0);
  changes.push({ offset: 0, length: LUKS_HEADER_SIZE });
  return { slots: victims, changes };
}

/** Whether passphrase opens slot i alone (the other slots masked out of a copy of the header). */
function opensSlot(area: Uint8Array, i: number, passphrase: string | Uint8Array, maxIterations?: number): boolean {
  const copy = area.slice(0, LUKS_HEADER_SIZE);
  const v = new DataView(copy.buffer);
  for (let j = 0; j < LUKS_NUM_KEY_SLOTS; j++) {
    if (j !== i) v.setUint32(LUKS_FIELDS.keySlots + j * LUKS_SLOT_SIZE + LUKS_SLOT_FIELDS.active, LUKS_KEY_SLOT_DISABLED);
  }
  const read = (o: number, l: number) => (o + l <= LUKS_HEADER_SIZE ? copy.slice(o, o + l) : area.slice(o, o + l));
  try {
    unlockLuks(read, area.length, passphrase, maxIterations === undefined ? undefined : { maxIterations });
    return true;
  } catch (e) {
    if (e instanceof WrongPassphraseError) return false;
    throw e;
  }
}
