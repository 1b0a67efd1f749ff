import {
  CorruptImageError,
  InvalidArgumentError,
  InvalidImageError,
  LimitError,
  NotQcow2Error,
  OverlapError,
  Qcow2Error,
  ReadOnlyError,
  SnapshotError,
  StorageIoError,
  UnsupportedFeatureError,
} from '../qcow2/errors.js';
import { ToolError } from '../qemu/errors.js';

/**
 * Exit codes. Failures use 1 as qemu-img and qemu-io do, so scripts written
 * for QEMU's tools keep working; `check` adds qemu-img check's own codes.
 * 70 (EX_SOFTWARE) is kept apart for errors that are bugs in this program.
 */
export const EXIT_OK = 0;
export const EXIT_FAILURE = 1;
export const EXIT_CHECK_CORRUPTIONS = 2;
export const EXIT_CHECK_LEAKS = 3;
export const EXIT_CHECK_UNSUPPORTED = 63;
export const EXIT_INTERNAL = 70;
/**
 * The harness's commands (fuzz, replay, minimize, merge) use 1 for "found a
 * failure", so a bad command line there must be told apart: 2, as grep and
 * diff do.
 */
export const EXIT_HARNESS_USAGE = 2;

/** Bad command line: wrong option, missing argument, bad value. */
export class UsageError extends Error {
  constructor(
    message: string,
    /** The command whose --help to point at, if any. */
    readonly command?: string,
    readonly exitCode = EXIT_FAILURE,
  ) {
    super(message);
    this.name = 'UsageError';
  }
}

/**
 * A failure already reported in the command's own words; only the exit code is left to give.
 * `hint` is a second line printed as is, as QEMU's error_append_hint adds one
 * ("This option is only supported for image creation").
 */
export class CommandFailed extends Error {
  constructor(
    message: string,
    readonly exitCode = EXIT_FAILURE,
    readonly hint?: string,
  ) {
    super(message);
    this.name = 'CommandFailed';
  }
}

function oneLine(s: string): string {
  return s.replace(/\s*\n\s*/g, '; ').trim();
}

/** Adds what kind of problem it is, unless the engine's message already says so. */
function categorised(prefix: string, message: string): string {
  // A backing image's failure carries QEMU's "Could not open backing file: " per level: the kind goes after them.
  const chain = /^(Could not open backing file: )*/.exec(message)![0];
  const reason = message.slice(chain.length);
  return chain + (reason.toLowerCase().includes(prefix.split(' ')[0]!.toLowerCase()) ? reason : `${prefix}: ${reason}`);
}

/** The one line shown for a Qcow2Error, by subclass (most specific first). */
export function describeQcow2Error(e: Qcow2Error): string {
  const m = oneLine(e.message);
  if (e instanceof OverlapError) return categorised('metadata overlap (the image is marked corrupt)', m);
  if (e instanceof CorruptImageError) return categorised('corrupt image', m);
  if (e instanceof NotQcow2Error) return m;
  if (e instanceof InvalidImageError) return categorised('invalid image', m);
  if (e instanceof UnsupportedFeatureError) return categorised('unsupported feature', m);
  if (e instanceof ReadOnlyError) return categorised('read-only', m);
  if (e instanceof StorageIoError) return categorised('I/O error', m);
  if (e instanceof LimitError) return m;
  if (e instanceof SnapshotError) return m;
  if (e instanceof InvalidArgumentError) return m;
  return m;
}

interface ErrnoLike {
  code: string;
  message: string;
  path?: string;
}

function isErrno(e: unknown): e is ErrnoLike {
  return e instanceof Error && typeof (e as { code?: unknown }).code === 'string' && /^E[A-Z]+$/.test((e as unknown as ErrnoLike).code);
}

/** Maps any thrown value to the message and exit code the CLI reports. Never a stack trace. */
export function reportError(e: unknown): { message: string; exitCode: number } {
  if (e instanceof UsageError) {
    const hint = e.command ? `Try 'qcow2-harness ${e.command} --help' for more information` : "Try 'qcow2-harness --help' for more information";
    return { message: `${oneLine(e.message)}\n${hint}`, exitCode: e.exitCode };
  }
  if (e instanceof CommandFailed) return { message: oneLine(e.message) + (e.hint ? `\n${e.hint}` : ''), exitCode: e.exitCode };
  if (e instanceof Qcow2Error) return { message: describeQcow2Error(e), exitCode: EXIT_FAILURE };
  // A QEMU tool that hung or failed (demo's oracles): the environment, not a bug of ours.
  if (e instanceof ToolError) return { message: oneLine(e.message), exitCode: EXIT_FAILURE };
  if (isErrno(e)) return { message: oneLine(e.message), exitCode: EXIT_FAILURE };
  const message = e instanceof Error ? `${e.name}: ${e.message}` : String(e);
  return { message: `internal error (a bug in qcow2-harness, please report it): ${oneLine(message)}`, exitCode: EXIT_INTERNAL };
}
