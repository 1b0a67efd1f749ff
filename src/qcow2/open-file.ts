/**
 * Opening images by path: format probing, raw images as devices, and the
 * backing chain resolved as QEMU resolves it (a relative name is relative
 * to the directory of the image that names it).
 */
import fs from 'node:fs';
import path from 'node:path';
import { InvalidArgumentError, InvalidImageError, StorageIoError } from './errors.js';
import { QCOW2_MAGIC } from './format/constants.js';
import { Qcow2Image } from './image.js';
import { FileStorage } from './storage/file.js';
import type { BlockStorage } from './storage/types.js';
import type { BackingFormat, CreateOptions, GuestDevice, OpenOptions } from './types.js';

/** QEMU refuses backing chains deeper than this (BDRV_BACKING_CHAIN_MAX... in practice). */
const MAX_BACKING_DEPTH = 64;

export type ImageFormat = 'qcow2' | 'raw';

export interface OpenedImage extends GuestDevice {
  readonly format: ImageFormat;
  readonly qcow2?: Qcow2Image;
}

/** A raw file seen as a guest device. */
export class RawDevice implements GuestDevice {
  constructor(private readonly storage: BlockStorage) {}
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

export function probeFormat(file: string): ImageFormat {
  let fd: number;
  try {
    fd = fs.openSync(file, 'r');
  } catch (e) {
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

function backingOpener(imagePath: string, depth: number) {
  return (name: string, fmt: BackingFormat | undefined): GuestDevice => {
    if (depth >= MAX_BACKING_DEPTH) throw new InvalidImageError(`backing chain deeper than ${MAX_BACKING_DEPTH} images (a loop?)`);
    // Backing files are only ever read.
    const resolved = path.isAbsolute(name) ? name : path.join(path.dirname(imagePath), name);
    return openAt(resolved, { readOnly: true, format: fmt }, depth + 1);
  };
}

function openAt(file: string, o: OpenOptions & { format?: ImageFormat }, depth: number): OpenedImage {
  const format = o.format ?? probeFormat(file);
  const storage = FileStorage.open(file, { readOnly: o.readOnly ?? false });
  if (format === 'raw') {
    const raw = new RawDevice(storage);
    return Object.assign(raw, { format: 'raw' as const });
  }
  try {
    const img = Qcow2Image.open(storage, {
      ...o,
      openBacking: o.openBacking ?? backingOpener(file, depth),
    });
    return Object.assign(img, { format: 'qcow2' as const, qcow2: img });
  } catch (e) {
    storage.close();
    throw e;
  }
}

export function openImageFile(file: string, o: OpenOptions & { format?: ImageFormat } = {}): OpenedImage {
  return openAt(file, o, 0);
}

export function openQcow2File(file: string, o: OpenOptions = {}): Qcow2Image {
  const opened = openAt(file, { ...o, format: 'qcow2' }, 0);
  return opened.qcow2!;
}

/** Creates a qcow2 file (truncating an existing one, as qemu-img create does). */
export function createQcow2File(file: string, o: CreateOptions, open: OpenOptions = {}): Qcow2Image {
  if (o.backingFile !== undefined && o.backingFile === '') throw new InvalidArgumentError('empty backing file name');
  const storage = FileStorage.create(file);
  try {
    return Qcow2Image.create(storage, o, { ...open, openBacking: open.openBacking ?? backingOpener(file, 0) });
  } catch (e) {
    storage.close();
    throw e;
  }
}
