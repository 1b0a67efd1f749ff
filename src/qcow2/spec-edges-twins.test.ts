/**
 * Spec edge cases a QEMU block-layer maintainer would try, with the real
 * qemu-img/qemu-io on both sides: images qemu wrote read by us, images we
 * wrote judged by qemu-img check/compare, and the same operations done by
 * qemu-io on a twin image as the reference for what the result must be.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { firstDiff, Lcg } from '../../tests/support/bytes.js';
import { qemuCheck, qemuCompare, qemuMap, qemuRaw } from '../../tests/support/qemu.js';
import { CorruptImageError, Qcow2Error, UnsupportedFeatureError } from './errors.js';
import { decodeCompressed } from './format/entries.js';
import { Qcow2Image } from './image.js';
import { createQcow2File, openQcow2File } from './open-file.js';
import { MemoryStorage } from './storage/memory.js';
import { edgeTools, KiB, MiB, OFFSET_MASK } from '../../tests/support/spec-edges.js';

const { dir, p, run, qemuImg, qemuIo, expectClean, expectSameBytes, ourRead, data, readU64, writeU64, l2Offset } = edgeTools('qcow2-spec-edges-');

describe('twins: the same operations by us and by qemu-io give the same image', () => {
  type Op = [string, (i: Qcow2Image) => void];
  const w = (off: number, len: number, pat: number): Op => [`write -P ${pat} ${off} ${len}`, (i) => i.write(off, new Uint8Array(len).fill(pat))];
  const z = (off: number, len: number, unmap = false): Op => [`write -z ${unmap ? '-u ' : ''}${off} ${len}`, (i) => i.writeZeroes(off, len, { unmap })];
  const d = (off: number, len: number): Op => [`discard ${off} ${len}`, (i) => i.discard(off, len)];

  function twin(name: string, createArgs: string[], size: number, ops: Op[]): { ours: string; theirs: string } {
    const ours = p(`${name}-ours.qcow2`);
    const theirs = p(`${name}-theirs.qcow2`);
    qemuImg('create', '-q', '-f', 'qcow2', ...createArgs, ours, String(size));
    fs.copyFileSync(ours, theirs);
    const img = openQcow2File(ours);
    for (const [, f] of ops) f(img);
    img.close();
    qemuIo(theirs, ops.map(([c]) => c));
    return { ours, theirs };
  }

  const ops: Op[] = [
    w(0, 64 * KiB, 0x21),
    w(100 * KiB, 3000, 0x22),
    z(0, 4 * KiB), // v2: zero data; v3: stays allocated, reads zero
    z(64 * KiB, 128 * KiB), // aligned, unallocated
    z(300 * KiB + 7, 20 * KiB), // unaligned
    d(64 * KiB, 64 * KiB), // whole allocated cluster
    d(5 * KiB, 2 * KiB), // partial cluster: a no-op for qcow2
    w(512 * KiB - 512, 1024, 0x23),
    z(512 * KiB, 64 * KiB, true),
  ];

  for (const compat of ['0.10', '1.1']) {
    it(`compat=${compat} without a backing file`, async () => {
      const { ours, theirs } = twin(`twin-${compat}`, ['-o', `compat=${compat}`], MiB, ops);
      expect(await qemuCompare(ours, theirs)).toBe('identical');
      await expectClean(ours);
      expect(await qemuMap(ours)).toBe(await qemuMap(theirs));
    });
    it(`compat=${compat} over a raw backing file`, async () => {
      fs.writeFileSync(p(`twin-base-${compat}.raw`), data(MiB, 77, 1));
      const { ours, theirs } = twin(`twin-b-${compat}`, ['-o', `compat=${compat}`, '-b', `twin-base-${compat}.raw`, '-F', 'raw'], MiB, ops);
      expect(await qemuCompare(ours, theirs)).toBe('identical');
      await expectClean(ours);
      expect(await qemuMap(ours)).toBe(await qemuMap(theirs));
    });
  }

  it('extended L2 over a raw backing file: subcluster COW keeps the other subclusters on the backing file', async () => {
    fs.writeFileSync(p('twin-xb.raw'), data(MiB, 78, 1));
    const sc = 2 * KiB;
    const xops: Op[] = [
      w(sc + 10, 100, 0x31), // one subcluster allocated, the rest still from the backing file
      w(64 * KiB + 3 * sc, 2 * sc, 0x32),
      z(64 * KiB + 8 * sc, sc), // zero subcluster over backing data
      z(128 * KiB, 64 * KiB), // whole cluster zero over backing data
      d(192 * KiB, 64 * KiB), // discard with a backing file: reads zeros afterwards
      w(192 * KiB + 5 * sc, 10, 0x33),
      w(256 * KiB + 31 * sc, sc, 0x34), // last subcluster of a cluster
    ];
    const { ours, theirs } = twin('twin-xb', ['-o', 'extended_l2=on', '-b', 'twin-xb.raw', '-F', 'raw'], MiB, xops);
    expect(await qemuCompare(ours, theirs)).toBe('identical');
    await expectClean(ours);
    expect(await qemuMap(ours)).toBe(await qemuMap(theirs));
  });
});

describe('header bytes we do not interpret survive our header rewrites', () => {
  it('header_length 128 with extra bytes and an unknown extension, rewritten by a read-write open', async () => {
    const f = p('keep-header.qcow2');
    qemuImg('create', '-q', '-f', 'qcow2', f, '1M');
    qemuIo(f, ['write -P 0xc1 0 4k']);
    const file = new Uint8Array(fs.readFileSync(f));
    const v = new DataView(file.buffer);
    const oldLen = v.getUint32(100);
    // Move the extension list 16 bytes down and put recognisable bytes in the header's tail.
    const exts = file.slice(oldLen, 4096 - 16);
    file.set(exts, 128);
    for (let i = 112; i < 128; i++) file[i] = 0xe0 + (i - 112);
    v.setUint32(100, 128);
    // Unknown extension first in the list.
    const unk = new Uint8Array([0x6a, 0x6b, 0x6c, 0x6d, 0, 0, 0, 5, 1, 2, 3, 4, 5, 0, 0, 0]);
    file.set(file.slice(128, 4096 - 16), 128 + 16);
    file.set(unk, 128);
    v.setBigUint64(88, 1n << 40n); // unknown autoclear bit: forces a header rewrite on our read-write open
    fs.writeFileSync(f, file);
    expect((await qemuCheck(f)).rc).toBe(0);
    const img = openQcow2File(f);
    img.write(4096, new Uint8Array(512).fill(0xc2));
    img.close();
    const after = new Uint8Array(fs.readFileSync(f));
    const av = new DataView(after.buffer);
    expect(av.getBigUint64(88)).toBe(0n);
    expect(av.getUint32(100)).toBe(128);
    expect(Array.from(after.subarray(105, 128))).toEqual(Array.from(file.subarray(105, 128)));
    // The unknown extension is still in the list, byte for byte.
    let pos = 128;
    let found = false;
    while (av.getUint32(pos) !== 0) {
      const len = av.getUint32(pos + 4);
      if (av.getUint32(pos) === 0x6a6b6c6d) found = Buffer.compare(Buffer.from(after.subarray(pos, pos + 13)), Buffer.from(unk.subarray(0, 13))) === 0;
      pos += 8 + Math.ceil(len / 8) * 8;
    }
    expect(found).toBe(true);
    await expectClean(f);
    const raw = await qemuRaw(f);
    expect(raw[0]).toBe(0xc1);
    expect(raw[4096]).toBe(0xc2);
  });
});
