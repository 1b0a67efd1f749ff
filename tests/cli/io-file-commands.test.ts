/**
 * qemu-io's info, truncate, sleep and quit, and write -s (data from a file),
 * through our io against qemu-io 7.2 on copies of the same image: the same
 * stdout (timing lines aside), the same stderr (each tool's own prefix aside),
 * the same exit status, and images qemu-img compare finds identical.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { imgCompare } from '../../src/qemu/index.js';
import { ioArgs, ok, ours, qemuImg, qemuIo, scratchDir, withoutTimings } from './helpers.js';

const dir = scratchDir('io-file');
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

const short = path.join(dir, 'abc');
const empty = path.join(dir, 'empty');
fs.writeFileSync(short, 'abc');
fs.writeFileSync(empty, '');

const prefixless = (s: string) => s.replace(/^(qemu-io|qcow2-harness): /gm, '');

let n = 0;
async function agree(create: string[], size: string, commands: string[]): Promise<void> {
  const q = path.join(dir, `q${++n}.qcow2`);
  const o = path.join(dir, `o${n}.qcow2`);
  ok(await qemuImg(['create', '-q', '-f', 'qcow2', ...create, q, size]), 'create');
  fs.copyFileSync(q, o);
  const theirs = await qemuIo([...ioArgs(commands), q]);
  const mine = await ours(dir, ['io', o, ...ioArgs(commands)]);
  expect({ rc: mine.rc, stdout: withoutTimings(mine.stdout), stderr: prefixless(mine.stderr) }).toEqual({
    rc: theirs.rc,
    stdout: withoutTimings(theirs.stdout),
    stderr: prefixless(theirs.stderr),
  });
  expect((await imgCompare(q, o)).rc, `qemu-img compare after ${commands.join('; ')}`).toBe(0);
}

describe('qemu-io file commands through our io agree with qemu-io', () => {
  it('info on v3, v2 at 512 B clusters and extended L2 at 2 MiB clusters (cluster size, VM state offset, format-specific lines)', async () => {
    await agree(['-o', 'cluster_size=65536,lazy_refcounts=on'], '1M', ['info', 'i']);
    await agree(['-o', 'compat=0.10,cluster_size=512'], '100M', ['info']);
    await agree(['-o', 'extended_l2=on,cluster_size=2M,refcount_bits=64'], '5G', ['info', 'truncate 6G', 'info']);
    await agree(['-o', 'compression_type=zstd,cluster_size=4096'], '3M', ['info x', 'info']);
  });

  it('truncate grows and shrinks (whole clusters), and refuses what qemu-io refuses with its words', async () => {
    await agree([], '1M', ['truncate 2M', 'length', 'truncate 512k', 'length', 'read -P 0 0 512k', 't 3M', 'length']);
    await agree([], '1M', ['write -P 5 0 1M', 'truncate 256k', 'truncate 1M', 'read -P 5 0 256k', 'read -P 0 256k 768k']);
    await agree([], '1M', ['truncate 1000', 'truncate x', 'truncate', 'truncate -m bogus 2M', 'truncate 1 2 3 4', 'length']);
  });

  it('sleep and quit', async () => {
    await agree([], '1M', ['sleep x', 'sleep 5', 'sleep 0x3', 'sleep', 'length']);
    await agree([], '1M', ['write -P 7 0 64k', 'quit', 'write -P 8 0 64k']);
    await agree([], '1M', ['q', 'length']);
  });

  it('write -s repeats a short file, and reports a missing, empty or unreadable one as qemu-io does', async () => {
    await agree([], '1M', [`write -s ${short} 0 10`, 'read -v 0 16', `write -s ${short} 512 64k`, 'read -v 65530 16']);
    await agree([], '1M', [`write -s ${short} -c 0 64k`, 'read -v 0 16']);
    await agree([], '1M', [`write -s ${path.join(dir, 'missing')} 0 10`, `write -s ${empty} 0 10`, `write -s ${dir} 0 10`, 'read -v 0 16']);
    await agree([], '1M', [`write -s ${short} -P 1 0 10`, `write -s ${short} -z 0 512`]);
  });
});
