/**
 * The npm package as a user gets it: `npm pack`'s file list (the built code,
 * docs and README; no tests, sources, corpus or scratch), and the packed CLI
 * run from the extracted tarball with only the runtime dependencies beside it
 * (links into this checkout's node_modules, so no network is needed) and its
 * install script run (the locking addon, built from the shipped sources): a
 * dependency missing from `dependencies` or a source missing from `files`
 * fails here as it would for a user.
 */
import { execa } from 'execa';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { scratchDir, ensureBuilt } from './helpers.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const dir = scratchDir('package');
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

/** What the tarball may hold, and what it must (the libqcow target runs adapters/libqcow_adapter.py). */
const ALLOWED = [
  /^package\.json$/,
  /^README\.md$/,
  /^docs\/[^/]+\.md$/,
  /^dist\/.+\.js$/,
  /^native\/(binding\.gyp|build\.mjs|ofd_lock\.c|crypto\.c|forkserver\.c)$/,
  /^adapters\/[^/]+\.py$/,
  /^src\/harness\/targets\/cmd-example-qemu\.mjs$/,
];
const REQUIRED = [
  'package.json',
  'README.md',
  'dist/cli/main.js',
  'dist/harness/runner.js',
  'docs/cmd-protocol.md',
  'native/binding.gyp',
  'native/build.mjs',
  'native/ofd_lock.c',
  'native/crypto.c',
  'native/forkserver.c',
  'adapters/libqcow_adapter.py',
  'src/harness/targets/cmd-example-qemu.mjs',
];

// --ignore-scripts: prepack would clean and rebuild dist/ under the other test files' feet.
const npm = (args: string[]) => execa('npm', [...args, '--ignore-scripts'], { cwd: root, env: { npm_config_update_notifier: 'false' } });

let pkg = '';

beforeAll(async () => {
  // Pack what the sources build to.
  await ensureBuilt();
  const packed = JSON.parse((await npm(['pack', '--json', '--pack-destination', dir])).stdout) as { filename: string }[];
  await execa('tar', ['-xzf', path.join(dir, packed[0]!.filename), '-C', dir]);
  pkg = path.join(dir, 'package');
  // Only the runtime dependency tree, as `npm install` of the tarball lays it out.
  const lock = JSON.parse(fs.readFileSync(path.join(root, 'package-lock.json'), 'utf8')) as { packages: Record<string, { dev?: boolean }> };
  for (const [p, meta] of Object.entries(lock.packages)) {
    const m = /^node_modules\/((?:@[^/]+\/)?[^/]+)$/.exec(p);
    if (!m || meta.dev) continue;
    fs.mkdirSync(path.dirname(path.join(pkg, p)), { recursive: true });
    fs.symlinkSync(path.join(root, p), path.join(pkg, p));
  }
  // What `npm install` of the tarball runs: the package's install script (the locking addon, from the shipped sources).
  await execa('npm', ['run', 'install'], { cwd: pkg, env: { npm_config_update_notifier: 'false' } });
});

async function packed(args: string[], env: Record<string, string> = { PATH: process.env.PATH ?? '' }) {
  const r = await execa(process.execPath, [path.join(pkg, 'dist/cli/main.js'), ...args], { cwd: dir, reject: false, env, extendEnv: false, stripFinalNewline: false });
  return { rc: r.exitCode, stdout: String(r.stdout), stderr: String(r.stderr) };
}

describe('the npm package', () => {
  it('ships the built code, docs and README, and nothing else', async () => {
    const [report] = JSON.parse((await npm(['pack', '--dry-run', '--json'])).stdout) as { files: { path: string }[] }[];
    const files = report!.files.map((f) => f.path);
    expect(files.filter((f) => !ALLOWED.some((re) => re.test(f)))).toEqual([]);
    expect(files.filter((f) => /(^|\/)(tests?|properties|corpus)\/|\.test\.|\.map$/.test(f))).toEqual([]);
    for (const f of REQUIRED) expect(files).toContain(f);
  });

  it('declares what the CLI loads at run time as dependencies', () => {
    const manifest = JSON.parse(fs.readFileSync(path.join(pkg, 'package.json'), 'utf8'));
    expect(Object.keys(manifest.dependencies).sort()).toEqual(['execa', 'fast-check', 'zstd-napi']);
    expect(manifest.bin).toEqual({ 'qcow2-harness': 'dist/cli/main.js' });
    expect(manifest.scripts.prepack).toMatch(/build/);
  });

  it('runs demo and a short fuzz campaign from the extracted tarball', async () => {
    const demo = await packed(['demo']);
    expect(demo.stderr).toBe('');
    expect(demo.stdout).toMatch(/RESULT: OK/);
    expect(demo.rc).toBe(0);
    const fuzz = await packed(['fuzz', '--runs', '5', '--seed', '1', '--corpus', path.join(dir, 'corpus')]);
    expect(fuzz.stdout).toMatch(/^ts: 5 runs \(0 more while shrinking\)/);
    expect(fuzz.stdout).toContain('no failures');
    expect(fuzz.rc).toBe(0);
    // The libqcow reader target runs the shipped Python adapter.
    const reader = await packed(['fuzz', '--target', 'libqcow', '--runs', '2', '--seed', '1', '--corpus', path.join(dir, 'corpus')]);
    expect(reader.stdout).toMatch(/^libqcow: 2 runs /);
    expect(reader.rc).toBe(0);
  });

  it('without qemu-img on PATH: one line naming the package qemu-utils, exit 1', async () => {
    const bin = path.join(dir, 'bin-without-qemu');
    fs.mkdirSync(bin, { recursive: true });
    for (const args of [['demo'], ['fuzz', '--time', '5']]) {
      const r = await packed(args, { PATH: bin });
      expect(r.rc, args.join(' ')).toBe(1);
      expect(r.stderr, args.join(' ')).toMatch(/^qcow2-harness: qemu-img is not on PATH: [^\n]*qemu-utils[^\n]*\n$/);
    }
  });
});
