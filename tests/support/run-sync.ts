/**
 * A qemu tool run synchronously for the crypto tests, with the one retry every
 * LUKS test needs: qemu-img measures PBKDF2 speed with thread CPU time when it
 * creates or amends a key slot (qcrypto_pbkdf2_count_iters) and fails with
 * "Unable to get accurate CPU usage" when a trial reads as 0 ms at the tick
 * resolution, which a loaded machine makes likely. That is the tool failing to
 * calibrate before it writes anything, not a verdict, so qemu-img is run again
 * (up to 5 times) on that message alone.
 */
import { spawnSync } from 'node:child_process';

export const CALIBRATION_FAILURE = 'Unable to get accurate CPU usage';

export function runSync(tool: string, args: string[], timeout = 120_000): { rc: number; out: string } {
  for (let attempt = 1; ; attempt++) {
    const r = spawnSync(tool, args, { encoding: 'utf8', env: { ...process.env, LC_ALL: 'C' }, timeout });
    const res = { rc: r.status ?? -1, out: `${r.stdout}${r.stderr}` };
    if (res.rc === 0 || tool !== 'qemu-img' || attempt === 5 || !res.out.includes(CALIBRATION_FAILURE)) return res;
  }
}
