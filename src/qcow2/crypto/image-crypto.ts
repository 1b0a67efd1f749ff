/**
 * The encryption layer of a qcow2 image: what the engine calls between its
 * cluster mapping and the file. qcow2.txt "crypt_method": 1 is the legacy
 * AES-CBC scheme, 2 is LUKS with its header in the clusters the full disk
 * encryption header extension (0x0537be77) points to.
 *
 * Which offset feeds the IV follows block/qcow2.c qcow2_co_encdec: LUKS uses
 * the HOST offset of the data in the image file (crypt_physical_offset), legacy
 * AES the GUEST offset; both in 512-byte sectors (QCRYPTO_BLOCK_LUKS_SECTOR_SIZE,
 * QCRYPTO_BLOCK_QCOW_SECTOR_SIZE), so both offsets must be sector aligned.
 */
import { CorruptImageError, InvalidArgumentError, UnsupportedFeatureError } from '../errors.js';
import { CRYPT_AES, CRYPT_LUKS, CRYPT_NONE } from '../format/constants.js';
import type { CryptoHeaderExtension } from '../format/extensions.js';
import { CRYPTO_SECTOR_SIZE, makeSectorCipher, type SectorCipher } from './cipher.js';
import { createLuks, passphraseBytes, readLuksHeader, unlockLuks, type LuksCreateOptions, type UnlockedLuks } from './luks.js';
import { LUKS_KEY_SLOT_ENABLED, LUKS_SECTOR_SIZE, type LuksHeader, type LuksLimits } from './luks-header.js';
import type { CipherSpec } from './cipher.js';

export interface ImageCrypto {
  readonly method: 'aes' | 'luks';
  /** True when IVs come from the host offset (LUKS), false for the guest offset (AES). */
  readonly physicalOffset: boolean;
  /** Encrypts sector-aligned data about to be written at hostOffset for guest offset guestOffset. */
  encrypt(hostOffset: number, guestOffset: number, data: Uint8Array): Uint8Array;
  decrypt(hostOffset: number, guestOffset: number, data: Uint8Array): Uint8Array;
  /** LUKS only: the parsed header and the slot that opened (for info). */
  readonly luks?: Pick<UnlockedLuks, 'header' | 'slot'>;
}

function wrap(method: 'aes' | 'luks', cipher: SectorCipher, luks?: UnlockedLuks): ImageCrypto {
  const physical = method === 'luks';
  const sector = (host: number, guest: number, len: number): number => {
    const off = physical ? host : guest;
    if (host % CRYPTO_SECTOR_SIZE || guest % CRYPTO_SECTOR_SIZE || len % CRYPTO_SECTOR_SIZE) {
      throw new InvalidArgumentError(`encrypted I/O must be ${CRYPTO_SECTOR_SIZE}-byte aligned (host ${host}, guest ${guest}, ${len} bytes)`);
    }
    return off / CRYPTO_SECTOR_SIZE;
  };
  const out: ImageCrypto = {
    method,
    physicalOffset: physical,
    encrypt: (h, g, d) => cipher.encrypt(sector(h, g, d.length), d),
    decrypt: (h, g, d) => cipher.decrypt(sector(h, g, d.length), d),
  };
  if (luks) return { ...out, luks: { header: luks.header, slot: luks.slot } };
  return out;
}

/**
 * Legacy qcow/qcow2 AES (qcrypto_block_qcow_init): the key is the passphrase's
 * first 16 bytes, zero padded; AES-128-CBC with plain64 IVs. There is no key
 * check in the format: a wrong passphrase reads as garbage, as in QEMU.
 */
export function legacyAesCrypto(passphrase: string | Uint8Array): ImageCrypto {
  const key = new Uint8Array(16);
  const p = passphraseBytes(passphrase);
  key.set(p.subarray(0, 16));
  return wrap('aes', makeSectorCipher({ name: 'aes', mode: 'cbc', ivgen: 'plain64', keyBytes: 16 }, key));
}

export interface OpenCryptoInput {
  cryptMethod: number;
  cryptoHeader: CryptoHeaderExtension | undefined;
  clusterSize: number;
  fileSize: number;
  /** Reads bytes of the image file. */
  readFile: (offset: number, length: number) => Uint8Array;
  /** undefined when no encrypt.key-secret was given. */
  passphrase: string | Uint8Array | undefined;
  limits?: LuksLimits;
}

/**
 * Checks the extension as qcow2_read_extensions does and bounds the area to
 * the file, so that every later read of the area is inside both.
 */
export function luksArea(ext: CryptoHeaderExtension | undefined, clusterSize: number, fileSize: number): CryptoHeaderExtension {
  if (!ext) throw new CorruptImageError('LUKS encryption requires the full disk encryption header extension, which is missing');
  if (ext.offset % clusterSize !== 0) {
    throw new CorruptImageError(`Encryption header offset '${ext.offset}' is not a multiple of cluster size '${clusterSize}'`);
  }
  if (ext.offset === 0) throw new CorruptImageError('Encryption header offset 0 overlaps the qcow2 header');
  if (ext.length > fileSize || ext.offset > fileSize - ext.length) {
    throw new CorruptImageError(`Encryption header area (offset ${ext.offset}, ${ext.length} bytes) lies past the end of the file`);
  }
  return ext;
}

/** Opens the encryption of an image: undefined for an unencrypted one, an error for a bad passphrase or header. */
export function openImageCrypto(i: OpenCryptoInput): ImageCrypto | undefined {
  if (i.cryptMethod === CRYPT_NONE) return undefined;
  if (i.cryptMethod !== CRYPT_AES && i.cryptMethod !== CRYPT_LUKS) {
    throw new UnsupportedFeatureError(`encryption method ${i.cryptMethod} is not supported`);
  }
  if (i.passphrase === undefined) {
    throw new InvalidArgumentError("Parameter 'encrypt.key-secret' is required for cipher");
  }
  if (i.cryptMethod === CRYPT_AES) return legacyAesCrypto(i.passphrase);
  const area = luksArea(i.cryptoHeader, i.clusterSize, i.fileSize);
  const read = (off: number, len: number): Uint8Array => {
    if (off + len > area.length) throw new CorruptImageError('Request for data outside of extension header');
    return i.readFile(area.offset + off, len);
  };
  const luks = unlockLuks(read, area.length, i.passphrase, i.limits);
  return wrap('luks', luks.cipher, luks);
}

export interface CreatedImageCrypto {
  crypto: ImageCrypto;
  /** Bytes to place at a cluster-aligned offset; the extension's length is area.length. */
  area: Uint8Array;
  header: LuksHeader;
}

/** A new LUKS header area for qcow2 create (qcow2_crypto_hdr_init_func allocates payload-offset bytes of clusters). */
export function createImageLuks(passphrase: string | Uint8Array, o?: LuksCreateOptions): CreatedImageCrypto {
  const c = createLuks(passphrase, o);
  return {
    crypto: wrap('luks', c.cipher, { header: c.header, slot: 0, spec: c.cipher.spec, masterKey: c.masterKey, cipher: c.cipher }),
    area: c.area,
    header: c.header,
  };
}

/** The "encrypt" object of qemu-img info's format-specific data (QCryptoBlockInfo), keys in qemu-img 7.2's output order. */
export type EncryptInfo = { format: 'aes' } | Record<string, unknown>;

/** qcrypto_block_luks_get_info: needs only the header, so info works without the passphrase (QCRYPTO_BLOCK_OPEN_NO_IO). */
export function luksInfo(h: LuksHeader, spec: CipherSpec): Record<string, unknown> {
  const aesBits = (spec.mode === 'xts' ? h.keyBytes / 2 : h.keyBytes) * 8;
  const out: Record<string, unknown> = {
    'ivgen-alg': spec.ivgen,
    'hash-alg': h.hashSpec,
    'cipher-alg': `aes-${aesBits}`,
    uuid: h.uuid,
  };
  if (spec.ivgen === 'essiv') out['ivgen-hash-alg'] = spec.ivHash;
  out.format = 'luks';
  out['cipher-mode'] = spec.mode;
  out.slots = h.slots.map((sl) =>
    sl.active === LUKS_KEY_SLOT_ENABLED
      ? { active: true, iters: sl.iterations, 'key-offset': sl.keyMaterialOffsetSector * LUKS_SECTOR_SIZE, stripes: sl.stripes }
      : { active: false, 'key-offset': sl.keyMaterialOffsetSector * LUKS_SECTOR_SIZE },
  );
  out['payload-offset'] = h.payloadOffsetSector * LUKS_SECTOR_SIZE;
  out['master-key-iters'] = h.mkDigestIterations;
  return out;
}

/** The encrypt info of an image without unlocking it; undefined when it is not encrypted. */
export function readEncryptInfo(i: Omit<OpenCryptoInput, 'passphrase'>): EncryptInfo | undefined {
  if (i.cryptMethod === CRYPT_NONE) return undefined;
  if (i.cryptMethod === CRYPT_AES) return { format: 'aes' };
  if (i.cryptMethod !== CRYPT_LUKS) throw new UnsupportedFeatureError(`encryption method ${i.cryptMethod} is not supported`);
  const area = luksArea(i.cryptoHeader, i.clusterSize, i.fileSize);
  const { header, spec } = readLuksHeader((o, l) => i.readFile(area.offset + o, l), area.length, i.limits);
  return luksInfo(header, spec);
}
