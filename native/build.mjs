#!/usr/bin/env node
// Builds the OFD lock addon (native/ofd_lock.c) and the qemu-img/qemu-io fork
// server (native/forkserver.c, preloaded into them, not into Node) with node-gyp
// against the installed Node's headers. Run by `npm ci`/`npm install` (the package's
// install script) and before `npm run build`; with --if-needed it does
// nothing when the addon is already newer than its sources.
// On failure: one line saying what to do, and exit code 1.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

const dir = path.dirname(fileURLToPath(import.meta.url));
const addon = path.join(dir, 'build', 'Release', 'ofd_lock.node');
const forkServer = path.join(dir, 'build', 'Release', 'qh_forkserver.node');
const sources = ['ofd_lock.c', 'crypto.c', 'forkserver.c', 'binding.gyp'].map((f) => path.join(dir, f));

function upToDate() {
  return [addon, forkServer].every((out) => {
    const built = fs.statSync(out, { throwIfNoEntry: false });
    return built !== undefined && sources.every((s) => fs.statSync(s).mtimeMs <= built.mtimeMs);
  });
}

if (process.argv.includes('--if-needed') && upToDate()) process.exit(0);

// npm tells its scripts where its bundled node-gyp is; outside npm, use one on PATH.
const gyp = process.env.npm_config_node_gyp;
const args = ['rebuild'];
// Build against the headers of the Node that runs us when they are installed
// beside it (Debian's nodejs, official tarballs): no download needed.
const prefix = path.resolve(path.dirname(process.execPath), '..');
if (!process.env.npm_config_nodedir && fs.existsSync(path.join(prefix, 'include', 'node', 'node_api.h'))) args.push(`--nodedir=${prefix}`);
const [cmd, argv] = gyp ? [process.execPath, [gyp, ...args]] : ['node-gyp', args];
const r = spawnSync(cmd, argv, { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'], encoding: 'utf8' });
if (r.status !== 0 || !fs.existsSync(addon) || !fs.existsSync(forkServer)) {
  const log = path.join(dir, 'build-error.log');
  fs.writeFileSync(log, `${r.error ? String(r.error) : ''}${r.stdout ?? ''}${r.stderr ?? ''}`);
  process.stderr.write(
    `qcow2-harness: could not build the native addon (native/ofd_lock.c) and the qemu-img fork server (native/forkserver.c) with node-gyp; it needs g++, make, python3 and Node's headers (see ${path.relative(process.cwd(), log)})\n`,
  );
  process.exit(1);
}
