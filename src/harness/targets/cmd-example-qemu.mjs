#!/usr/bin/env node
// Example `cmd:` target (docs/cmd-protocol.md): every request forwarded to
// qemu-io/qemu-img. Plain Node.js on purpose, so it runs without a build and
// shows how small an adapter for another implementation can be.
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as readline from 'node:readline';

let image = '';
const run = (tool, args) => execFileSync(tool, args, { stdio: ['ignore', 'pipe', 'pipe'], encoding: 'utf8' });

function convert(extra, length) {
  const raw = `${image}.view.raw`;
  run('qemu-img', ['convert', '-U', '-f', 'qcow2', '-O', 'raw', ...extra, image, raw]);
  const buf = Buffer.alloc(length);
  const fd = fs.openSync(raw, 'r');
  const n = fs.readSync(fd, buf, 0, length, 0);
  fs.closeSync(fd);
  fs.rmSync(raw);
  return buf.subarray(0, Math.max(n, 0));
}

function op(p) {
  const w = p.op.split(' ');
  switch (w[0]) {
    case 'write': {
      if (w[1] === '-z') return run('qemu-io', ['-f', 'qcow2', '-c', p.op, image]);
      const file = `${image}.data`;
      fs.writeFileSync(file, Buffer.from(p.data, 'base64'));
      const args = w[1] === '-c' ? ['-c', '-s', file, w[2], w[3]] : ['-s', file, w[1], w[2]];
      const out = run('qemu-io', ['-f', 'qcow2', '-c', `write ${args.join(' ')}`, image]);
      if (/failed/.test(out)) throw new Error(out.trim());
      return out;
    }
    case 'discard':
    case 'flush': {
      const out = run('qemu-io', ['-f', 'qcow2', '-c', p.op, image]);
      if (/failed/.test(out)) throw new Error(out.trim());
      return out;
    }
    case 'aio': {
      // Submitted together in one qemu-io process, drained by aio_flush, then flushed.
      const reqs = p.op.slice(4).split(';').map((r) => `aio_${r.trim().replace(/^write /, 'write -q ')}`);
      const out = run('qemu-io', ['-f', 'qcow2', ...[...reqs, 'aio_flush', 'flush'].flatMap((c) => ['-c', c]), image]);
      if (/failed/.test(out)) throw new Error(out.trim());
      return out;
    }
    case 'reopen':
      return '';
    case 'snapshot':
      return run('qemu-img', ['snapshot', w[1], w[2], image]);
    case 'amend':
      return run('qemu-img', ['amend', '-f', 'qcow2', '-o', w[1], image]);
    case 'resize':
      return run('qemu-img', ['resize', '-q', '-f', 'qcow2', ...w.slice(1, -1), image, w[w.length - 1]]);
    default:
      throw new Error(`unknown op ${p.op}`);
  }
}

function handle(req) {
  const p = req.params ?? {};
  switch (req.method) {
    case 'create': {
      image = p.path;
      const o = [
        `cluster_size=${p.clusterSize}`,
        `refcount_bits=${p.refcountBits}`,
        `compat=${p.compat}`,
        `lazy_refcounts=${p.lazyRefcounts ? 'on' : 'off'}`,
        `extended_l2=${p.extendedL2 ? 'on' : 'off'}`,
        `compression_type=${p.compressionType}`,
      ].join(',');
      const back = p.backingFile ? ['-b', p.backingFile, '-F', p.backingFormat] : [];
      run('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', o, ...back, image, String(p.size)]);
      // With --aio it also takes aio groups (an optional capability).
      const caps = ['write', 'write-compressed', 'write-zeroes', 'discard', 'flush', 'reopen', 'snapshot', 'amend', 'resize'];
      return { capabilities: process.argv.includes('--aio') ? [...caps, 'aio'] : caps };
    }
    case 'op':
      op(p);
      return {};
    case 'read': {
      const all = convert([], p.offset + p.length);
      const out = Buffer.alloc(p.length);
      all.copy(out, 0, p.offset, p.offset + p.length);
      return { data: out.toString('base64') };
    }
    case 'readSnapshot':
      return { data: convert(['-l', `snapshot.id=${p.id}`], p.length).toString('base64') };
    case 'sync':
      return {};
    case 'quit':
      process.exit(0);
    default:
      throw Object.assign(new Error(`unknown method ${req.method}`), { code: 'unsupported' });
  }
}

readline.createInterface({ input: process.stdin }).on('line', (line) => {
  const req = JSON.parse(line);
  let resp;
  try {
    resp = { id: req.id, ok: true, result: handle(req) };
  } catch (e) {
    const msg = String(e.stderr || e.stdout || e.message).trim();
    resp = { id: req.id, ok: false, error: msg, code: e.code === 'unsupported' ? 'unsupported' : 'refused' };
  }
  process.stdout.write(JSON.stringify(resp) + '\n');
});
