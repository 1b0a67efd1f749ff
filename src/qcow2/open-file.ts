/**
 * Opening images by path: format probing, raw images as devices, and the
 * backing chain resolved as QEMU resolves it (a relative name is relative
 * to the directory of the image that names it).
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { getSystemErrorMap } from 'node:util';
import { BackingFileError, InvalidArgumentError, Qcow2Error, InvalidImageError, NotRegularFileError, StorageIoError } from './errors.js';
import { QCOW2_MAGIC } from './format/constants.js';
import { hasProtocol, resolveBackingName, type BackingTarget } from './backing-name.js';
import { resolveCreateOptions } from './create.js';
import { createDataFile, dataFileOpener } from './data-file-open.js';
import { Qcow2Image } from './image.js';
import { FileStorage, openImageFd } from './storage/file.js';
import { LOCKS, type LockRequest } from './storage/lock.js';
import type { BlockStorage } from './storage/types.js';
import type { BackingFormat, CreateOptions, GuestDevice, OpenOptions } from './types.js';

/** QEMU refuses backing chains deeper than this (BDRV_BACKING_CHAIN_MAX... in practice). */
const MAX_BACKING_DEPTH = 64;

export type ImageFormat = 'qcow2' | 'raw';

/** How an image file is opened: OpenOptions, plus what only a file has. */
export interface FileOpenOptions extends OpenOptions {
  format?: ImageFormat;
  /**
   * qemu-img's -U / force-share=on: read-only access that lets others hold
   * any permission (no "not shared" locks), so an image a VM or qemu-io has
   * open read-write can still be inspected. Refused with a writable open.
   */
  forceShare?: boolean;
  /** The name the user gave the image (messages say it, as QEMU's do); backing names are combined with it. */
  shownAs?: string;
  /** data-file= / data-file.filename=: the external data file to use instead of the one the header names. */
  dataFile?: string;
  /** Open an image with an external data file for metadata only (qemu-img info: BDRV_O_NO_IO). */
  withoutDataFile?: boolean;
  /** Leave the backing file closed (qemu-img info: BDRV_O_NO_BACKING), so an overlay whose backing file is gone still opens. */
  withoutBacking?: boolean;
  /**
   * Directory a relative data file name is taken from (QEMU 7.2: the current directory; default process.cwd()),
   * and a backing name with a protocol (file:, json:).
   */
  dataFileBase?: string;
}

/**
 * The image locks QEMU's tools hold on a file of this format (lock.ts);
 * throws as QEMU does for force-share on a writable open.
 */
export function lockFor(format: ImageFormat, readOnly: boolean, forceShare = false): LockRequest {
  if (forceShare) {
    if (!readOnly) throw new InvalidArgumentError('force-share=on can only be used with read-only images');
    return LOCKS.forceShare;
  }
  if (format === 'raw') return readOnly ? LOCKS.rawReadOnly : LOCKS.rawReadWrite;
  return readOnly ? LOCKS.qcow2ReadOnly : LOCKS.qcow2ReadWrite;
}

export interface OpenedImage extends GuestDevice {
  readonly format: ImageFormat;
  readonly qcow2?: Qcow2Image;
}

/** A raw file seen as a guest device. */
export class RawDevice implements GuestDevice {
  constructor(readonly storage: BlockStorage) {}
  get virtualSize(): number {
    return this.storage.size();
  }
  read(offset: number, length: number): Uint8Array {
    return this.storage.read(offset, length);
  }
  readInto(offset: number, dst: Uint8Array): void {
    this.storage.readInto(offset, dst);
  }
  close(): void {
    this.storage.close();
  }
}

/** name: the file as the user gave it, for the refusal of a FIFO or a socket (openImageFd). */
export function probeFormat(file: string, name = file): ImageFormat {
  let fd: number;
  try {
    fd = openImageFd(file, fs.constants.O_RDONLY, name, true);
  } catch (e) {
    if (e instanceof NotRegularFileError) throw e;
    throw new StorageIoError(`Could not open '${file}': ${(e as NodeJS.ErrnoException).message}`, (e as NodeJS.ErrnoException).code);
  }
  try {
    const b = Buffer.alloc(4);
    const n = fs.readSync(fd, b, 0, 4, 0);
    return n === 4 && b.readUInt32BE(0) === QCOW2_MAGIC ? 'qcow2' : 'raw';
  } finally {
    fs.closeSync(fd);
  }
}

function backingOpener(imagePath: string, depth: number, o: FileOpenOptions = {}) {
  return (name: string, fmt: BackingFormat | undefined): GuestDevice => {
    if (depth >= MAX_BACKING_DEPTH) throw new InvalidImageError(`backing chain deeper than ${MAX_BACKING_DEPTH} images (a loop?)`);
    // Backing files are only ever read, and locked as QEMU locks them: as a
    // read-only image of their format, force-shared when the top image is.
    let target: BackingTarget | undefined;
    try {
      target = resolveBackingName(imagePath, name, fmt, { imageShownAs: o.shownAs, cwd: o.dataFileBase });
      const shownAs = o.shownAs === undefined && !hasProtocol(name) ? undefined : target.shownAs;
      return openAt(target.file, { readOnly: true, format: target.format, forceShare: o.forceShare, shownAs, dataFileBase: o.dataFileBase }, depth + 1);
    } catch (e) {
      throw backingOpenFailed(e, target?.shownAs ?? name);
    }
  };
}

/**
 * bdrv_open_backing_file's words: "Could not open backing file: " before
 * whatever reason the backing image did not open for; for a file that cannot
 * be opened the reason is file-posix's "Could not open 'NAME': strerror".
 * An engine error keeps its class (a corrupt backing image is still corrupt,
 * a lock still a lock: the exit code says so) with the prefix on its message.
 */
const OPEN_ERRNOS = new Set(['ENOENT', 'EACCES', 'EPERM', 'ENOTDIR', 'ELOOP', 'ENAMETOOLONG']);

const BACKING_PREFIX = 'Could not open backing file: ';

function backingOpenFailed(e: unknown, shownAs: string): unknown {
  const code = e instanceof StorageIoError && e.code !== undefined && OPEN_ERRNOS.has(e.code) ? e.code : undefined;
  const text = code === undefined ? undefined : getSystemErrorMap().get(-(os.constants.errno as Record<string, number>)[code]!)?.[1];
  if (code !== undefined && text !== undefined) {
    return new BackingFileError(`${BACKING_PREFIX}Could not open '${shownAs}': ${text[0]!.toUpperCase()}${text.slice(1)}`);
  }
  if (e instanceof Qcow2Error) {
    e.message = BACKING_PREFIX + e.message;
    return e;
  }
  return e;
}

function openAt(file: string, o: FileOpenOptions, depth: number): OpenedImage {
  const format = o.format ?? probeFormat(file, o.shownAs ?? file);
  const readOnly = o.readOnly ?? false;
  const storage = FileStorage.open(file, { readOnly, lock: lockFor(format, readOnly, o.forceShare), name: o.shownAs ?? file });
  if (format === 'raw') {
    const raw = new RawDevice(storage);
    return Object.assign(raw, { format: 'raw' as const });
  }
  const data = dataFileOpener({ readOnly, forceShare: o.forceShare, override: o.dataFile, base: o.dataFileBase });
  try {
    const { format: _f, forceShare: _s, shownAs: _n, dataFile: _d, withoutDataFile: _w, withoutBacking: _nb, dataFileBase: _b, ...engine } = o;
    const img = Qcow2Image.open(storage, {
      ...engine,
      openBacking: o.withoutBacking ? undefined : (o.openBacking ?? backingOpener(file, depth, o)),
      openDataFile: o.openDataFile ?? (o.withoutDataFile ? undefined : data.open),
      dataFileExplicit: o.dataFile !== undefined,
    });
    return Object.assign(img, { format: 'qcow2' as const, qcow2: img });
  } catch (e) {
    data.abandon();
    storage.close();
    throw e;
  }
}

export function openImageFile(file: string, o: FileOpenOptions = {}): OpenedImage {
  return openAt(file, o, 0);
}

export function openQcow2File(file: string, o: Omit<FileOpenOptions, 'format'> = {}): Qcow2Image {
  const opened = openAt(file, { ...o, format: 'qcow2' }, 0);
  return opened.qcow2!;
}

/**
 * Creates a qcow2 file (emptying an existing one, as qemu-img create does,
 * unless another process has it open) and keeps it open read-write.
 */
export function createQcow2File(
  file: string,
  o: CreateOptions,
  open: OpenOptions & { shownAs?: string; dataFileBase?: string } = {},
): Qcow2Image {
  if (o.backingFile !== undefined && o.backingFile === '') throw new InvalidArgumentError('empty backing file name');
  const { shownAs, dataFileBase, ...engine } = open;
  // qcow2_co_create refuses bad data file options before it creates either file.
  if (o.dataFile !== undefined || o.dataFileRaw) resolveCreateOptions(o);
  const storage = FileStorage.create(file, { lock: LOCKS.qcow2ReadWrite, name: shownAs ?? file });
  let data: BlockStorage | null = null;
  try {
    if (o.dataFile !== undefined) data = createDataFile(o.dataFile, dataFileBase);
    const openDataFile = open.openDataFile ?? (data ? () => data : undefined);
    return Qcow2Image.create(storage, o, { ...engine, openDataFile, openBacking: open.openBacking ?? backingOpener(file, 0, { shownAs, dataFileBase }) });
  } catch (e) {
    data?.close();
    storage.close();
    throw e;
  }
}

/**
 * Refuses, as qemu-img create and convert do (raw_co_create's locks), to
 * replace a file another process has open; a missing file is fine. Call it
 * before writing a new file meant to be renamed over this one.
 */
export function assertReplaceable(file: string, shownAs = file): void {
  if (!fs.existsSync(file)) return;
  FileStorage.open(file, { lock: LOCKS.create, name: shownAs }).close();
}
