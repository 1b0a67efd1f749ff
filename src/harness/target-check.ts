/**
 * `qcow2-harness target-check cmd:PROGRAM`: the first thing an adopter runs.
 * Each probe starts the program afresh (so one crash does not hide the other
 * findings), drives one part of docs/cmd-protocol.md on small images made by
 * qemu-img/qemu-io, and says in one line what the program does wrong. QEMU's
 * own reading (qemu-img convert) is the reference for every byte.
 * Exit: 0 every probe passed, 1 some failed, 2 usage error.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { imgConvertToRaw, runTool, QEMU_IMG, QEMU_IO } from '../qemu/index.js';
import { CmdSession, type Response } from './targets/cmd-session.js';
import { CMD_PROTOCOL_VERSION } from './targets/cmd.js';

const PROBE_TIMEOUT_MS = 10_000;
const SIZE = 1024 * 1024;
const CREATE = { size: SIZE, clusterSize: 65536, refcountBits: 16, compat: '1.1', lazyRefcounts: false, extendedL2: false, compressionType: 'zlib' };

export interface ProbeResult {
  probe: string;
  ok: boolean;
  /** What the program did wrong (or why the probe was skipped). */
  detail?: string;
  skipped?: boolean;
}

class ProbeFailure extends Error {}

const must = (cond: unknown, what: string): void => {
  if (!cond) throw new ProbeFailure(what);
};

async function sh(tool: string, args: string[]): Promise<void> {
  const r = await runTool(tool, args);
  if (r.rc !== 0) throw new Error(`${path.basename(tool)} ${args.join(' ')}: ${r.stderr.trim()}`);
}

function data(r: Response, what: string, len?: number): Buffer {
  must(r.ok, `${what} answered an error: ${r.error ?? '(no text)'} (code ${r.code ?? 'none'})`);
  must(typeof r.result?.data === 'string', `${what}: result.data is not a base64 string`);
  const b = Buffer.from(r.result!.data as string, 'base64');
  if (len !== undefined) must(b.length === len, `${what}: short read, ${b.length} bytes for ${len} asked`);
  return b;
}

function firstDiff(a: Buffer, b: Buffer): string | undefined {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i += 512) {
    if (a.compare(b, i, Math.min(i + 512, n), i, Math.min(i + 512, n)) !== 0) return `differs from QEMU's reading at offset ${i}`;
  }
  return a.length === b.length ? undefined : `${a.length} bytes, QEMU reads ${b.length}`;
}

interface Ctx {
  program: string;
  timeoutMs: number;
  dir: string;
  role: 'reader' | 'writer' | undefined;
  snapshots: boolean;
}

/** A fresh session that has answered `create`; the role it declared is recorded in ctx. */
async function started(ctx: Ctx, sub: string): Promise<{ s: CmdSession; created: Response; work: string }> {
  const work = fs.mkdtempSync(path.join(ctx.dir, `${sub}-`));
  const s = new CmdSession('program', ctx.program, work, ctx.timeoutMs);
  const created = await s.call('create', { protocol: CMD_PROTOCOL_VERSION, path: path.join(work, 'image.qcow2'), ...CREATE, backingFile: null, backingFormat: null });
  return { s, created, work };
}

/** An image with data in a few clusters (and, optionally, a snapshot and a backing file), plus QEMU's raw reading. */
async function makeImage(work: string, o: { backing?: boolean; snapshot?: boolean } = {}): Promise<{ image: string; raw: string; backing: { file: string; path: string; format: string }[] }> {
  const image = path.join(work, 'probe.qcow2');
  const backing: { file: string; path: string; format: string }[] = [];
  if (o.backing) {
    const b = path.join(work, 'probe-backing.qcow2');
    await sh(QEMU_IMG, ['create', '-q', '-f', 'qcow2', b, String(SIZE)]);
    await sh(QEMU_IO, ['-f', 'qcow2', '-c', 'write -q -P 0x5a 0 1M', b]);
    await sh(QEMU_IMG, ['create', '-q', '-f', 'qcow2', '-b', 'probe-backing.qcow2', '-F', 'qcow2', image, String(SIZE)]);
    backing.push({ file: 'probe-backing.qcow2', path: b, format: 'qcow2' });
  } else {
    await sh(QEMU_IMG, ['create', '-q', '-f', 'qcow2', image, String(SIZE)]);
  }
  await sh(QEMU_IO, ['-f', 'qcow2', '-c', 'write -q -P 0x11 0 64k', '-c', 'write -q -P 0x22 196608 4096', '-c', `write -q -P 0x33 ${SIZE - 512} 512`, image]);
  if (o.snapshot) {
    await sh(QEMU_IMG, ['snapshot', '-c', 'probe', image]);
    await sh(QEMU_IO, ['-f', 'qcow2', '-c', 'write -q -P 0x44 0 64k', image]);
  }
  const raw = path.join(work, 'probe.raw');
  await imgConvertToRaw(image, raw);
  return { image, raw, backing };
}

type Probe = { name: string; roles: ('reader' | 'writer')[]; run: (ctx: Ctx) => Promise<string | undefined> };

const readerOpen = async (s: CmdSession, image: string, backing: unknown[]) => {
  const r = await s.call('open', { path: image, backing, readOnly: true });
  must(r.ok, `open of a valid image answered an error: ${r.error ?? ''} (code ${r.code ?? 'none'})`);
};

const PROBES: Probe[] = [
  {
    name: 'create (first request)',
    roles: ['reader', 'writer'],
    async run(ctx) {
      const { s, created } = await started(ctx, 'create');
      try {
        must(created.ok || created.code === 'unsupported', `create answered an error: ${created.error ?? ''}`);
        ctx.role = created.result?.role === 'reader' ? 'reader' : 'writer';
        ctx.snapshots = created.result?.snapshots !== false && created.result?.readSnapshot !== false;
        return `${ctx.role}${typeof created.result?.implementation === 'string' ? ` (${created.result.implementation})` : ''}`;
      } finally {
        await s.close();
      }
    },
  },
  {
    name: 'open and read the whole disk',
    roles: ['reader'],
    async run(ctx) {
      const { s, work } = await started(ctx, 'read');
      try {
        const img = await makeImage(work);
        await readerOpen(s, img.image, img.backing);
        const diff = firstDiff(data(await s.call('read', { offset: 0, length: SIZE }), 'read', SIZE), fs.readFileSync(img.raw));
        must(!diff, `whole-disk read ${diff}`);
        return undefined;
      } finally {
        await s.close();
      }
    },
  },
  {
    name: 'edge reads (last sector, one sector inside a cluster, length 0)',
    roles: ['reader', 'writer'],
    async run(ctx) {
      const { s, work } = await started(ctx, 'edges');
      try {
        const expected = ctx.role === 'reader' ? fs.readFileSync((await makeImage(work)).raw) : Buffer.alloc(SIZE);
        if (ctx.role === 'reader') {
          const img = path.join(work, 'probe.qcow2');
          await readerOpen(s, img, []);
        }
        for (const [off, len] of [[SIZE - 512, 512], [196608 + 1024, 512], [65536 - 512, 1024]] as const) {
          const got = data(await s.call('read', { offset: off, length: len }), `read ${off} ${len}`, len);
          must(got.equals(expected.subarray(off, off + len)), `read ${off} ${len} differs from QEMU's reading`);
        }
        const z = await s.call('read', { offset: 0, length: 0 });
        must(z.ok && typeof z.result?.data === 'string' && Buffer.from(z.result.data as string, 'base64').length === 0, 'a read of length 0 must answer empty data');
        return undefined;
      } finally {
        await s.close();
      }
    },
  },
  {
    name: 'backing chain (qcow2 backing file)',
    roles: ['reader'],
    async run(ctx) {
      const { s, work } = await started(ctx, 'backing');
      try {
        const img = await makeImage(work, { backing: true });
        const r = await s.call('open', { path: img.image, backing: img.backing, readOnly: true });
        if (!r.ok && r.code === 'unsupported') return `declined (${r.error ?? ''})`;
        must(r.ok, `open answered an error: ${r.error ?? ''}`);
        const diff = firstDiff(data(await s.call('read', { offset: 0, length: SIZE }), 'read', SIZE), fs.readFileSync(img.raw));
        must(!diff, `read over a backing file ${diff}`);
        return undefined;
      } finally {
        await s.close();
      }
    },
  },
  {
    name: 'open again after the image changed',
    roles: ['reader'],
    async run(ctx) {
      const { s, work } = await started(ctx, 'reopen');
      try {
        const img = await makeImage(work);
        await readerOpen(s, img.image, []);
        data(await s.call('read', { offset: 0, length: 65536 }), 'read', 65536);
        await sh(QEMU_IO, ['-f', 'qcow2', '-c', 'write -q -P 0x77 0 64k', img.image]);
        await readerOpen(s, img.image, []);
        const got = data(await s.call('read', { offset: 0, length: 65536 }), 'read', 65536);
        must(got.every((b) => b === 0x77), 'after a second open, reads still show the image as first opened (stale)');
        return undefined;
      } finally {
        await s.close();
      }
    },
  },
  {
    name: 'readSnapshot (and an unknown snapshot id)',
    roles: ['reader'],
    async run(ctx) {
      if (!ctx.snapshots) return 'skipped: create said snapshots are not readable';
      const { s, work } = await started(ctx, 'snapshot');
      try {
        const img = await makeImage(work, { snapshot: true });
        await readerOpen(s, img.image, []);
        const r = await s.call('readSnapshot', { id: '1', length: SIZE });
        if (!r.ok && r.code === 'unsupported') return 'unsupported (answered as such)';
        const raw = path.join(work, 'snap.raw');
        await imgConvertToRaw(img.image, raw, { snapshotId: '1' });
        const diff = firstDiff(data(r, 'readSnapshot'), fs.readFileSync(raw));
        must(!diff, `snapshot 1 ${diff}`);
        const bad = await s.call('readSnapshot', { id: '99', length: 512 }, { raw: true });
        must(!bad.ok, 'readSnapshot of an id the image does not have must answer an error');
        return undefined;
      } finally {
        await s.close();
      }
    },
  },
  {
    name: 'writer: ops, read back, sync',
    roles: ['writer'],
    async run(ctx) {
      const { s, created, work } = await started(ctx, 'writer');
      try {
        must(created.ok, `create answered an error: ${created.error ?? ''}`);
        const d = Buffer.alloc(4096, 0x61);
        for (const [op, extra] of [
          ['write 0 4096', { data: d.toString('base64') }],
          ['write -z 4096 4096', {}],
          ['discard 8192 4096', {}],
          ['flush', {}],
        ] as const) {
          const r = await s.call('op', { op, ...extra });
          must(r.ok, `op '${op}' answered an error: ${r.error ?? ''}`);
        }
        must(data(await s.call('read', { offset: 0, length: 4096 }), 'read', 4096).equals(d), 'read after write 0 4096 differs from what was written');
        const sy = await s.call('sync');
        must(sy.ok, `sync answered an error: ${sy.error ?? ''}`);
        const chk = await runTool(QEMU_IMG, ['check', '-q', '-f', 'qcow2', path.join(work, 'image.qcow2')]);
        must(chk.rc === 0, `after sync, qemu-img check finds problems (rc ${chk.rc}): ${chk.stderr.trim().split('\n')[0] ?? ''}`);
        return undefined;
      } finally {
        await s.close();
      }
    },
  },
  {
    name: 'protocol hygiene (unknown method, out-of-order id, missing file)',
    roles: ['reader', 'writer'],
    async run(ctx) {
      const { s } = await started(ctx, 'hygiene');
      try {
        const u = await s.call('frobnicate', {}, { raw: true });
        must(!u.ok, 'an unknown method must answer ok:false (and keep running)');
        const odd = await s.call('read', { offset: 0, length: 0 }, { id: 1000, raw: true });
        must(odd.id === 1000, 'the reply must carry the request id');
        if (ctx.role === 'reader') {
          const m = await s.call('open', { path: '/nonexistent/probe.qcow2', backing: [], readOnly: true }, { raw: true });
          must(!m.ok, 'open of a missing file must answer an error');
        }
        return undefined;
      } finally {
        await s.close();
      }
    },
  },
  {
    name: 'quit',
    roles: ['reader', 'writer'],
    async run(ctx) {
      const { s } = await started(ctx, 'quit');
      const t0 = Date.now();
      await s.close();
      const state = s.exitState();
      must(Date.now() - t0 < 2000 && state !== undefined && !state.startsWith('killed'), 'the program did not exit within 2 s of quit');
      must(state === 'exit status 0', `after quit the program ended with ${state}`);
      return undefined;
    },
  },
];

export async function targetCheck(program: string, o: { timeoutMs?: number } = {}): Promise<ProbeResult[]> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qh-target-check-'));
  const ctx: Ctx = { program, dir, role: undefined, snapshots: true, timeoutMs: o.timeoutMs ?? PROBE_TIMEOUT_MS };
  const out: ProbeResult[] = [];
  try {
    for (const p of PROBES) {
      if (ctx.role && !p.roles.includes(ctx.role)) continue;
      if (!ctx.role && p !== PROBES[0]) {
        out.push({ probe: p.name, ok: false, skipped: true, detail: 'skipped: create did not answer' });
        continue;
      }
      try {
        const note = await p.run(ctx);
        out.push({ probe: p.name, ok: true, detail: note });
      } catch (e) {
        const err = e as Error;
        // Our own tools failing is not the program's fault: say so instead of blaming it.
        const detail = e instanceof ProbeFailure || err.name === 'ProtocolError' || err.name === 'HangError' ? err.message : `harness problem: ${err.message}`;
        out.push({ probe: p.name, ok: false, detail: detail.replace(/^program: /, '') });
      }
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
  return out;
}

const USAGE = `usage: qcow2-harness target-check cmd:PROGRAM
  Exercises a program's protocol handling (docs/cmd-protocol.md): every method,
  edge reads, a backing chain, reopen, snapshots, an unknown method, an
  out-of-order id, a missing file, quit. One line per probe.
exit: 0 every probe passed, 1 some failed, 2 usage error
`;

export async function targetCheckCommand(argv: string[]): Promise<number> {
  if (argv.includes('--help')) {
    process.stdout.write(USAGE);
    return 0;
  }
  const spec = argv[0];
  if (argv.length !== 1 || !spec || !spec.startsWith('cmd:') || spec.length <= 4) {
    process.stderr.write(`error: give one target, cmd:PROGRAM\n${USAGE}`);
    return 2;
  }
  const results = await targetCheck(spec.slice(4));
  for (const r of results) process.stdout.write(`${r.ok ? 'ok  ' : 'FAIL'} ${r.probe}${r.detail ? `: ${r.detail}` : ''}\n`);
  const failed = results.filter((r) => !r.ok).length;
  process.stdout.write(failed ? `${failed} of ${results.length} probes failed\n` : `all ${results.length} probes passed\n`);
  return failed ? 1 : 0;
}
