/**
 * Work a tool does, counted rather than timed: valgrind runs it on its
 * synthetic CPU and reports the instructions executed, which are the same
 * for the same binary and input whatever the machine's speed or load (seen
 * here: repeated counts agree to a few parts per million). Used where a
 * verdict is about how much work QEMU does, so it must not hang on a clock.
 */
import { QemuToolError } from './errors.js';
import { NOT_FOUND_RC } from './resolve.js';
import { runTool } from './run.js';

export const VALGRIND = process.env.VALGRIND ?? 'valgrind';

/** Instrumented runs are ~20x slower than native ones; their timeout is a hang guard, not a verdict. */
const COUNT_TIMEOUT_MS = 300_000;
/** cachegrind with the cache simulation off counts executed instructions ("I refs") and little else. */
const COUNT_ARGS = ['--tool=cachegrind', '--cache-sim=no', '--cachegrind-out-file=/dev/null'];
const I_REFS = /I\s+refs:\s+([\d,]+)/;

export interface CountedRun {
  rc: number;
  instructions: number;
  stderr: string;
}

/** Runs `tool args` under valgrind and returns its exit code and instruction count. */
export async function countInstructions(tool: string, args: string[], timeoutMs = COUNT_TIMEOUT_MS): Promise<CountedRun> {
  const r = await runTool(VALGRIND, [...COUNT_ARGS, tool, ...args], timeoutMs);
  const m = I_REFS.exec(r.stderr);
  if (r.rc === NOT_FOUND_RC && !m) {
    throw new QemuToolError(`${VALGRIND} is needed to count the work of '${tool}' (Debian: apt-get install valgrind)`, r.rc, r.stderr);
  }
  if (!m) throw new QemuToolError(`${VALGRIND} printed no instruction count for ${tool} ${args.join(' ')}: ${r.stderr.trim().slice(-300)}`, r.rc, r.stderr);
  const tail = r.stderr.split('\n').filter((l) => !l.startsWith('==')).join('\n');
  return { rc: r.rc, instructions: Number(m[1]!.replace(/,/g, '')), stderr: tail };
}
