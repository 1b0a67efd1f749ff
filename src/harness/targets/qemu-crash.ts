/**
 * Crash states of QEMU's own driver: what a qemu-io killed in the middle of
 * its work leaves on disk. The ts target simulates power loss over its write
 * log; QEMU's writes cannot be recorded, but its process can be killed, and a
 * killed process leaves exactly what the driver had handed to the kernel: the
 * guest data and whichever metadata its caches had written back, nothing of
 * what they still held (the order in which qcow2 writes its data, L2 tables and
 * refcounts is what decides whether that is a consistent image).
 *
 * The target keeps a copy of the image (and of its data file) from before
 * each qemu-io batch, and the batch's commands. At a crash op the batch runs
 * again on a copy of that copy with the write cache on (-t writeback, so only
 * the batch's own flushes are barriers) and ends in `sigraise 9` instead of a
 * close; the state it leaves is opened once read-write by qemu-io (which
 * repairs a dirty lazy-refcounts image, as any open does), read whole with
 * qemu-img convert, and judged by the crash oracle against every value each
 * sector held since the model's last flush. The live image is untouched: the
 * run goes on with it, as after a crash op of the ts target.
 *
 * After a qemu-img op (snapshot, amend, resize, or any op run on its own) the
 * process closed the image: nothing is pending and the op offers no state.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { imageOptsString, imgConvertToRaw, QEMU_IO, runTool, secretArgs, type ImageAccess } from '../../qemu/index.js';
import type { CrashCoverage, CrashImage } from './types.js';

interface SavedBatch {
  commands: string[];
  /** Files the commands read (write -s): kept until the batch is replaced. */
  inputs: string[];
}

export class QemuCrashPoint {
  private saved: SavedBatch | undefined;

  constructor(
    private readonly dir: string,
    private readonly image: string,
    /** The image's external data file (config.dataFile), copied along with it. */
    private readonly dataFile: string | undefined,
    private readonly access: ImageAccess | undefined,
    private readonly timeoutMs?: number,
  ) {}

  private file(what: 'image' | 'data', when: 'before' | 'crash'): string {
    return path.join(this.dir, `${when}-batch.${what === 'image' ? 'qcow2' : 'data'}`);
  }

  /** Call before a qemu-io batch runs: the image as it is now is where a crash replay starts. */
  beforeBatch(commands: string[], inputs: string[]): void {
    this.forget();
    fs.copyFileSync(this.image, this.file('image', 'before'));
    if (this.dataFile) fs.copyFileSync(this.dataFile, this.file('data', 'before'));
    this.saved = { commands, inputs };
  }

  /** Call after an op that is not one of a batch: the image was closed, nothing is pending. */
  forget(): void {
    for (const f of this.saved?.inputs ?? []) fs.rmSync(f, { force: true });
    this.saved = undefined;
  }

  /** Whether the input files of the batch must outlive it (they do while it may be replayed). */
  get keepsInputs(): boolean {
    return this.saved !== undefined;
  }

  async crashImages(visit: (image: CrashImage, n: number, total: number) => Promise<boolean>): Promise<CrashCoverage> {
    const none: CrashCoverage = { mode: 'every-prefix', pending: 0, states: 0, torn: 0, tornKnown: 0 };
    const b = this.saved;
    if (!b) return none;
    const image = this.file('image', 'crash');
    fs.copyFileSync(this.file('image', 'before'), image);
    const access: ImageAccess | undefined = this.dataFile ? { ...this.access, dataFile: this.file('data', 'crash') } : this.access;
    if (this.dataFile) fs.copyFileSync(this.file('data', 'before'), this.file('data', 'crash'));
    const label = `qemu-io killed (sigraise 9) after the ${b.commands.length} commands of its batch, write cache on`;
    await visit(await this.killedState(image, access, b.commands, label), 0, 1);
    return { mode: 'every-prefix', pending: b.commands.filter((c) => !/^\s*flush\b/.test(c)).length, states: 1, torn: 0, tornKnown: 0 };
  }

  private async killedState(image: string, access: ImageAccess | undefined, commands: string[], label: string): Promise<CrashImage> {
    const named = access ? [...secretArgs(access), '--image-opts'] : ['-f', 'qcow2'];
    const operand = access ? imageOptsString(image, access) : image;
    const cmds = [...commands, 'sigraise 9'].flatMap((c) => ['-c', c]);
    await runTool(QEMU_IO, ['-t', 'writeback', ...named, ...cmds, operand], this.timeoutMs);
    // Opened read-write once, as the next user of the image would: a dirty image is repaired here.
    const opened = await runTool(QEMU_IO, [...named, '-c', 'flush', operand], this.timeoutMs);
    if (opened.rc !== 0) return { opened: false, label, error: (opened.stderr || opened.stdout).trim() || `qemu-io rc ${opened.rc}` };
    const raw = path.join(this.dir, 'crash-batch.raw');
    try {
      await imgConvertToRaw(image, raw, { timeoutMs: this.timeoutMs, access });
    } catch (e) {
      return { opened: false, label, error: (e as Error).message };
    }
    const guest = new Uint8Array(fs.readFileSync(raw));
    fs.rmSync(raw, { force: true });
    return { opened: true, label, size: guest.length, guest, file: () => image };
  }
}
