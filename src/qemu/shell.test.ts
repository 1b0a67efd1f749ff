import * as fs from 'node:fs';
import { describe, expect, it } from 'vitest';
import { shellPool, shutdownShells } from './shell.js';

const SH = '/bin/sh';
const sh = (script: string, timeoutMs = 30_000) => ({ tool: SH, args: ['-c', script], timeoutMs });

/** State of a process (R, S, Z, ...), or undefined once it is gone. */
function state(pid: number): string | undefined {
  try {
    const s = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return s.slice(s.lastIndexOf(')') + 2).split(' ')[0];
  } catch {
    return undefined;
  }
}

/** This process's waited-for children's CPU, seconds: /proc/self/stat cutime + cstime. */
function childCpuSeconds(): number {
  const s = fs.readFileSync('/proc/self/stat', 'utf8');
  const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
  return (Number(f[13]) + Number(f[14])) / 100;
}

describe('shell runner', () => {
  it('returns exit code, stdout and stderr of each command of a parallel batch', async () => {
    const [a, b, c] = await shellPool.run([
      sh(`echo out; echo "it's" >&2; exit 3`),
      // Ends after the others: statuses are matched to commands, not taken in the order they come.
      sh('sleep 0.2; exit 0'),
      { tool: 'echo', args: ["a 'b' $HOME", ''], timeoutMs: 30_000 },
    ]);
    expect(a).toEqual({ rc: 3, stdout: 'out\n', stderr: "it's\n", timedOut: false });
    expect(b).toEqual({ rc: 0, stdout: '', stderr: '', timedOut: false });
    expect(c).toEqual({ rc: 0, stdout: "a 'b' $HOME \n", stderr: '', timedOut: false });
  });

  it('a signal that kills a command is its exit status (128 + signal), not a timeout', async () => {
    const [r] = await shellPool.run([sh('kill -USR1 $$')]);
    expect(r).toEqual({ rc: 138, stdout: '', stderr: '', timedOut: false });
  });

  it('on timeout, TERM goes to the whole process group: what the command started dies with it (rc 124)', async () => {
    // The command's own background child, left in its group, as qemu-img's helpers would be.
    const [slow, fast] = await shellPool.run([sh('sleep 300 & echo $!; wait', 500), sh('echo fast')]);
    expect(slow!.timedOut).toBe(true);
    expect(slow!.rc).toBe(124);
    expect(fast).toEqual({ rc: 0, stdout: 'fast\n', stderr: '', timedOut: false });
    const orphan = Number(slow!.stdout.trim());
    expect(orphan).toBeGreaterThan(0);
    // TERM was sent before the runner answered; its delivery and init's reaping follow on their own.
    for (let i = 0; i < 100 && ![undefined, 'Z'].includes(state(orphan)); i++) await new Promise((r) => setTimeout(r, 100));
    expect([undefined, 'Z']).toContain(state(orphan));
  });

  it('a command that ignores TERM is killed after the grace (rc 137)', async () => {
    const [r] = await shellPool.run([sh('trap "" TERM; echo started; while :; do sleep 1; done', 200)]);
    expect(r).toEqual({ rc: 137, stdout: 'started\n', stderr: '', timedOut: true });
  });

  it('a tool that cannot be run is rc 127 (not found) or 126 (not executable), with the reason, and runs nothing', async () => {
    const [missing, dir, plain] = await shellPool.run([
      { tool: 'qh-no-such-tool', args: [], timeoutMs: 1000 },
      { tool: '/tmp', args: [], timeoutMs: 1000 },
      { tool: '/etc/passwd', args: [], timeoutMs: 1000 },
    ]);
    expect(missing).toEqual({ rc: 127, stdout: '', stderr: "failed to run command 'qh-no-such-tool': No such file or directory\n", timedOut: false });
    expect(dir).toEqual({ rc: 126, stdout: '', stderr: "failed to run command '/tmp': Permission denied\n", timedOut: false });
    expect(plain!.rc).toBe(126);
  });

  it("shutdownShells reaps the shells, so the tools' CPU shows in this process's children's CPU", async () => {
    // The tool burns half a second of its own CPU, measured by itself: the same amount on any machine, slow or loaded.
    const burn = 'const t = process.cpuUsage(); for (;;) { const u = process.cpuUsage(t); if (u.user + u.system >= 5e5) break; }';
    const before = childCpuSeconds();
    const [r] = await shellPool.run([{ tool: process.execPath, args: ['-e', burn], timeoutMs: 120_000 }]);
    expect(r!.rc).toBe(0);
    await shutdownShells();
    expect(shellPool.open).toBe(false);
    // Clock ticks round down; an unreaped shell would add nothing at all.
    expect(childCpuSeconds() - before).toBeGreaterThanOrEqual(0.45);
    // The pool starts a new shell afterwards.
    expect((await shellPool.run([sh('echo again')]))[0]!.stdout).toBe('again\n');
  });
  it('a status that never comes back (scratch directory removed under it) is rc 255 with the cause in stderr, and the next call works', async () => {
    // The command removes the directory its own output and status files live in.
    const [r] = await shellPool.run([sh('d=$(dirname "$(readlink /proc/$$/fd/1)"); case $d in */qh-sh-*) rm -rf "$d" ;; *) exit 9 ;; esac')]);
    expect(r!.rc).toBe(255);
    expect(r!.timedOut).toBe(false);
    expect(r!.stderr).toMatch(/no exit status came back for sh: the shell runner's scratch directory .* was removed or is full/);
    const [next] = await shellPool.run([sh('echo fine')]);
    expect(next).toEqual({ rc: 0, stdout: 'fine\n', stderr: '', timedOut: false });
  });
});
