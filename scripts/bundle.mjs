#!/usr/bin/env node
// Bundles the CLI that tsc compiled into dist/ (run by `npm run build`, after tsc):
// dist/cli/main.js becomes one entry file plus chunks in dist/cli/chunks/, one per
// lazily imported part (each command, the harness, the op table, ...).
//
// Why: Node's ES module loader costs about 1 ms of CPU per module on a slow core
// (resolve, read, compile, link); an image command loads ~64 of our modules, so
// start-up took ~50 ms more than the same code in a few chunks (measured with
// 20 x `check` of a small image: 236 vs 183 ms CPU per call, `node -e ''` 108).
// Commands still load only what they use: every `await import()` stays a
// chunk boundary. The rest of dist/ stays as tsc wrote it, for the tests and for
// anyone importing the modules.
//
// dist/cli/chunks/modules.json maps each chunk to the dist/ modules it holds, so
// tests/cli/startup.test.ts can still say which parts of the code a command loads.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const dist = path.join(root, 'dist');
const entry = path.join(dist, 'cli', 'main.js');
const chunks = path.join(dist, 'cli', 'chunks');
const MARK = '// qcow2-harness: bundled CLI entry (scripts/bundle.mjs)';

function fail(message) {
  process.stderr.write(`bundle: ${message}\n`);
  process.exit(1);
}

let rolldown;
try {
  ({ rolldown } = await import('rolldown'));
} catch {
  fail("rolldown is not installed (a dev dependency): run 'npm ci' first");
}
if (!fs.existsSync(entry)) fail(`${path.relative(root, entry)} is missing: run tsc first (npm run build)`);
if (fs.readFileSync(entry, 'utf8').includes(MARK)) fail(`${path.relative(root, entry)} is already the bundle: run tsc first (npm run build)`);

// The packages stay outside: they are resolved from node_modules at run time as before
// (zstd-napi and the addons are native; fast-check and execa keep their own files,
// which the start-up test recognises by path).
const pkg = JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8'));
const packages = Object.keys(pkg.dependencies ?? {});
const external = (id) => id.startsWith('node:') || packages.some((p) => id === p || id.startsWith(`${p}/`));

let bundle;
try {
  bundle = await rolldown({ input: entry, platform: 'node', external, logLevel: 'warn' });
} catch (e) {
  fail(String(e?.message ?? e).split('\n')[0]);
}
const staging = fs.mkdtempSync(path.join(dist, 'cli', '.bundle-'));
try {
  const { output } = await bundle.write({
    dir: staging,
    format: 'esm',
    entryFileNames: 'main.js',
    chunkFileNames: 'chunks/[name]-[hash].js',
  });
  const manifest = {};
  for (const o of output) {
    if (o.type !== 'chunk') continue;
    manifest[o.fileName] = o.moduleIds.filter((id) => id.startsWith(dist + path.sep)).map((id) => path.relative(dist, id));
  }
  fs.writeFileSync(path.join(staging, 'chunks', 'modules.json'), `${JSON.stringify(manifest, null, 1)}\n`);
  // Swap in the new bundle: chunks first (the old entry never names a new chunk), the entry last.
  fs.rmSync(chunks, { recursive: true, force: true });
  fs.renameSync(path.join(staging, 'chunks'), chunks);
  // tsc's entry starts with the hashbang, which the bundle keeps as its first line; the mark goes after it.
  const built = fs.readFileSync(path.join(staging, 'main.js'), 'utf8');
  const nl = built.startsWith('#!') ? built.indexOf('\n') + 1 : 0;
  fs.writeFileSync(path.join(staging, 'main.js'), `${built.slice(0, nl)}${MARK}\n${built.slice(nl)}`);
  fs.renameSync(path.join(staging, 'main.js'), entry);
  fs.chmodSync(entry, 0o755);
} finally {
  fs.rmSync(staging, { recursive: true, force: true });
  await bundle.close();
}
