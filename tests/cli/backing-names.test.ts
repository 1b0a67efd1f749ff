/**
 * Backing file names with a protocol, as QEMU reads them: "file:NAME" and
 * "json:{...}" are relative to the current directory, never to the image's
 * (path_has_protocol in block.c), the header's backing format wins over the
 * JSON's driver, and what QEMU refuses we refuse in its words. Every case is
 * read by qemu-io and by our io from the same working directory.
 */
import { execa } from 'execa';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { QEMU_IMG, QEMU_IO } from '../../src/qemu/index.js';
import { ok, ours, scratchDir } from './helpers.js';

const dir = scratchDir('backing-names');
const MiB = 1024 * 1024;

async function qemu(tool: string, args: string[]) {
  const r = await execa(tool, args, { cwd: dir, reject: false });
  return { rc: r.exitCode ?? -1, stdout: r.stdout, stderr: r.stderr };
}

/** An overlay at `image` (relative to dir) whose header names `backing` as it is, with backing format `fmt`. */
async function overlay(image: string, backing: string, fmt: 'raw' | 'qcow2'): Promise<void> {
  fs.mkdirSync(path.dirname(path.join(dir, image)), { recursive: true });
  ok(await qemu(QEMU_IMG, ['create', '-q', '-f', 'qcow2', '-u', '-b', backing, '-F', fmt, image, '4M']), `create ${image}`);
}

const setup = (async () => {
  ok(await qemu(QEMU_IMG, ['create', '-q', '-f', 'raw', 'base.raw', '4M']), 'create base');
  ok(await qemu(QEMU_IO, ['-f', 'raw', '-c', `write -P 0x11 0 ${MiB}`, 'base.raw']), 'fill base');
})();

/** The message after "can't open device X: ", from either tool. */
const reason = (stderr: string): string => stderr.trim().replace(/^[^:]+: can't open device [^:]+: /, '');

const cases: [string, string, 'raw' | 'qcow2'][] = [
  ['json nested', 'json:{"driver":"raw","file":{"driver":"file","filename":"base.raw"}}', 'raw'],
  ['json flattened keys', 'json:{"file.driver":"file","file.filename":"base.raw","driver":"raw"}', 'raw'],
  ['json with I/O tuning options only', 'json:{"driver":"raw","cache":{"direct":false},"file":{"driver":"file","filename":"base.raw","locking":"off"}}', 'raw'],
  ['json naming a missing file', 'json:{"driver":"raw","file":{"driver":"file","filename":"nope.raw"}}', 'raw'],
  ['json whose driver the header format overrides', 'json:{"driver":"raw","file":{"driver":"file","filename":"base.raw"}}', 'qcow2'],
  ['json with a top-level filename only', 'json:{"driver":"raw","filename":"base.raw"}', 'raw'],
  ['json that is not an object', 'json:[1]', 'raw'],
  ['json that does not parse', 'json:{"driver":', 'raw'],
  ['file: protocol', 'file:base.raw', 'raw'],
  ['unknown protocol', 'foo:base.raw', 'raw'],
];

describe('backing names with a protocol read as qemu-io reads them', () => {
  for (const [what, backing, fmt] of cases) {
    for (const image of ['top.qcow2', 'sub/top.qcow2']) {
      it(`${what}, image ${image}`, async () => {
        await setup;
        const img = `${image.replace('top', `t-${cases.findIndex((c) => c[0] === what)}`)}`;
        await overlay(img, backing, fmt);
        const cmd = ['-c', `read -P 0x11 0 ${MiB}`];
        const q = await qemu(QEMU_IO, [...cmd, img]);
        const o = await ours(dir, ['io', ...cmd, img]);
        expect({ rc: o.rc, failed: /can't open|Pattern verification failed/.test(o.stderr + o.stdout) }, o.stderr).toEqual({
          rc: q.rc,
          failed: /can't open|Pattern verification failed/.test(q.stderr + q.stdout),
        });
        if (q.rc !== 0) expect(reason(o.stderr)).toBe(reason(q.stderr));
        // Where the header's name came from is shown as QEMU shows it: never combined with sub/.
        const qi = JSON.parse(ok(await qemu(QEMU_IMG, ['info', '--output', 'json', '-U', img]), 'qemu-img info').stdout);
        const oi = JSON.parse(ok(await ours(dir, ['info', '--output', 'json', '-U', img]), 'our info').stdout);
        expect(oi['full-backing-filename']).toBe(qi['full-backing-filename']);
      });
    }
  }

  it('an option that changes what is read (raw offset) is refused in one line, not read wrongly', async () => {
    await setup;
    await overlay('off.qcow2', 'json:{"driver":"raw","offset":65536,"file":{"driver":"file","filename":"base.raw"}}', 'raw');
    const o = await ours(dir, ['io', '-c', 'read 0 512', 'off.qcow2']);
    expect(o.rc).toBe(1);
    expect(o.stderr.trim().split('\n')).toEqual([
      "qcow2-harness: can't open device off.qcow2: Could not open backing file: json: backing option 'offset' is not supported by this engine (it could change what the guest reads)",
    ]);
  });

  it('create -b json:... takes the size from the backing file, as qemu-img does', async () => {
    await setup;
    const b = 'json:{"driver":"raw","file":{"driver":"file","filename":"base.raw"}}';
    ok(await ours(dir, ['create', '-q', '-f', 'qcow2', '-b', b, '-F', 'raw', 'made.qcow2']), 'our create');
    const qi = JSON.parse(ok(await qemu(QEMU_IMG, ['info', '--output', 'json', 'made.qcow2']), 'qemu-img info').stdout);
    expect(qi['virtual-size']).toBe(4 * MiB);
    expect(qi['backing-filename']).toBe(b);
    ok(await qemu(QEMU_IO, ['-c', `read -P 0x11 0 ${MiB}`, 'made.qcow2']), 'qemu-io reads through it');
  });

  it('a failure inside the backing image keeps its kind after the prefix', async () => {
    await setup;
    ok(await qemu(QEMU_IMG, ['create', '-q', '-f', 'qcow2', 'bad.qcow2', '4M']), 'create');
    const fd = fs.openSync(path.join(dir, 'bad.qcow2'), 'r+');
    fs.writeSync(fd, Buffer.from([0xff, 0xff, 0xff, 0xff]), 0, 4, 40); // l1_table_offset's high half
    fs.closeSync(fd);
    await overlay('over-bad.qcow2', 'bad.qcow2', 'qcow2');
    const q = await qemu(QEMU_IO, ['-c', 'read 0 512', 'over-bad.qcow2']);
    const o = await ours(dir, ['io', '-c', 'read 0 512', 'over-bad.qcow2']);
    expect(q.stderr).toContain('Could not open backing file: ');
    expect(o.rc).toBe(1);
    expect(o.stderr).toMatch(/can't open device over-bad\.qcow2: Could not open backing file: invalid image: /);
  });
});
