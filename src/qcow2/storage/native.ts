/**
 * The project's N-API addon (native/ofd_lock.c): the file calls Node has
 * no binding for, OFD byte-range locks (lock.ts), fallocate's zero range,
 * the read-ahead hint and lseek SEEK_DATA/SEEK_HOLE (file.ts), starting writeback early (convert's raw
 * output, convert-raw.ts), and the encrypted-image hot loops
 * (crypto/cipher.ts, crypto/afsplit.ts). Loaded once, on first use.
 */
import * as fs from 'node:fs';
import { createRequire } from 'node:module';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

export interface NativeAddon {
  setlk(fd: number, start: number, len: number, type: number): number;
  getlk(fd: number, start: number, len: number, type: number): number;
  /** fallocate(FALLOC_FL_ZERO_RANGE): 0 or -errno. Absent from a build older than the call. */
  zeroRange?(fd: number, offset: number, len: number): number;
  /** posix_fadvise(POSIX_FADV_WILLNEED), a read-ahead hint: 0 or -errno. Absent from older builds. */
  willNeed?(fd: number, offset: number, len: number): number;
  /**
   * native/crypto.c, over the OpenSSL the process carries: absent from older
   * builds and wherever OpenSSL's symbols cannot be found. A keyed AES sector
   * cipher (mode 0 XTS, 1 CBC; ivgen 0 plain, 1 plain64, 2 essiv with
   * essivKey = hash(key)), or undefined for a combination it does not do.
   */
  sectorCipherNew?(aesBits: number, mode: number, key: Uint8Array, ivgen: number, essivKey?: Uint8Array): NativeSectorCipher | undefined;
  /** Whole sectors of src into dst (same length), IVs from firstSector on: 0, or negative when it could not. */
  sectorCipherRun?(cipher: NativeSectorCipher, encrypt: boolean, firstSector: number, src: Uint8Array, dst: Uint8Array): number;
  /** The AF-split diffusion chain over count n-byte blocks of material into d (n bytes): 0, or negative when it could not. */
  afDiffuse?(hash: string, digestLen: number, material: Uint8Array, n: number, count: number, d: Uint8Array): number;
  /** sync_file_range(SYNC_FILE_RANGE_WRITE): starts writeback of a range, no durability: 0 or -errno. Absent from older builds. */
  startWriteback?(fd: number, offset: number, len: number): number;
  /** The address of view's first byte modulo align (a power of two), for O_DIRECT buffers. Absent from older builds. */
  addressMod?(view: Uint8Array, align: number): number;
  /** lseek(SEEK_DATA), or SEEK_HOLE when hole: the offset found or -errno. Absent from older builds. */
  seekData?(fd: number, offset: number, hole: boolean): number;
}

/** An opaque handle owning a keyed OpenSSL context; freed (and wiped) when collected. */
export type NativeSectorCipher = { readonly __brand: 'NativeSectorCipher' };

export const ADDON_RELATIVE_PATH = 'native/build/Release/ofd_lock.node';

let loaded: NativeAddon | Error | undefined;

/**
 * A file of the package (the native build's addon and fork-server library,
 * the reader adapters, the built CLI), named relative to the package root:
 * looked for up from this module, so src/, dist/ and the bundled CLI in
 * dist/cli/chunks/ all find it.
 */
export function packageFile(relative: string): string | undefined {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  for (let up = 0; up < 8; up++) {
    const candidate = path.join(dir, ...relative.split('/'));
    if (fs.existsSync(candidate)) return candidate;
    const parent = path.dirname(dir);
    if (parent === dir) break;
    dir = parent;
  }
  return undefined;
}

/** The addon, or the Error that kept it from loading (each caller words its own consequence). */
export function nativeAddon(): NativeAddon | Error {
  if (loaded) return loaded;
  const where = packageFile(ADDON_RELATIVE_PATH);
  try {
    if (!where) throw new Error('not found');
    loaded = createRequire(import.meta.url)(where) as NativeAddon;
  } catch (e) {
    loaded = e instanceof Error ? e : new Error(String(e));
  }
  return loaded;
}
