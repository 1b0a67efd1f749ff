/**
 * Start-up cost is what a command needs: the image commands and every --help
 * load neither fast-check, execa nor the harness, and zstd-napi only when a
 * zstd cluster is actually compressed or decompressed. Checked by recording
 * the modules the process loads (fixtures/record-imports.mjs), not by timing.
 */
import { execa } from 'execa';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { ok, qemuImg, scratchDir } from './helpers.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const dir = scratchDir('startup');
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

/**
 * The bundled CLI (scripts/bundle.mjs) loads chunks, not modules: its manifest
 * says which dist/ modules each chunk holds, so a loaded chunk counts as all
 * of them (a chunk is loaded whole).
 */
const CHUNKS = path.join(root, 'dist/cli/chunks/modules.json');
const manifest: Record<string, string[]> = fs.existsSync(CHUNKS) ? JSON.parse(fs.readFileSync(CHUNKS, 'utf8')) : {};
const modulesOf = (distFile: string): string[] => (distFile.startsWith('cli/') ? manifest[distFile.slice(4)] : undefined) ?? [distFile];

let n = 0;
/** The packages and the dist/ files a command line loads. */
async function loaded(args: string[]): Promise<{ packages: string[]; dist: string[] }> {
  const log = path.join(dir, `imports-${n++}.log`);
  const r = await execa(
    process.execPath,
    ['--import', path.join(root, 'tests/cli/fixtures/record-imports.mjs'), path.join(root, 'dist/cli/main.js'), ...args],
    { cwd: dir, reject: false, env: { QH_IMPORT_LOG: log } },
  );
  expect(r.exitCode, `${args.join(' ')}: ${r.stderr}`).toBeLessThan(64);
  const packages = new Set<string>();
  const dist = new Set<string>();
  for (const line of fs.readFileSync(log, 'utf8').split('\n')) {
    const pkg = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(line);
    if (pkg) packages.add(pkg[1]!);
    else if (line.includes('/dist/')) for (const m of modulesOf(line.slice(line.lastIndexOf('/dist/') + 6))) dist.add(m);
  }
  return { packages: [...packages].sort(), dist: [...dist].sort() };
}

/** The error classes src/cli/errors.ts maps to exit codes: one small file each, loaded by every command. */
const ERROR_CLASSES = ['qcow2/errors.js', 'qemu/errors.js'];

/** The dist/ areas of a file list (cli, qcow2, harness, ...), the error classes aside. */
const areas = (files: string[]) => [...new Set(files.filter((f) => !ERROR_CLASSES.includes(f)).map((f) => f.split('/')[0]!))].sort();

describe('start-up', () => {
  it('--help loads the CLI alone (and the error classes)', async () => {
    for (const args of [['--help'], ['fuzz', '--help'], ['replay', '--help'], ['merge', '--help'], ['bench', '--help'], ['minimize', '--help']]) {
      const { packages, dist } = await loaded(args);
      expect({ args, packages, outside: dist.filter((f) => !f.startsWith('cli/') && !ERROR_CLASSES.includes(f)) }).toEqual({ args, packages: [], outside: [] });
    }
  });

  it('the image commands load the CLI and the engine (io the op table only for a line that needs it), zstd-napi only for a zstd cluster', async () => {
    ok(await qemuImg(['create', '-q', '-f', 'qcow2', path.join(dir, 'a.qcow2'), '1M']), 'create');
    ok(await qemuImg(['create', '-q', '-f', 'qcow2', '-o', 'compression_type=zstd', path.join(dir, 'z.qcow2'), '1M']), 'create');
    // io loads the op table's descriptions (harness/ops, with the model's sector
    // layer) only when a line is no qemu-io command, and never the campaign
    // machinery: runner, targets, fast-check, execa.
    const engine = ['cli', 'qcow2'];
    const opTable = ['cli', 'harness', 'model', 'qcow2'];
    const cases: [string[], string[], string[]][] = [
      [['info', 'a.qcow2'], [], engine],
      [['check', 'a.qcow2'], [], engine],
      [['io', 'a.qcow2', '-c', 'write -c 0 64k', '-c', 'read 0 64k'], [], engine],
      // reopen and close are qemu-io commands; a fault op is the harness's alone.
      [['io', 'a.qcow2', '-c', 'reopen -r', '-c', 'close'], [], engine],
      [['io', 'a.qcow2', '-c', 'fault flush@1 eio write 0 512', '-c', 'read 0 64k'], [], opTable],
      [['create', '-q', 'b.qcow2', '1M'], [], engine],
      [['convert', '-O', 'raw', 'a.qcow2', 'a.raw'], [], engine],
      // A zstd image whose clusters are not compressed never needs the codec.
      [['info', 'z.qcow2'], [], engine],
      [['io', 'z.qcow2', '-c', 'write -c 0 64k'], ['zstd-napi'], engine],
    ];
    for (const [args, packages, expected] of cases) {
      const l = await loaded(args);
      const harness = l.dist.filter((f) => f.startsWith('harness/') && !f.startsWith('harness/ops/') && f !== 'harness/data.js');
      expect({ args, packages: l.packages, areas: areas(l.dist), harness }).toEqual({ args, packages, areas: expected, harness: [] });
    }
  });

  it('fuzz loads the harness and fast-check once its command line is read', async () => {
    const l = await loaded(['fuzz', '--runs', '1', '--seed', '1', '--corpus', path.join(dir, 'corpus')]);
    expect(areas(l.dist)).toContain('harness');
    for (const x of ['fast-check', 'execa']) expect(l.packages).toContain(x);
  });
});
