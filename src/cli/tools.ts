import * as fs from 'node:fs';
import * as path from 'node:path';
import { CommandFailed } from './errors.js';

/** The QEMU tools a command drives, with the variables that point at another build (src/qemu/run.ts reads the same). */
const TOOLS = {
  'qemu-img': 'QEMU_IMG',
  'qemu-io': 'QEMU_IO',
} as const;

export type QemuTool = keyof typeof TOOLS;

function executable(file: string): boolean {
  try {
    fs.accessSync(file, fs.constants.X_OK);
    return fs.statSync(file).isFile();
  } catch {
    return false; // absent or not executable: both mean "cannot run it"
  }
}

/** Where `name` runs from: the command itself when it names a path, else the first match on PATH. */
export function findExecutable(name: string, searchPath = process.env.PATH ?? ''): string | undefined {
  if (name.includes('/')) return executable(name) ? name : undefined;
  for (const dir of searchPath.split(path.delimiter)) {
    if (!dir) continue;
    const p = path.join(dir, name);
    if (executable(p)) return p;
  }
  return undefined;
}

/**
 * Fails in one line, before any work, when a QEMU tool the command needs
 * cannot be run: otherwise every run of a campaign would fail its oracles
 * with 'command not found' and look like a finding.
 */
export function requireQemuTools(tools: readonly QemuTool[], env: NodeJS.ProcessEnv = process.env): void {
  for (const tool of tools) {
    const variable = TOOLS[tool];
    const command = env[variable] ?? tool;
    if (findExecutable(command, env.PATH ?? '') !== undefined) continue;
    const where = env[variable] !== undefined ? `${variable}=${command} is not an executable file` : `${tool} is not on PATH`;
    throw new CommandFailed(`${where}: install QEMU's tools (Debian/Ubuntu package qemu-utils: apt-get install qemu-utils)${env[variable] === undefined ? ` or set ${variable}` : ''}`);
  }
}
