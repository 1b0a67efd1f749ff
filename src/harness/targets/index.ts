import { CmdTarget } from './cmd.js';
import { QemuTarget } from './qemu.js';
import { TsTarget } from './ts.js';
import type { Target } from './types.js';

export class UnknownTargetError extends Error {}

/** `ts`, `qemu`, or `cmd:<program>` (a command line run through the shell). */
export function makeTarget(spec: string, o: { strict?: boolean; timeoutMs?: number } = {}): Target {
  if (spec === 'ts') return new TsTarget();
  if (spec === 'qemu') return new QemuTarget(o.timeoutMs, { strict: o.strict });
  if (spec.startsWith('cmd:') && spec.length > 4) return new CmdTarget(spec.slice(4), o.timeoutMs);
  throw new UnknownTargetError(`unknown target '${spec}' (expected ts, qemu or cmd:<program>)`);
}

export function isTargetSpec(spec: string): boolean {
  return spec === 'ts' || spec === 'qemu' || (spec.startsWith('cmd:') && spec.length > 4);
}
