import { execa } from 'execa';
import { HangError, QemuToolError } from './errors.js';
import { shellPool } from './shell.js';

export interface ToolResult {
  rc: number;
  stdout: string;
  stderr: string;
}

/**
 * Default per-call hang guard. Only a hang may reach it: qemu-img create of a LUKS image spends 2.5 s of CPU
 * in its PBKDF2 benchmark whatever iter-time asks (idle here), and beside two CPU hogs and a test suite on
 * two cores one such create outlived 30 s; a hung tool costs a campaign this long once, a finding.
 */
export const DEFAULT_TIMEOUT_MS = 120_000;

export const QEMU_IMG = process.env.QEMU_IMG ?? 'qemu-img';
export const QEMU_IO = process.env.QEMU_IO ?? 'qemu-io';

/** Set QH_DIRECT_SPAWN=1 to spawn every tool from Node instead of through the shell pool. */
const DIRECT = process.env.QH_DIRECT_SPAWN === '1';

/** Runs a tool with a timeout; never rejects on a non-zero exit, throws HangError on timeout. */
export async function runTool(tool: string, args: string[], timeoutMs = DEFAULT_TIMEOUT_MS): Promise<ToolResult> {
  if (DIRECT) return runDirect(tool, args, timeoutMs);
  const [r] = await shellPool.run([{ tool, args, timeoutMs }]);
  if (r!.timedOut) throw new HangError(tool, args, timeoutMs);
  return { rc: r!.rc, stdout: r!.stdout, stderr: r!.stderr };
}

async function runDirect(tool: string, args: string[], timeoutMs: number): Promise<ToolResult> {
  const r = await execa(tool, args, {
    reject: false,
    timeout: timeoutMs,
    killSignal: 'SIGKILL',
    stdin: 'ignore',
    encoding: 'utf8',
    stripFinalNewline: false,
    env: { LC_ALL: 'C' },
  });
  if (r.timedOut) throw new HangError(tool, args, timeoutMs);
  if (r.exitCode === undefined) {
    if (r.signal) return { rc: 128 + signalNumber(r.signal), stdout: String(r.stdout ?? ''), stderr: `killed by ${r.signal}\n${String(r.stderr ?? '')}` };
    throw new QemuToolError(`${tool} could not run: ${r.message}`);
  }
  return { rc: r.exitCode, stdout: String(r.stdout ?? ''), stderr: String(r.stderr ?? '') };
}

function signalNumber(sig: string): number {
  const table: Record<string, number> = { SIGABRT: 6, SIGSEGV: 11, SIGKILL: 9, SIGBUS: 7, SIGTERM: 15, SIGFPE: 8 };
  return table[sig] ?? 1;
}
