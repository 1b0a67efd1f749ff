/**
 * Our engine and QEMU as readers (`--target ts|qemu --producer ...`): the two
 * directions of interoperability between the engines that also write.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { imgConvertToRaw } from '../../qemu/index.js';
import { openImageFile, type OpenedImage } from '../../qcow2/open-file.js';
import { readFileRange } from '../fixture.js';
import type { BackingLink, OpenInfo, Reader } from './types.js';

/** Our engine opening the image file read-only, backing chain resolved from the header. */
export class TsReader implements Reader {
  readonly name = 'ts';
  private img: OpenedImage | undefined;
  private file = '';

  async open(image: string, _chain: BackingLink[]): Promise<OpenInfo> {
    await this.close();
    this.file = image;
    this.img = openImageFile(image, { readOnly: true, format: 'qcow2', forceShare: true });
    return { size: this.img.virtualSize };
  }

  async read(off: number, len: number): Promise<Uint8Array> {
    return this.img!.read(off, len);
  }

  async readSnapshot(id: string, length: number): Promise<Uint8Array> {
    const view = openImageFile(this.file, { readOnly: true, format: 'qcow2', snapshot: id, forceShare: true });
    try {
      return view.read(0, Math.min(length, view.virtualSize));
    } finally {
      view.close();
    }
  }

  async close(): Promise<void> {
    this.img?.close();
    this.img = undefined;
  }
}

/** qemu-img convert -O raw of the image (and of each snapshot, `-l snapshot.id=`), read back from the raw file. */
export class QemuReader implements Reader {
  readonly name = 'qemu';
  private image = '';
  private raw: string | undefined;

  constructor(private readonly timeoutMs?: number) {}

  async open(image: string, _chain: BackingLink[]): Promise<void> {
    this.image = image;
    this.raw = undefined;
  }

  /** The converted file's length: qemu-img convert writes the virtual size QEMU sees. */
  async mediaSize(): Promise<number> {
    return fs.statSync(await this.dump()).size;
  }

  private async dump(): Promise<string> {
    if (!this.raw) {
      const raw = path.join(path.dirname(this.image), 'reader.raw');
      await imgConvertToRaw(this.image, raw, { timeoutMs: this.timeoutMs });
      this.raw = raw;
    }
    return this.raw;
  }

  async read(off: number, len: number): Promise<Uint8Array> {
    return readFileRange(await this.dump(), off, len);
  }

  async readSnapshot(id: string, length: number): Promise<Uint8Array> {
    const raw = path.join(path.dirname(this.image), `reader.snapshot.${id}.raw`);
    await imgConvertToRaw(this.image, raw, { snapshotId: id, timeoutMs: this.timeoutMs });
    try {
      return readFileRange(raw, 0, Math.min(length, fs.statSync(raw).size));
    } finally {
      fs.rmSync(raw, { force: true });
    }
  }

  async close(): Promise<void> {
    if (this.raw) fs.rmSync(this.raw, { force: true });
    this.raw = undefined;
  }
}
