#!/usr/bin/env node
import { processContext } from './context.js';
import { EXIT_OK, reportError } from './errors.js';
import { runCli } from './run.js';

// The catch-alls: whatever escapes runCli (it should be nothing), or is
// thrown later from a callback, still ends as one line on stderr and an exit
// code, never a stack trace.
function fatal(e: unknown): void {
  const { message, exitCode } = reportError(e);
  process.stderr.write(`qcow2-harness: ${message}\n`);
  process.exit(exitCode);
}
process.on('uncaughtException', fatal);
process.on('unhandledRejection', fatal);
// A closed pipe (`qcow2-harness info x | head -1`) is the reader's choice, not an error.
process.stdout.on('error', (e: NodeJS.ErrnoException) => {
  if (e.code === 'EPIPE') process.exit(EXIT_OK);
  fatal(e);
});

runCli(process.argv.slice(2), processContext()).then((code) => {
  process.exitCode = code;
}, fatal);
