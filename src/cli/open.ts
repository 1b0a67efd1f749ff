import * as fs from 'node:fs';
import * as path from 'node:path';
import { ImageLockedError, Qcow2Error } from '../qcow2/errors.js';
import type { Qcow2Image } from '../qcow2/image.js';
import { lockFor, openImageFile, openQcow2File, probeFormat } from '../qcow2/open-file.js';
import { FileStorage } from '../qcow2/storage/file.js';
import type { GuestDevice } from '../qcow2/types.js';
import { has, type ParsedArgs } from './args.js';
import type { CliContext } from './context.js';
import { CommandFailed, describeQcow2Error, EXIT_FAILURE, UsageError } from './errors.js';

export type ImageFormat = 'qcow2' | 'raw';

export function resolvePath(ctx: CliContext, p: string): string {
  return path.resolve(ctx.cwd, p);
}

export function parseFormat(v: string | undefined, command: string): ImageFormat | undefined {
  if (v === undefined) return undefined;
  if (v === 'qcow2' || v === 'raw') return v;
  throw new UsageError(`Unknown file format '${v}' (qcow2-harness knows qcow2 and raw)`, command);
}

/** strerror wording for the errno codes a user is likely to meet. */
const STRERROR: Record<string, string> = {
  ENOENT: 'No such file or directory',
  EACCES: 'Permission denied',
  EPERM: 'Operation not permitted',
  EISDIR: 'Is a directory',
  ENOTDIR: 'Not a directory',
  ENOSPC: 'No space left on device',
  EROFS: 'Read-only file system',
  EIO: 'Input/output error',
  EINVAL: 'Invalid argument',
  ENAMETOOLONG: 'File name too long',
  EFBIG: 'File too large',
  EEXIST: 'File exists',
  ELOOP: 'Too many levels of symbolic links',
  EMFILE: 'Too many open files',
  ENOTSUP: 'Operation not supported',
};

/** One line saying why something failed, whatever was thrown. */
export function reason(e: unknown): string {
  if (e instanceof Qcow2Error) {
    const code = (e as { code?: string }).code;
    if (code && STRERROR[code]) return STRERROR[code]!;
    return describeQcow2Error(e);
  }
  const code = (e as { code?: string } | null)?.code;
  if (code && STRERROR[code]) return STRERROR[code]!;
  if (e instanceof Error) return e.message;
  return String(e);
}

/** Whether opening the file itself fails with this errno now (not some file it names). */
function failsToOpen(abs: string, code: string): boolean {
  try {
    fs.closeSync(fs.openSync(abs, 'r'));
    return false;
  } catch (e) {
    return (e as { code?: string }).code === code;
  }
}

/** errno codes of open(2) on the image file itself, which QEMU's file driver words "Could not open 'X': why". */
const FILE_OPEN_ERRORS = new Set(['ENOENT', 'EACCES', 'EPERM', 'ENOTDIR', 'ELOOP', 'ENAMETOOLONG']);

/**
 * Wraps an open failure in qemu-img's "Could not open 'X': why" form, where
 * why is what the block layer says: raw_open_common's own "Could not open 'X':
 * strerror" for the image file, "'file' driver requires 'X' to be a regular
 * file" for a directory, and a lock failure with its hint on a line of its own.
 */
export function couldNotOpen(file: string, e: unknown, abs?: string, writable = false): CommandFailed {
  if (e instanceof CommandFailed) return e;
  const code = (e as { code?: string } | null)?.code;
  if (e instanceof ImageLockedError) {
    const [first, ...hint] = e.message.split('\n');
    return new CommandFailed(`Could not open '${file}': ${first}`, EXIT_FAILURE, hint.join('\n') || undefined);
  }
  // open(O_RDWR) of a directory fails in raw_open_common; a read-only open gets as far as the regular-file check.
  if (code === 'EISDIR' && writable) return new CommandFailed(`Could not open '${file}': Could not open '${file}': Is a directory`);
  if (code === 'EISDIR') return new CommandFailed(`Could not open '${file}': 'file' driver requires '${file}' to be a regular file`);
  // Only the image's own file: a missing backing file is worded by the open that needed it.
  if (code && FILE_OPEN_ERRORS.has(code) && abs !== undefined && failsToOpen(abs, code)) {
    return new CommandFailed(`Could not open '${file}': Could not open '${file}': ${STRERROR[code]}`);
  }
  return new CommandFailed(`Could not open '${file}': ${reason(e)}`);
}

/**
 * qemu-img's -U / --force-share: open read-only without keeping others from
 * writing (image locking, see src/qcow2/storage/lock.ts). A command whose
 * image another process holds fails with QEMU's lock message and exit code 1.
 */
export const FORCE_SHARE_HELP = '  -U, --force-share  read-only access to an image another process may hold (no locks against it)';
export function forceShare(p: ParsedArgs): boolean {
  return has(p, 'U') || has(p, 'force-share');
}

/** Format probing is the engine's (a file without the qcow2 magic is raw, as qemu probes). */
export { probeFormat };

export interface ReadableImage {
  format: ImageFormat;
  device: GuestDevice;
  qcow2?: Qcow2Image;
}

/** Opens any image read-only (for info, convert), with its backing chain. */
export function openReadable(
  ctx: CliContext,
  file: string,
  o: { format?: ImageFormat; snapshot?: string; forceShare?: boolean; withoutDataFile?: boolean; withoutBacking?: boolean; passphrase?: string; name?: string; dataFile?: string } = {},
): ReadableImage {
  try {
    const format = o.format ?? probeFormat(resolvePath(ctx, file), file);
    if (format === 'raw' && o.snapshot !== undefined) {
      throw new CommandFailed(`Could not open '${file}': raw images have no snapshots`);
    }
    const dev = openImageFile(resolvePath(ctx, file), {
      readOnly: true,
      format,
      snapshot: o.snapshot,
      forceShare: o.forceShare,
      shownAs: file,
      withoutDataFile: o.withoutDataFile,
      withoutBacking: o.withoutBacking,
      dataFileBase: ctx.cwd,
      ...(o.dataFile === undefined ? {} : { dataFile: o.dataFile }),
      ...(o.passphrase === undefined ? {} : { passphrase: o.passphrase }),
    });
    return { format: dev.format, device: dev, qcow2: dev.qcow2 };
  } catch (e) {
    throw couldNotOpen(o.name ?? file, e, resolvePath(ctx, file));
  }
}

/** Opens a qcow2 image for metadata commands (snapshot, amend, resize, check). */
export function openQcow2(
  ctx: CliContext,
  file: string,
  o: { format?: ImageFormat; readOnly?: boolean; repairDirty?: boolean; forCheck?: boolean; forceShare?: boolean; passphrase?: string; name?: string; dataFile?: string } = {},
): Qcow2Image {
  try {
    const format = o.format ?? probeFormat(resolvePath(ctx, file), file);
    if (format !== 'qcow2') throw new CommandFailed(`'${file}' is a raw image; this command needs qcow2`);
    return openQcow2File(resolvePath(ctx, file), {
      readOnly: o.readOnly ?? false,
      repairDirty: o.repairDirty,
      forCheck: o.forCheck,
      forceShare: o.forceShare,
      shownAs: file,
      dataFileBase: ctx.cwd,
      ...(o.passphrase === undefined ? {} : { passphrase: o.passphrase }),
      ...(o.dataFile === undefined ? {} : { dataFile: o.dataFile }),
    });
  } catch (e) {
    throw couldNotOpen(o.name ?? file, e, resolvePath(ctx, file), !(o.readOnly ?? false));
  }
}

/** What `io` drives: the guest-visible operations qemu-io offers. */
export interface WritableDevice extends GuestDevice {
  readonly format: ImageFormat;
  readonly clusterSize: number;
  write(offset: number, data: Uint8Array): void;
  writeCompressed?(offset: number, data: Uint8Array): void;
  writeZeroes(offset: number, length: number, opts?: { unmap?: boolean }): void;
  discard(offset: number, length: number): void;
  flush(): void;
}

/** A raw file as a device, so `io` works on raw images too (as qemu-io does). */
class RawDevice implements WritableDevice {
  readonly format = 'raw' as const;
  /** Raw files have no clusters; qemu reports none, 512 keeps alignment maths simple. */
  readonly clusterSize = 512;
  constructor(private readonly storage: FileStorage) {}
  get virtualSize(): number {
    return this.storage.size();
  }
  read(offset: number, length: number): Uint8Array {
    this.bounds(offset, length);
    return this.storage.read(offset, length);
  }
  readInto(offset: number, dst: Uint8Array): void {
    this.bounds(offset, dst.length);
    this.storage.readInto(offset, dst);
  }
  write(offset: number, data: Uint8Array): void {
    this.bounds(offset, data.length);
    this.storage.write(offset, data);
  }
  writeZeroes(offset: number, length: number): void {
    this.bounds(offset, length);
    const chunk = new Uint8Array(Math.min(length, 1 << 20));
    for (let done = 0; done < length; done += chunk.length) {
      this.storage.write(offset + done, chunk.subarray(0, Math.min(chunk.length, length - done)));
    }
  }
  discard(offset: number, length: number): void {
    // A hole punched in a raw file reads back as zeros; writing them is the portable equivalent.
    this.writeZeroes(offset, length);
  }
  flush(): void {
    this.storage.flush();
  }
  close(): void {
    this.storage.close();
  }
  private bounds(offset: number, length: number): void {
    if (offset + length > this.virtualSize) {
      throw new CommandFailed('Input/output error');
    }
  }
}

/** The engine's image seen through the same interface as a raw file. */
export class Qcow2Device implements WritableDevice {
  readonly format = 'qcow2' as const;
  constructor(readonly image: Qcow2Image) {}
  get virtualSize(): number {
    return this.image.virtualSize;
  }
  get clusterSize(): number {
    return this.image.clusterSize;
  }
  read(offset: number, length: number): Uint8Array {
    return this.image.read(offset, length);
  }
  readInto(offset: number, dst: Uint8Array): void {
    this.image.readInto(offset, dst);
  }
  write(offset: number, data: Uint8Array): void {
    this.image.write(offset, data);
  }
  writeCompressed(offset: number, data: Uint8Array): void {
    this.image.writeCompressed(offset, data);
  }
  writeZeroes(offset: number, length: number, opts?: { unmap?: boolean }): void {
    this.image.writeZeroes(offset, length, opts);
  }
  discard(offset: number, length: number): void {
    this.image.discard(offset, length);
  }
  flush(): void {
    this.image.flush();
  }
  close(): void {
    this.image.close();
  }
}

export function openWritable(
  ctx: CliContext,
  file: string,
  o: { format?: ImageFormat; readOnly?: boolean; forceShare?: boolean; passphrase?: string; name?: string; dataFile?: string },
): WritableDevice {
  try {
    const abs = resolvePath(ctx, file);
    const format = o.format ?? probeFormat(abs, file);
    const readOnly = o.readOnly ?? false;
    if (format === 'raw') {
      return new RawDevice(FileStorage.open(abs, { readOnly, lock: lockFor('raw', readOnly, o.forceShare), name: file }));
    }
    const passphrase = o.passphrase === undefined ? {} : { passphrase: o.passphrase };
    const dataFile = o.dataFile === undefined ? {} : { dataFile: o.dataFile };
    return new Qcow2Device(openQcow2File(abs, { readOnly, forceShare: o.forceShare, shownAs: file, dataFileBase: ctx.cwd, ...passphrase, ...dataFile }));
  } catch (e) {
    throw couldNotOpen(o.name ?? file, e, resolvePath(ctx, file), !(o.readOnly ?? false));
  }
}
