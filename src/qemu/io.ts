/**
 * Runs a batch of qemu-io commands in one process (one open of the image), and
 * attributes qemu-io's output back to each command so a failure in the middle
 * of a batch is reported against the right op.
 */
import { imageOptsString, needsImageOpts, secretArgs, type ImageAccess } from './access.js';
import { QemuToolError } from './errors.js';
import { DEFAULT_TIMEOUT_MS, QEMU_IO, runTool } from './run.js';

export interface IoCommandResult {
  command: string;
  ok: boolean;
  /** qemu-io's error text for a failed command ("Invalid argument", ...). */
  error?: string;
}

export interface IoBatchResult {
  rc: number;
  results: IoCommandResult[];
  stdout: string;
  stderr: string;
}

// Commands that print one status line ("wrote ...", "discard ...", "read ...")
// on success and "<name> failed: <why>" on failure. flush prints nothing on success.
const SILENT = new Set(['flush']);
const STATUS = /^(wrote|discard|read) \d+\/\d+ bytes at offset \d+$/;
const FAILED = /^(\w+) failed: (.*)$/;

export async function qemuIoBatch(
  path: string,
  commands: string[],
  o: { format?: string; timeoutMs?: number; lineBuffered?: boolean; access?: ImageAccess } = {},
): Promise<IoBatchResult> {
  const opts = (o.format ?? 'qcow2') === 'qcow2' && needsImageOpts(o.access);
  const args = opts ? [...secretArgs(o.access), '--image-opts'] : ['-f', o.format ?? 'qcow2'];
  for (const c of commands) args.push('-c', c);
  args.push(opts ? imageOptsString(path, o.access) : path);
  // A batch that ends in `abort` loses stdio's buffered status lines unless they go out line by line.
  const r = o.lineBuffered
    ? await runTool('stdbuf', ['-oL', QEMU_IO, ...args], o.timeoutMs ?? DEFAULT_TIMEOUT_MS)
    : await runTool(QEMU_IO, args, o.timeoutMs ?? DEFAULT_TIMEOUT_MS);
  if (/can't open/.test(r.stderr)) {
    throw new QemuToolError(`qemu-io could not open ${path}: ${r.stderr.trim()}`, r.rc, r.stderr);
  }
  // qemu-io 7.2 prints every status line, success or failure, to stdout in command order.
  const seq = r.stdout.split('\n').filter((l) => STATUS.test(l) || FAILED.test(l));
  const results: IoCommandResult[] = [];
  let i = 0;
  for (const command of commands) {
    const name = command.trim().split(/\s+/)[0] ?? '';
    if (SILENT.has(name)) {
      const line = seq[i];
      const m = line !== undefined ? FAILED.exec(line) : null;
      if (m && m[1] === name) {
        results.push({ command, ok: false, error: m[2] });
        i++;
      } else {
        results.push({ command, ok: true });
      }
      continue;
    }
    const line = seq[i++];
    if (line === undefined) {
      // qemu-io died (crash, abort): this and the following commands did not complete.
      results.push({ command, ok: false, error: `no output (qemu-io rc ${r.rc}): ${r.stderr.trim()}` });
      continue;
    }
    const m = FAILED.exec(line);
    results.push(m ? { command, ok: false, error: m[2] } : { command, ok: true });
  }
  if (r.rc !== 0 && results.every((x) => x.ok)) {
    throw new QemuToolError(`qemu-io exited ${r.rc} with every command reported done: ${r.stderr.trim()}`, r.rc, r.stderr);
  }
  return { rc: r.rc, results, stdout: r.stdout, stderr: r.stderr };
}
