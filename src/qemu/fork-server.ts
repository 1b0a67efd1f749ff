/**
 * The fork server (native/forkserver.c): qemu-img and qemu-io preloaded with
 * a library that, instead of running main() once, forks for each command and
 * runs main() with the command's arguments in the child. What a command skips
 * is its exec(2), the mapping of ~20 shared libraries and ~4,000 symbol
 * relocations: a small `qemu-img info` costs 1.2 ms of CPU this way and 3.3 ms
 * exec'd from bash (`perf stat`, 200 calls each), and a ts campaign makes
 * four or five such calls per run. The code that runs is the tool's own,
 * from its main() on, in a process of its own, with the arguments,
 * environment, working directory and files bash would have given it.
 *
 * Only for qemu-img and qemu-io (the per-run oracles), only when the library
 * was built, and not when QH_FORK_SERVER=0. A binary the preload cannot
 * reach (static, or a loader that refuses it) never says it is ready, and
 * shell.ts then runs it through bash for the rest of the process.
 */
import * as path from 'node:path';
import { packageFile } from '../qcow2/storage/native.js';

export const FORK_SERVER_RELATIVE_PATH = 'native/build/Release/qh_forkserver.node';
/** The server's first line: it is running inside the tool and reads requests. */
export const READY_LINE = 'QH-FS 1';
/** Tools worth a server: the ones a campaign calls per run. */
const SERVED = new Set(['qemu-img', 'qemu-io']);

let library: string | null | undefined;

function libraryPath(): string | undefined {
  if (library === undefined) library = packageFile(FORK_SERVER_RELATIVE_PATH) ?? null;
  return library ?? undefined;
}

/** Whether commands of this resolved tool go through a fork server. */
export function forkServed(file: string): boolean {
  if (process.env.QH_FORK_SERVER === '0') return false;
  return SERVED.has(path.basename(file)) && libraryPath() !== undefined;
}

/**
 * The environment a server for `file` starts with: the caller's, with the
 * library preloaded ahead of any LD_PRELOAD the user set (which the server
 * puts back for the commands: QH_FS_PRELOAD_WAS), and the prefix of its files.
 */
export function serverEnv(base: NodeJS.ProcessEnv, prefix: string): NodeJS.ProcessEnv {
  const lib = libraryPath()!;
  const env: NodeJS.ProcessEnv = { ...base, QH_FS_PREFIX: prefix };
  if (base.LD_PRELOAD !== undefined) env.QH_FS_PRELOAD_WAS = base.LD_PRELOAD;
  env.LD_PRELOAD = base.LD_PRELOAD ? `${lib}:${base.LD_PRELOAD}` : lib;
  return env;
}

/** One command's request: its file base and arguments, NUL-terminated fields. */
export function startRequest(base: string, args: readonly string[]): string {
  return ['C', base, String(args.length), ...args].map((f) => `${f}\0`).join('');
}

/** Wait for the batch's commands, then answer "D id". */
export const reapRequest = (id: number): string => `R\0${id}\0`;

/** An argument execve cannot carry (a NUL byte) goes to bash, which reports it as it always did. */
export const encodable = (args: readonly string[]): boolean => args.every((a) => !a.includes('\0'));
