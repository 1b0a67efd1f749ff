/**
 * Opening and creating the external data file of an image on disk, as
 * qemu-img 7.2 does: the name in the header extension (or the one the user
 * gave with data-file=) is opened as given, so a relative name is relative
 * to the current directory, not to the image (QEMU 7.2's qcow2_do_open
 * passes s->image_data_file to bdrv_open_child unchanged; checked with
 * qemu-io from another directory). The file is locked as QEMU locks a data
 * child (bdrv_default_perms_for_storage, BDRV_CHILD_DATA; read off
 * /proc/locks while qemu-io held one): read, plus write and resize when
 * writable, and resize never shared.
 */
import fs from 'node:fs';
import path from 'node:path';
import { InvalidArgumentError, StorageIoError } from './errors.js';
import { FileStorage } from './storage/file.js';
import { BLK_PERM_ALL, BLK_PERM_CONSISTENT_READ, BLK_PERM_RESIZE, BLK_PERM_WRITE, LOCKS, type LockRequest } from './storage/lock.js';
import type { BlockStorage } from './storage/types.js';

export const DATA_FILE_LOCKS = {
  readWrite: { perm: BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE | BLK_PERM_RESIZE, shared: BLK_PERM_ALL & ~BLK_PERM_RESIZE },
  readOnly: { perm: BLK_PERM_CONSISTENT_READ, shared: BLK_PERM_ALL & ~BLK_PERM_RESIZE },
} as const satisfies Record<string, LockRequest>;

/** strerror texts QEMU prints for the failures a data file name can meet. */
const STRERROR: Record<string, string> = {
  ENOENT: 'No such file or directory',
  EACCES: 'Permission denied',
  EISDIR: 'Is a directory',
  ENOTDIR: 'Not a directory',
  ELOOP: 'Too many levels of symbolic links',
  ENAMETOOLONG: 'File name too long',
};

export interface DataFileAccess {
  readOnly: boolean;
  forceShare?: boolean;
  /** data-file= / data-file.filename= given by the user: used instead of the header's name. */
  override?: string;
  /** The directory a relative name is taken from: the current directory (default process.cwd()). */
  base?: string;
}

/** The opener OpenOptions.openDataFile wants, for an image opened from a file. */
export interface DataFileOpener {
  open: (name: string | undefined) => BlockStorage | null;
  /** Closes what open returned (the image's open failed after it). */
  abandon: () => void;
}

export function dataFileOpener(a: DataFileAccess): DataFileOpener {
  let opened: BlockStorage | null = null;
  return {
    open: (name) => {
      const file = a.override ?? name;
      if (file === undefined) return null;
      const lock = a.forceShare ? LOCKS.forceShare : a.readOnly ? DATA_FILE_LOCKS.readOnly : DATA_FILE_LOCKS.readWrite;
      const at = path.resolve(a.base ?? process.cwd(), file);
      opened = openNamed(file, at, () => FileStorage.open(at, { readOnly: a.readOnly, lock, name: file }));
      return opened;
    },
    abandon: () => {
      opened?.close();
      opened = null;
    },
  };
}

/** Creates (empties) the data file for qemu-img create -o data_file=NAME, holding the read-write data lock. */
export function createDataFile(file: string, base = process.cwd()): BlockStorage {
  const at = path.resolve(base, file);
  return openNamed(file, at, () => FileStorage.create(at, { lock: DATA_FILE_LOCKS.readWrite, name: file }), 'create');
}

function openNamed(file: string, at: string, open: () => BlockStorage, verb: 'open' | 'create' = 'open'): BlockStorage {
  if (file === '' || file.includes('\0')) throw new InvalidArgumentError(`Could not ${verb} '${file}': not a file name`);
  // A directory opens read-only on Linux and fails only on the first read: refuse it here, as file-posix does.
  if (fs.existsSync(at) && fs.statSync(at).isDirectory()) throw new InvalidArgumentError(`Could not ${verb} '${file}': Is a directory`);
  try {
    return open();
  } catch (e) {
    if (e instanceof StorageIoError && e.code !== undefined && STRERROR[e.code] !== undefined) {
      // Not a StorageIoError with a code: the CLI would print the bare strerror and lose the name.
      throw new InvalidArgumentError(`Could not ${verb} '${file}': ${STRERROR[e.code]}`);
    }
    throw e;
  }
}
