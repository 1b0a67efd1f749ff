#!/usr/bin/env node
import { processContext } from './context.js';
import { reportError } from './errors.js';
import { runCli } from './run.js';

// The catch-all: whatever escapes runCli (it should be nothing) still ends as
// one line on stderr and an exit code, never a stack trace.
runCli(process.argv.slice(2), processContext()).then(
  (code) => {
    process.exitCode = code;
  },
  (e: unknown) => {
    const { message, exitCode } = reportError(e);
    process.stderr.write(`qcow2-harness: ${message}\n`);
    process.exitCode = exitCode;
  },
);
