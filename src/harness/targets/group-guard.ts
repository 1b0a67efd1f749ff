/**
 * Process groups that must not outlive this process, however it ends. A
 * program under test runs in a process group of its own (so a hang is killed
 * whole), which also keeps it out of the terminal's Ctrl-C and out of
 * whatever kills this process: a reader stuck in a library loop (libqcow's
 * hang past a shorter backing file) then spun on after `fuzz` was stopped.
 *
 * The guard is one small shell per process, in a group of its own that
 * ignores INT, TERM and HUP, told on a pipe which groups are live. The pipe
 * reaches end of file when this process exits, is killed, or crashes (the
 * kernel closes it); the guard then sends KILL to every group still listed.
 * It is the pattern of the QEMU tool runner's watchdog (src/qemu/shell.ts),
 * for programs that are not run through it.
 */
import { spawn, type ChildProcessByStdio } from 'node:child_process';
import type { Writable } from 'node:stream';

// Lines "+PGID" add a group, "-PGID" remove one; at end of input every group left gets KILL.
const GUARD_SCRIPT = [
  "trap '' INT TERM HUP",
  'groups=',
  'while read -r line; do',
  '  case $line in',
  '    +*) groups="$groups ${line#+}" ;;',
  '    -*) kept=; for g in $groups; do [ "$g" = "${line#-}" ] || kept="$kept $g"; done; groups=$kept ;;',
  '  esac',
  'done',
  'for g in $groups; do kill -KILL -"$g" 2>/dev/null; done',
].join('\n');

type Guard = ChildProcessByStdio<Writable, null, null>;
let guard: Guard | undefined;

function guardProcess(): Guard {
  if (guard && guard.exitCode === null && guard.signalCode === null) return guard;
  const p = spawn('/bin/sh', ['-c', GUARD_SCRIPT], { stdio: ['pipe', 'ignore', 'ignore'], detached: true });
  p.on('error', () => undefined);
  p.stdin.on('error', () => undefined);
  // Neither the guard nor its pipe keeps this process running.
  p.unref();
  (p.stdin as unknown as { unref?: () => void }).unref?.();
  guard = p;
  return p;
}

/** Kill group `pgid` when this process ends, unless released first. */
export function guardGroup(pgid: number): void {
  guardProcess().stdin.write(`+${pgid}\n`);
}

/** The group has been killed (or has ended): the guard forgets it, so a reused id is never hit. */
export function releaseGroup(pgid: number): void {
  if (guard && guard.exitCode === null && guard.signalCode === null) guard.stdin.write(`-${pgid}\n`);
}
