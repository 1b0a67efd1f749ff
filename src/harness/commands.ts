/**
 * Entry points of the harness's own subcommands (fuzz, replay, minimize).
 * The CLI (src/cli) only dispatches argv here. Placeholder until the runner lands.
 */
export async function fuzzCommand(argv: string[]): Promise<number> {
  if (argv.includes('--help')) {
    process.stdout.write('usage: qcow2-harness fuzz [--target ts|qemu|cmd:PROG] [--time S | --runs N] ...\n');
    return 0;
  }
  process.stderr.write('fuzz: not implemented yet\n');
  return 2;
}

export async function replayCommand(argv: string[]): Promise<number> {
  if (argv.includes('--help')) {
    process.stdout.write('usage: qcow2-harness replay DIR|corpus/<id>\n');
    return 0;
  }
  process.stderr.write('replay: not implemented yet\n');
  return 2;
}

export async function minimizeCommand(argv: string[]): Promise<number> {
  if (argv.includes('--help')) {
    process.stdout.write('usage: qcow2-harness minimize corpus/<id>\n');
    return 0;
  }
  process.stderr.write('minimize: not implemented yet\n');
  return 2;
}
