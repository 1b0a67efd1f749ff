/**
 * Where a command writes. Commands never touch process.stdout directly, so
 * tests can run them in-process and look at what they printed.
 */
export interface CliContext {
  stdout(text: string): void;
  stderr(text: string): void;
  /** Directory relative paths are resolved against (process.cwd() for the bin). */
  cwd: string;
}

export function processContext(): CliContext {
  return {
    stdout: (t) => process.stdout.write(t),
    stderr: (t) => process.stderr.write(t),
    cwd: process.cwd(),
  };
}

/** A context that records output, for tests and for commands that call others. */
export function bufferContext(cwd = process.cwd()): CliContext & { out: string; err: string } {
  const ctx = {
    out: '',
    err: '',
    cwd,
    stdout(t: string) {
      ctx.out += t;
    },
    stderr(t: string) {
      ctx.err += t;
    },
  };
  return ctx;
}

/** A command: argv after the command name in, exit code out. */
export type Command = (argv: string[], ctx: CliContext) => Promise<number>;
