/**
 * The tool shells (src/qemu/shell.ts) as whole processes see them.
 *
 * A campaign's CPU must reach whoever waits for it (bench's campaign row
 * reads its own cutime/cstime): the CLI has to wait for the shells its
 * qemu-img calls run in. QEMU_IMG points at a wrapper that counts its calls
 * and burns 2 clock ticks of its own CPU before exec'ing qemu-img, so the
 * campaign's children must account for at least calls x 20 ms, on any
 * machine, however slow or loaded: CPU is counted, not timed.
 *
 * And a process that dies without a word (SIGKILL) leaves no command
 * running past it: the shells' watchdogs stop them, as `timeout` did.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureBuilt } from './helpers.js';

const REPO = path.resolve(path.dirname(new URL(import.meta.url).pathname), '../..');
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qh-campaign-cpu-'));
const BURN_TICKS = 2;

// Runs argv, and reads its /proc stat once it has exited but before it is reaped (waitid WNOWAIT):
// utime+stime are its own CPU, cutime+cstime that of the children it waited for.
const ZOMBIE_STAT = `
import json, os, sys
hz = os.sysconf('SC_CLK_TCK')
pid = os.fork()
if pid == 0:
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.execv(sys.argv[1], sys.argv[1:])
os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
s = open('/proc/%d/stat' % pid).read()
f = s[s.rindex(')') + 2:].split()
_, status = os.waitpid(pid, 0)
print(json.dumps({'own': (int(f[11]) + int(f[12])) / hz, 'children': (int(f[13]) + int(f[14])) / hz, 'hz': hz, 'exit': os.waitstatus_to_exitcode(status)}))
`;

beforeAll(async () => {
  await ensureBuilt();
  const real = execFileSync('/bin/sh', ['-c', 'command -v qemu-img'], { encoding: 'utf8' }).trim();
  // The burn runs in a function, whose positional parameters are its own: "$@" stays qemu-img's.
  fs.writeFileSync(
    path.join(dir, 'qemu-img'),
    `#!/bin/sh
echo x >>'${dir}/calls'
burn() {
  while :; do
    read -r l </proc/$$/stat
    set -- \${l##*)}
    [ $((\${12} + \${13})) -ge ${BURN_TICKS} ] && return
  done
}
burn
exec '${real}' "$@"
`,
    { mode: 0o755 },
  );
});
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

describe('tool shells, process-wide', () => {
  it("a ts campaign's waited-for children include every qemu-img call's CPU", () => {
    const out = execFileSync(
      '/usr/bin/python3',
      ['-c', ZOMBIE_STAT, process.execPath, path.join(REPO, 'dist/cli/main.js'), 'fuzz', '--target', 'ts', '--runs', '6', '--seed', '1', '--corpus', path.join(dir, 'corpus')],
      { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, QEMU_IMG: path.join(dir, 'qemu-img') } },
    );
    const r = JSON.parse(out) as { own: number; children: number; hz: number; exit: number };
    expect(r.exit).toBe(0);
    const calls = fs.readFileSync(path.join(dir, 'calls'), 'utf8').split('\n').filter(Boolean).length;
    expect(calls).toBeGreaterThanOrEqual(6);
    // Each call's ticks are at least BURN_TICKS; the sum is rounded down to a tick once.
    expect(r.children).toBeGreaterThanOrEqual((calls * BURN_TICKS - 1) / r.hz);
  });

  it('a process killed outright leaves no command running: TERM at once, KILL after the grace for one that ignores TERM', async () => {
    const shell = path.join(REPO, 'dist/qemu/shell.js');
    const a = path.join(dir, 'a.pid');
    const b = path.join(dir, 'b.pid');
    const script = `
      const { shellPool } = await import(${JSON.stringify(shell)});
      const started = shellPool.run([
        { tool: '/bin/sh', args: ['-c', 'echo $$ >${a}; exec sleep 300'], timeoutMs: 600000 },
        { tool: '/bin/sh', args: ['-c', 'trap "" TERM; echo $$ >${b}; while :; do sleep 1; done'], timeoutMs: 600000 },
      ]);
      const fs = await import('node:fs');
      while (!fs.existsSync(${JSON.stringify(a)}) || !fs.existsSync(${JSON.stringify(b)})) await new Promise((r) => setTimeout(r, 20));
      process.kill(process.pid, 'SIGKILL');
      await started;
    `;
    const scratch = fs.mkdtempSync(path.join(dir, 'scratch-'));
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8', env: { ...process.env, QH_SCRATCH_DIR: scratch } });
    expect(r.signal).toBe('SIGKILL');
    const pids = [a, b].map((f) => Number(fs.readFileSync(f, 'utf8').trim()));
    // The signals are sent by the watchdogs on their own; wait for their effect, however long a loaded machine takes.
    for (let i = 0; i < 600 && pids.some(alive); i++) await new Promise((res) => setTimeout(res, 100));
    expect(pids.filter(alive)).toEqual([]);
    // And the watchdogs take the shells' scratch directory with them: nothing of the killed process stays behind.
    for (let i = 0; i < 600 && fs.readdirSync(scratch).length > 0; i++) await new Promise((res) => setTimeout(res, 100));
    expect(fs.readdirSync(scratch)).toEqual([]);
  });

  it("the first tool call removes scratch directories a dead process left, never a live process's or a fresh one", () => {
    const scratch = fs.mkdtempSync(path.join(dir, 'sweep-'));
    const gone = spawnSync('/bin/sh', ['-c', 'echo $$']).stdout.toString().trim();
    const make = (name: string, ageMs: number) => {
      const d = path.join(scratch, name);
      fs.mkdirSync(d);
      fs.writeFileSync(path.join(d, 'x.sh'), '');
      const t = (Date.now() - ageMs) / 1000;
      fs.utimesSync(d, t, t);
      return name;
    };
    const orphan = make(`qh-sh-${gone}-old`, 3_600_000);
    const fresh = make(`qh-sh-${gone}-new`, 0);
    const live = make(`qh-sh-${process.pid}-old`, 3_600_000);
    const other = make('not-ours', 3_600_000);
    const script = `
      const { shellPool } = await import(${JSON.stringify(path.join(REPO, 'dist/qemu/shell.js'))});
      const [r] = await shellPool.run([{ tool: '/bin/sh', args: ['-c', 'echo ran'], timeoutMs: 60000 }]);
      process.stdout.write(r.stdout);
    `;
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8', env: { ...process.env, QH_SCRATCH_DIR: scratch } });
    expect(r.stdout).toBe('ran\n');
    expect(fs.readdirSync(scratch).sort()).toEqual([fresh, live, other].sort());
    expect(fs.existsSync(path.join(scratch, orphan))).toBe(false);
  });
  it('a process killed outright leaves no served command running, and no scratch files', async () => {
    const d = path.join(dir, 'killed');
    const scratch = path.join(d, 'scratch');
    fs.mkdirSync(scratch, { recursive: true });
    const image = path.join(d, 'k.qcow2');
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', image, '1M']);
    const shell = path.join(REPO, 'dist/qemu/shell.js');
    const script = `
      const { shellPool } = await import(${JSON.stringify(shell)});
      const started = shellPool.run([{ tool: 'qemu-io', args: ['-c', 'sleep 300000', ${JSON.stringify(image)}], timeoutMs: 600000 }]);
      const fs = await import('node:fs');
      // Killed once the command runs: its PID file is there.
      for (;;) {
        const d = fs.readdirSync(${JSON.stringify(scratch)}).map((n) => ${JSON.stringify(scratch)} + '/' + n);
        const pid = d.flatMap((x) => fs.readdirSync(x).filter((f) => f.endsWith('.pid')).map((f) => x + '/' + f))[0];
        if (pid) { process.stdout.write(fs.readFileSync(pid, 'utf8')); break; }
        await new Promise((r) => setTimeout(r, 10));
      }
      process.kill(process.pid, 'SIGKILL');
      await started;
    `;
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8', env: { ...process.env, QH_SCRATCH_DIR: scratch } });
    expect(r.signal).toBe('SIGKILL');
    const pid = Number(r.stdout.trim());
    expect(pid).toBeGreaterThan(0);
    // The watchdog acts on its own; wait for its effect however long a loaded machine takes.
    const running = () => {
      try {
        const st = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
        return st.slice(st.lastIndexOf(')') + 2)[0] !== 'Z';
      } catch {
        return false;
      }
    };
    for (let i = 0; i < 600 && (running() || fs.readdirSync(scratch).length > 0); i++) await new Promise((res) => setTimeout(res, 100));
    expect(running()).toBe(false);
    expect(fs.readdirSync(scratch)).toEqual([]);
  });
});

/** Running or sleeping; a zombie waiting for init, or gone, is not. */
function alive(pid: number): boolean {
  try {
    const s = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return s.slice(s.lastIndexOf(')') + 2)[0] !== 'Z';
  } catch {
    return false;
  }
}
