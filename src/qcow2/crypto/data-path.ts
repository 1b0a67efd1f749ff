/**
 * Byte-granular guest I/O over encrypted clusters, for the engine's read and
 * write paths. QEMU sets request_alignment to the crypto sector size (512) for
 * encrypted qcow2 (qcow2_refresh_limits), so the block layer turns unaligned
 * guest I/O into read-modify-write of whole sectors; these helpers do the
 * same inside one cluster. Host and guest offsets of one cluster share their
 * offset into the cluster, hence their sector alignment.
 *
 * What does NOT go through here (as in QEMU 7.2):
 * - compressed clusters: qcow2_co_preadv_compressed / the compressed write
 *   path store deflate output in the clear, even in encrypted images;
 * - zero and unallocated clusters, and data from a backing file (which has
 *   its own encryption, if any).
 */
import { InvalidArgumentError } from '../errors.js';
import { CRYPTO_SECTOR_SIZE } from './cipher.js';
import type { ImageCrypto } from './image-crypto.js';

const S = CRYPTO_SECTOR_SIZE;

function checkSameAlignment(host: number, guest: number): void {
  if (host % S !== guest % S) {
    throw new InvalidArgumentError(`host offset ${host} and guest offset ${guest} differ in their offset into a sector`);
  }
}

/** Plaintext of [guest, guest+length) stored encrypted at host; `readHost` reads file bytes. */
export function decryptRange(
  crypto: ImageCrypto,
  readHost: (offset: number, length: number) => Uint8Array,
  host: number,
  guest: number,
  length: number,
): Uint8Array {
  checkSameAlignment(host, guest);
  const head = host % S;
  const span = Math.ceil((head + length) / S) * S;
  const plain = crypto.decrypt(host - head, guest - head, readHost(host - head, span));
  return plain.subarray(head, head + length);
}

/**
 * Ciphertext to write at the returned host offset so that [guest, guest+data.length)
 * holds data. Partial head and tail sectors take their other bytes from
 * `oldPlain(hostSector, guestSector)` — the current plaintext of that sector
 * (decrypted cluster data, zeros for a new cluster, backing data for COW).
 */
export function encryptRange(
  crypto: ImageCrypto,
  host: number,
  guest: number,
  data: Uint8Array,
  oldPlain: (hostSector: number, guestSector: number) => Uint8Array,
): { host: number; bytes: Uint8Array } {
  checkSameAlignment(host, guest);
  if (data.length === 0) return { host, bytes: data };
  const head = host % S;
  const span = Math.ceil((head + data.length) / S) * S;
  const buf = new Uint8Array(span);
  const h0 = host - head;
  const g0 = guest - head;
  if (head !== 0) buf.set(sector(oldPlain(h0, g0)), 0);
  const tail = (head + data.length) % S;
  if (tail !== 0 && (span > S || head === 0)) buf.set(sector(oldPlain(h0 + span - S, g0 + span - S)), span - S);
  buf.set(data, head);
  return { host: h0, bytes: crypto.encrypt(h0, g0, buf) };
}

function sector(b: Uint8Array): Uint8Array {
  if (b.length !== S) throw new InvalidArgumentError(`old sector plaintext must be ${S} bytes, got ${b.length}`);
  return b;
}

/**
 * Moves encrypted bytes to a new host offset (copy-on-write of an allocated
 * cluster, refcount rebuild moves): LUKS IVs come from the host sector, so the
 * data must be decrypted at the old place and encrypted at the new one; legacy
 * AES IVs come from the guest sector and the bytes move unchanged.
 */
export function recrypt(crypto: ImageCrypto, oldHost: number, newHost: number, guest: number, bytes: Uint8Array): Uint8Array {
  if (!crypto.physicalOffset || oldHost === newHost) return bytes;
  return crypto.encrypt(newHost, guest, crypto.decrypt(oldHost, guest, bytes));
}

/** The two storage calls the engine's data path makes (BlockStorage satisfies it). */
export interface DataStorage {
  read(offset: number, length: number): Uint8Array;
  write(offset: number, data: Uint8Array): void;
}

/**
 * Engine read hook: guest bytes [guest, guest+dst.length) of a normal
 * (sub)cluster stored at host, decrypted into dst.
 */
export function readEncryptedData(crypto: ImageCrypto, storage: DataStorage, host: number, guest: number, dst: Uint8Array): void {
  dst.set(decryptRange(crypto, (o, l) => storage.read(o, l), host, guest, dst.length));
}

/**
 * Engine write hook: data for [guest, ...) written encrypted at host. A
 * partial head or tail sector is completed from the ciphertext already at
 * host, so host must hold this cluster's current content (an allocated normal
 * cluster written in place); new clusters are written whole by the engine,
 * which needs no read.
 */
export function writeEncryptedData(crypto: ImageCrypto, storage: DataStorage, host: number, guest: number, data: Uint8Array): void {
  const w = encryptRange(crypto, host, guest, data, (hs, gs) => crypto.decrypt(hs, gs, storage.read(hs, CRYPTO_SECTOR_SIZE)));
  storage.write(w.host, w.bytes);
}
