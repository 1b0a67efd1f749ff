/**
 * Image locking as QEMU does it (block/file-posix.c, QEMU 7.2), so that QEMU
 * and this engine refuse each other's conflicting opens of one image.
 *
 * Each block permission N (consistent read, write, write unchanged, resize:
 * the BLK_PERM_* bits of include/block/block-common.h) has two lock bytes in
 * the image file: RAW_LOCK_PERM_BASE + N is locked (shared) by every opener
 * holding permission N, and RAW_LOCK_SHARED_BASE + N by every opener that
 * does not let others hold N. An open first takes its own bytes, then tests
 * the opposite bytes for locks of other open file descriptions
 * (raw_apply_lock_bytes, raw_check_lock_bytes). The locks are OFD locks
 * (F_OFD_SETLK / F_OFD_GETLK through qemu_lock_fd / qemu_lock_fd_test): they
 * vanish when the descriptor is closed or the process dies, and two opens of
 * one file conflict even within one process. The bytes locked are far past
 * any header QEMU or we read, and advisory: I/O is never blocked by them.
 */
import { constants } from 'node:os';
import { getSystemErrorMap } from 'node:util';
import { ImageLockedError, LockingUnavailableError } from '../errors.js';
import { ADDON_RELATIVE_PATH, nativeAddon, type NativeAddon } from './native.js';

/** QEMU's BLK_PERM_* bits. */
export const BLK_PERM_CONSISTENT_READ = 1 << 0;
export const BLK_PERM_WRITE = 1 << 1;
export const BLK_PERM_WRITE_UNCHANGED = 1 << 2;
export const BLK_PERM_RESIZE = 1 << 3;
/** BLK_PERM_ALL in QEMU 7.2 (graph-mod was dropped in 6.2): bytes 100..103 and 200..203. */
export const BLK_PERM_ALL = 0x0f;
const PERM_COUNT = 4;

/** "Libvirt takes byte 0, we start from higher bytes" (file-posix.c). */
export const RAW_LOCK_PERM_BASE = 100;
export const RAW_LOCK_SHARED_BASE = 200;

/** bdrv_perm_names, as the lock errors print them. */
const PERM_NAMES = ['consistent read', 'write', 'write unchanged', 'resize'];

/** What an opener holds (perm) and lets others hold (shared), as BLK_PERM_* masks. */
export interface LockRequest {
  readonly perm: number;
  readonly shared: number;
}

/**
 * The permissions QEMU's tools end up with on the file node, read off
 * /proc/locks while qemu-io/qemu-img 7.2 held images: a qcow2 node takes
 * write and resize on its file when writable and never shares them
 * (bdrv_default_perms_for_storage); a raw node passes qemu-io's "share
 * everything" through; force-share shares everything.
 */
export const LOCKS = {
  qcow2ReadWrite: { perm: BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE | BLK_PERM_RESIZE, shared: BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE_UNCHANGED },
  qcow2ReadOnly: { perm: BLK_PERM_CONSISTENT_READ, shared: BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE_UNCHANGED },
  rawReadWrite: { perm: BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE, shared: BLK_PERM_ALL },
  rawReadOnly: { perm: BLK_PERM_CONSISTENT_READ, shared: BLK_PERM_ALL },
  forceShare: { perm: BLK_PERM_CONSISTENT_READ, shared: BLK_PERM_ALL },
  /** raw_co_create: write and resize while the file is emptied, resize not shared. */
  create: { perm: BLK_PERM_WRITE | BLK_PERM_RESIZE, shared: BLK_PERM_ALL & ~BLK_PERM_RESIZE },
} as const satisfies Record<string, LockRequest>;

const F_UNLCK = 0;
const F_RDLCK = 1;
const F_WRLCK = 2;

function ofd(): NativeAddon {
  const addon = nativeAddon();
  if (addon instanceof Error) {
    throw new LockingUnavailableError(
      `image locking needs the native addon ${ADDON_RELATIVE_PATH}, which did not load (${addon.message.split('\n')[0]}); build it with 'npm run build:native'`,
    );
  }
  return addon;
}

/** raw_lock_error_setg_errno: EAGAIN and EACCES mean "someone holds it", said without errno detail. */
function withErrno(what: string, negErrno: number): string {
  if (negErrno === -constants.errno.EAGAIN || negErrno === -constants.errno.EACCES) return what;
  // The two a file system without lock support gives, which libuv lacks or words for sockets.
  const own: Record<number, string> = { [constants.errno.ENOLCK]: 'No locks available', [constants.errno.EOPNOTSUPP]: 'Operation not supported' };
  const text = own[-negErrno] ?? getSystemErrorMap().get(negErrno)?.[1] ?? `errno ${-negErrno}`;
  // libuv's wording in strerror's case ("no locks available" -> "No locks available").
  return `${what}: ${text[0]!.toUpperCase()}${text.slice(1)}`;
}

/** The lock bytes one open file description holds on an image, changed as QEMU's raw_handle_perm_lock changes them. */
export class ImageLock {
  private perm = 0;
  private shared = BLK_PERM_ALL;
  private lockedPerm = 0;
  private lockedUnshared = 0;

  private constructor(
    private readonly fd: number,
    /** The image's name as the user gave it, for the "Is another process using" hint. */
    private readonly name: string,
  ) {}

  /** Takes req on fd, or throws ImageLockedError and leaves no lock behind. */
  static take(fd: number, name: string, req: LockRequest): ImageLock {
    const lock = new ImageLock(fd, name);
    lock.change(req);
    return lock;
  }

  /**
   * Moves to new permissions: locks the union of old and new first, checks
   * the new ones against everyone else, then drops what is no longer needed
   * (RAW_PL_PREPARE, then RAW_PL_COMMIT or RAW_PL_ABORT).
   */
  change(req: LockRequest): void {
    const perm = req.perm & BLK_PERM_ALL;
    const shared = req.shared & BLK_PERM_ALL;
    try {
      this.apply(this.perm | perm, ~this.shared | ~shared, false);
      this.check(perm, shared);
    } catch (e) {
      this.apply(this.perm, ~this.shared, true, true);
      throw e;
    }
    this.apply(perm, ~shared, true, true);
    this.perm = perm;
    this.shared = shared;
  }

  /** raw_apply_lock_bytes: perm bytes first, then the "not shared" bytes; the first failure ends it. */
  private apply(permBits: number, unsharedBits: number, unlock: boolean, quiet = false): void {
    const lib = ofd();
    const sets = [
      { base: RAW_LOCK_PERM_BASE, want: permBits, key: 'lockedPerm' as const },
      { base: RAW_LOCK_SHARED_BASE, want: unsharedBits, key: 'lockedUnshared' as const },
    ];
    for (const { base, want, key } of sets) {
      for (let i = 0; i < PERM_COUNT; i++) {
        const bit = 1 << i;
        const off = base + i;
        if (want & bit && !(this[key] & bit)) {
          const r = lib.setlk(this.fd, off, 1, F_RDLCK);
          if (r === 0) this[key] |= bit;
          else if (!quiet) {
            const Err = r === -constants.errno.EAGAIN || r === -constants.errno.EACCES ? ImageLockedError : LockingUnavailableError;
            throw new Err(withErrno(`Failed to lock byte ${off}`, r));
          }
        } else if (unlock && this[key] & bit && !(want & bit)) {
          // An unlock fails only if something is badly wrong; QEMU warns and goes on, and so do we.
          if (lib.setlk(this.fd, off, 1, F_UNLCK) === 0) this[key] &= ~bit;
        }
      }
    }
  }

  /** raw_check_lock_bytes: the first permission someone else keeps from us, or that we keep and someone holds, fails the open. */
  private check(perm: number, shared: number): void {
    const lib = ofd();
    const tests: { off: number; name: string }[] = [];
    for (let i = 0; i < PERM_COUNT; i++) if (perm & (1 << i)) tests.push({ off: RAW_LOCK_SHARED_BASE + i, name: `"${PERM_NAMES[i]}"` });
    for (let i = 0; i < PERM_COUNT; i++) if (!(shared & (1 << i))) tests.push({ off: RAW_LOCK_PERM_BASE + i, name: `shared "${PERM_NAMES[i]}"` });
    for (const { off, name } of tests) {
      const r = lib.getlk(this.fd, off, 1, F_WRLCK);
      if (r === 0) continue;
      const Err = r > 0 ? ImageLockedError : LockingUnavailableError;
      throw new Err(withErrno(`Failed to get ${name} lock`, r > 0 ? -constants.errno.EAGAIN : r) + `\nIs another process using the image [${this.name}]?`);
    }
  }
}
