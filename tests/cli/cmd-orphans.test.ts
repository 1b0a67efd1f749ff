/**
 * A program under test runs in a process group of its own, out of reach of
 * the terminal's Ctrl-C and of whatever stops the harness. Stopped by any
 * signal, even SIGKILL, the harness must not leave it running: a libqcow
 * reader stuck in its hang past a shorter backing file spun on for half an
 * hour after `fuzz --target libqcow` was killed (src/harness/targets/group-guard.ts).
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureBuilt } from './helpers.js';

const REPO = path.resolve(path.dirname(new URL(import.meta.url).pathname), '../..');
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qh-cmd-orphans-'));

beforeAll(async () => {
  await ensureBuilt();
});
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

describe('programs under test do not outlive the harness', () => {
  for (const signal of ['SIGKILL', 'SIGTERM', 'SIGINT'] as const) {
    it(`a program that never answers is gone once the harness dies of ${signal}`, async () => {
      const pidFile = path.join(dir, `${signal}.pid`);
      // It ignores its stdin and TERM: only the KILL of its group ends it.
      const program = `trap '' TERM INT HUP; echo $$ >${pidFile}; while :; do sleep 1; done`;
      const script = `
        const { CmdSession } = await import(${JSON.stringify(path.join(REPO, 'dist/harness/targets/cmd-session.js'))});
        const fs = await import('node:fs');
        new CmdSession('stuck', ${JSON.stringify(program)}, ${JSON.stringify(dir)}, 600000);
        while (!fs.existsSync(${JSON.stringify(pidFile)})) await new Promise((r) => setTimeout(r, 20));
        process.kill(process.pid, ${JSON.stringify(signal)});
        await new Promise((r) => setTimeout(r, 600000));
      `;
      const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8', timeout: 120_000 });
      expect(r.signal).toBe(signal);
      const pid = Number(fs.readFileSync(pidFile, 'utf8').trim());
      // The guard acts on its own once the pipe closes; wait for it, however long a loaded machine takes.
      for (let i = 0; i < 600 && alive(pid); i++) await new Promise((res) => setTimeout(res, 100));
      expect(alive(pid)).toBe(false);
    });
  }
});
