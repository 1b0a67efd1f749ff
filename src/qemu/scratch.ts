/**
 * Where short-lived scratch files go: RAM (/dev/shm) when it is there and
 * writable, since a campaign writes, reads and removes several small files per
 * run (images for qemu-img, tool output) and a disk file system's journal
 * makes each unlink cost more than the run's work around it. An explicit
 * TMPDIR (or QH_SCRATCH_DIR) wins: a user who points scratch somewhere means it.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';

const RAM_DIR = '/dev/shm';
let chosen: string | undefined;

export function scratchDir(): string {
  const forced = process.env.QH_SCRATCH_DIR || process.env.TMPDIR;
  if (forced) return forced;
  if (chosen === undefined) {
    chosen = os.tmpdir();
    try {
      if (fs.statSync(RAM_DIR).isDirectory()) {
        fs.accessSync(RAM_DIR, fs.constants.W_OK | fs.constants.X_OK);
        chosen = RAM_DIR;
      }
    } catch {
      // No RAM file system here: the system's temp directory.
    }
  }
  return chosen;
}

/**
 * Removes a scratch file that may be absent. fs.rmSync takes Node's rimraf
 * path (an lstat before the unlink); a campaign removes a dozen such files a
 * run, so one unlink(2) whose ENOENT means done.
 */
export function removeScratchFile(file: string): void {
  try {
    fs.unlinkSync(file);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') fs.rmSync(file, { force: true });
  }
}

/**
 * Removes a run's scratch directory: its files one unlink each, then the
 * directory; anything else in it (a subdirectory, a file that will not go)
 * leaves the rest to fs.rmSync's recursive walk with retries.
 */
export function removeScratchDir(dir: string): void {
  try {
    for (const name of fs.readdirSync(dir)) fs.unlinkSync(`${dir}/${name}`);
    fs.rmdirSync(dir);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT' || fs.existsSync(dir)) {
      fs.rmSync(dir, { recursive: true, force: true, maxRetries: 5, retryDelay: 100 });
    }
  }
}
