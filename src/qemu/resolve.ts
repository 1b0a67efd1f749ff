/**
 * Where a tool runs from, found the way execvp(3) finds it, once per tool and
 * PATH rather than once per call: the shell runner execs the absolute path,
 * so a campaign's thousands of qemu-img calls do not each try every PATH
 * directory (strace showed ~10 failed execve per call with a long PATH).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

/** glibc's execvp search path when PATH is unset (confstr _CS_PATH). */
const DEFAULT_PATH = '/bin:/usr/bin';
/** The shell's exit codes for a command it could not run (POSIX, "Command Search and Execution"). */
export const NOT_FOUND_RC = 127;
export const NOT_EXECUTABLE_RC = 126;

export type Resolved = { ok: true; file: string } | { ok: false; rc: number; message: string };

const cache = new Map<string, string>();

type Probe = 'ok' | 'denied' | 'absent';

function probe(file: string): Probe {
  let st: fs.Stats;
  try {
    st = fs.statSync(file);
  } catch {
    return 'absent';
  }
  // execve of a directory or of a file without an x bit fails with EACCES.
  if (!st.isFile()) return 'denied';
  try {
    fs.accessSync(file, fs.constants.X_OK);
    return 'ok';
  } catch {
    return 'denied';
  }
}

function failure(tool: string, denied: boolean): Resolved {
  const why = denied ? 'Permission denied' : 'No such file or directory';
  return { ok: false, rc: denied ? NOT_EXECUTABLE_RC : NOT_FOUND_RC, message: `failed to run command '${tool}': ${why}\n` };
}

/**
 * A name with a slash is used as given (execvp does not search for it); any
 * other name is looked up in each PATH directory in turn, an empty entry
 * meaning the current directory, skipping entries that exist but cannot be
 * executed, as execvp does after an EACCES. Only successes are cached, so a
 * tool installed later is found on the next call.
 */
export function resolveTool(tool: string, searchPath: string | undefined = process.env.PATH): Resolved {
  if (tool.includes('/')) {
    const p = probe(tool);
    return p === 'ok' ? { ok: true, file: tool } : failure(tool, p === 'denied');
  }
  const dirs = searchPath ?? DEFAULT_PATH;
  const key = `${tool}\0${dirs}`;
  const hit = cache.get(key);
  if (hit !== undefined) return { ok: true, file: hit };
  let denied = false;
  for (const dir of dirs.split(':')) {
    // Absolute, so the shell never searches PATH for it (a relative dir would look like a bare name).
    const file = path.resolve(dir === '' ? '.' : dir, tool);
    const p = probe(file);
    if (p === 'ok') {
      cache.set(key, file);
      return { ok: true, file };
    }
    if (p === 'denied') denied = true;
  }
  return failure(tool, denied);
}
