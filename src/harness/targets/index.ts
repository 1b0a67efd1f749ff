import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { packageFile } from '../../qcow2/storage/native.js';
import { QemuReader, TsReader } from '../reader/builtin.js';
import { CmdTarget } from './cmd.js';
import { QemuTarget } from './qemu.js';
import { ReaderTarget } from './reader.js';
import { TsTarget } from './ts.js';
import type { Target } from './types.js';

export class UnknownTargetError extends Error {}

export type ProducerSpec = 'qemu' | 'ts';

export interface TargetOptions {
  strict?: boolean;
  timeoutMs?: number;
  /**
   * Reader mode: the engine that writes the images. With `ts` or `qemu` as
   * the target it makes that engine a reader; reader programs (libqcow, a cmd:
   * program answering as a reader) default to qemu.
   */
  producer?: ProducerSpec;
}

/**
 * Debian's python3-libqcow binds to the system Python, not to whatever
 * `python3` is first on PATH (QH_LIBQCOW_PYTHON overrides it, e.g. to test
 * the message a machine without the package gets).
 */
export const LIBQCOW_PYTHON = process.env.QH_LIBQCOW_PYTHON ?? '/usr/bin/python3';
/** Shipped next to src/ and dist/, found up from this module (which may be a chunk of the bundled CLI). */
export const LIBQCOW_ADAPTER =
  packageFile('adapters/libqcow_adapter.py') ?? path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..', 'adapters', 'libqcow_adapter.py');
export const ADAPTERS_DIR = path.dirname(LIBQCOW_ADAPTER);

/** Why the libqcow target cannot run here, in one line, or undefined when it can. */
export function libqcowMissing(): string | undefined {
  const r = fs.existsSync(LIBQCOW_PYTHON) ? spawnSync(LIBQCOW_PYTHON, ['-c', 'import pyqcow'], { encoding: 'utf8' }) : undefined;
  if (r && r.status === 0) return undefined;
  return `target libqcow needs Debian's python3-libqcow for ${LIBQCOW_PYTHON} (apt-get install python3-libqcow)`;
}

function makeProducer(spec: ProducerSpec, o: TargetOptions): Target {
  return spec === 'ts' ? new TsTarget() : new QemuTarget(o.timeoutMs, { strict: o.strict });
}

/** `ts`, `qemu`, `libqcow`, or `cmd:<program>` (a command line run through the shell). */
export function makeTarget(spec: string, o: TargetOptions = {}): Target {
  const producer = () => makeProducer(o.producer ?? 'qemu', o);
  if (spec === 'ts') return o.producer ? new ReaderTarget(producer(), new TsReader()) : new TsTarget();
  if (spec === 'qemu') return o.producer ? new ReaderTarget(producer(), new QemuReader(o.timeoutMs)) : new QemuTarget(o.timeoutMs, { strict: o.strict });
  if (spec === 'libqcow') return new CmdTarget(`${LIBQCOW_PYTHON} ${shellQuote(LIBQCOW_ADAPTER)}`, o.timeoutMs, { name: 'libqcow', producer });
  if (spec.startsWith('cmd:') && spec.length > 4) return new CmdTarget(spec.slice(4), o.timeoutMs, { producer });
  throw new UnknownTargetError(`unknown target '${spec}' (expected ts, qemu, libqcow or cmd:<program>)`);
}

export function isTargetSpec(spec: string): boolean {
  return spec === 'ts' || spec === 'qemu' || spec === 'libqcow' || (spec.startsWith('cmd:') && spec.length > 4);
}

export function isProducerSpec(spec: string): spec is ProducerSpec {
  return spec === 'qemu' || spec === 'ts';
}

function shellQuote(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}
