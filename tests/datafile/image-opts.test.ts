/**
 * --image-opts naming the data file (data-file.filename=D, or a raw layer
 * data-file.driver=raw,data-file.file.filename=D) instead of the one in the
 * header, against qemu-img/qemu-io 7.2 doing the same: the same bytes land
 * in the file named, the header's file is untouched, and the refusals
 * (a bare data-file= node reference, a missing file, an image without a data
 * file, a driver without its file name) exit 1 with qemu-img's message.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ok, ours, qemuImg, qemuIo, scratchDir } from '../cli/helpers.js';

const dir = scratchDir('datafile-opts');
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
const at = (n: string) => path.join(dir, n);
const opts = (img: string, extra: string) => `driver=qcow2,file.filename=${at(img)},${extra}`;

beforeAll(async () => {
  ok(await qemuImg(['create', '-q', '-f', 'qcow2', '-o', `data_file=${at('img.data')}`, at('img.qcow2'), '1M']), 'qemu-img create');
  ok(await qemuIo(['-f', 'qcow2', '-c', 'write -P 0x11 0 64k', at('img.qcow2')]), 'qemu-io write');
  ok(await qemuImg(['create', '-q', '-f', 'qcow2', at('plain.qcow2'), '1M']), 'qemu-img create plain');
});

describe('io through --image-opts with data-file.filename', () => {
  it.each([
    ['data-file.filename', (f: string) => `data-file.filename=${f}`],
    ['data-file.driver=file', (f: string) => `data-file.driver=file,data-file.filename=${f}`],
    ['data-file.driver=raw over a file', (f: string) => `data-file.driver=raw,data-file.file.filename=${f}`],
  ])('%s: our io and qemu-io write the named copy, not the header file, to the same bytes', async (_name, opt) => {
    const original = fs.readFileSync(at('img.data'));
    for (const who of ['ours', 'qemu'] as const) {
      const copy = at(`copy-${who}.data`);
      fs.copyFileSync(at('img.data'), copy);
      const args = ['--image-opts', '-c', 'write -P 0x22 4096 8192', opts('img.qcow2', opt(copy))];
      if (who === 'ours') ok(await ours(dir, ['io', ...args]), 'our io');
      else ok(await qemuIo(args), 'qemu-io');
      expect(fs.readFileSync(at('img.data')).equals(original), `${who} left the header's data file alone`).toBe(true);
    }
    expect(fs.readFileSync(at('copy-ours.data')).equals(fs.readFileSync(at('copy-qemu.data')))).toBe(true);
    expect(fs.readFileSync(at('copy-ours.data')).subarray(4096, 12288).every((b) => b === 0x22)).toBe(true);
    // And qemu-io reads our copy back through the same option string.
    const r = ok(await qemuIo(['--image-opts', '-c', 'read -P 0x22 4096 8192', '-c', 'read -P 0x11 0 4096', opts('img.qcow2', opt(at('copy-ours.data')))]), 'qemu-io read');
    expect(r.stdout).not.toContain('verification failed');
  });

  it('check and convert read the named data file, as qemu-img does', async () => {
    const copy = at('conv.data');
    fs.copyFileSync(at('img.data'), copy);
    ok(await qemuIo(['--image-opts', '-c', 'write -P 0x33 0 512', opts('img.qcow2', `data-file.filename=${copy}`)]), 'qemu-io write');
    const o = opts('img.qcow2', `data-file.filename=${copy}`);
    ok(await ours(dir, ['check', '--image-opts', o]), 'our check');
    ok(await qemuImg(['check', '--image-opts', o]), 'qemu-img check');
    ok(await ours(dir, ['convert', '--image-opts', '-O', 'raw', o, at('ours.raw')]), 'our convert');
    ok(await qemuImg(['convert', '--image-opts', '-O', 'raw', o, at('qemu.raw')]), 'qemu-img convert');
    expect(fs.readFileSync(at('ours.raw')).equals(fs.readFileSync(at('qemu.raw')))).toBe(true);
    expect(fs.readFileSync(at('ours.raw'))[0]).toBe(0x33);
  });
});

describe('refusals are qemu-img 7.2\'s', () => {
  it.each([
    ['a bare data-file= is a node reference', 'img.qcow2', () => 'data-file=img.data'],
    ['a missing data file', 'img.qcow2', () => `data-file.filename=${at('missing.data')}`],
    ['an image without an external data file', 'plain.qcow2', () => `data-file.filename=${at('img.data')}`],
    ['raw without its file', 'img.qcow2', () => 'data-file.driver=raw'],
    ['file without its name', 'img.qcow2', () => 'data-file.driver=file'],
  ])('%s', async (_name, img, opt) => {
    const o = opts(img, opt());
    const q = await qemuImg(['check', '--image-opts', o]);
    const r = await ours(dir, ['check', '--image-opts', o]);
    expect(q.rc).toBe(1);
    expect(r.rc, r.stderr).toBe(1);
    expect(r.stderr.trim().replace(/^qcow2-harness: /, '')).toBe(q.stderr.trim().replace(/^qemu-img: /, ''));
  });
});
