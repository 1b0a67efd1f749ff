/**
 * Reads a persistent dirty bitmap back through QEMU: qemu-nbd exports the
 * image read-only with the bitmap (-B NAME), and qemu-img map over NBD with
 * x-dirty-bitmap reports the bitmap in place of allocation: a dirty granule
 * shows as "data": false (NBD's qemu:dirty-bitmap meta context).
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { imageOptsString, needsImageOpts, secretArgs, type ImageAccess } from './access.js';
import { QemuToolError } from './errors.js';
import { DEFAULT_TIMEOUT_MS, QEMU_IMG, runTool } from './run.js';

export const QEMU_NBD = process.env.QEMU_NBD ?? 'qemu-nbd';

/** Dirty guest byte ranges of bitmap `name` in a qcow2 file, merged, as [offset, length]. */
export async function qemuDirtyRanges(file: string, name: string, timeoutMs = DEFAULT_TIMEOUT_MS, access?: ImageAccess): Promise<[number, number][]> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qh-nbd-'));
  const sock = path.join(dir, 's');
  const pidFile = path.join(dir, 'pid');
  try {
    // qemu-nbd takes the secret and the option string as qemu-img does (--object, --image-opts).
    const image = needsImageOpts(access) ? [...secretArgs(access), '--image-opts', imageOptsString(file, access)] : ['-f', 'qcow2', file];
    const nbd = await runTool(QEMU_NBD, ['-r', '-B', name, '-k', sock, '--fork', `--pid-file=${pidFile}`, ...image], timeoutMs);
    if (nbd.rc !== 0) throw new QemuToolError(`qemu-nbd -B ${name} failed: ${nbd.stderr.trim()}`);
    const opts = `driver=nbd,server.type=unix,server.path=${sock},x-dirty-bitmap=qemu:dirty-bitmap:${name}`;
    const map = await runTool(QEMU_IMG, ['map', '--output=json', '--image-opts', opts], timeoutMs);
    if (map.rc !== 0) throw new QemuToolError(`qemu-img map over NBD failed: ${map.stderr.trim()}`);
    const out: [number, number][] = [];
    for (const e of JSON.parse(map.stdout) as { start: number; length: number; data: boolean }[]) {
      if (e.data) continue;
      const last = out[out.length - 1];
      if (last && last[0] + last[1] === e.start) last[1] += e.length;
      else out.push([e.start, e.length]);
    }
    return out;
  } finally {
    await stopServer(pidFile);
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * qemu-nbd exits when its one client leaves, but not at once: until it has,
 * it holds its lock on the image and a writer that opens the image next is
 * refused. So wait for it to be gone (asking it to go after a while), by its
 * own pid.
 */
async function stopServer(pidFile: string): Promise<void> {
  let pid: number;
  try {
    pid = Number(fs.readFileSync(pidFile, 'utf8').trim());
  } catch {
    return;
  }
  if (!Number.isInteger(pid) || pid <= 0) return;
  const deadline = Date.now() + STOP_WAIT_MS;
  let asked = false;
  while (alive(pid)) {
    if (!asked && Date.now() > deadline - STOP_WAIT_MS / 2) {
      signal(pid, 'SIGTERM');
      asked = true;
    }
    if (Date.now() > deadline) {
      signal(pid, 'SIGKILL');
      return;
    }
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** How long a finished qemu-nbd may take to exit: generous, as the machine may be busy; only a hang waits it out. */
const STOP_WAIT_MS = 20_000;

function alive(pid: number): boolean {
  return signal(pid, 0);
}

/** Sends a signal; false when the process is gone (ESRCH). */
function signal(pid: number, sig: NodeJS.Signals | 0): boolean {
  try {
    process.kill(pid, sig);
    return true;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ESRCH') throw e;
    return false;
  }
}
