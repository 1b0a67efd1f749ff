/**
 * `qcow2-harness bitmap` against `qemu-img bitmap`: for each command line,
 * both tools run on copies of the same image; the exit codes, the messages
 * and the bitmaps qemu-img info lists afterwards must be the same, and the
 * bitmap contents QEMU reads back through qemu-nbd too.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { qemuDirtyRanges } from '../../src/qemu/index.js';
import { ok, ours, qemuImg, qemuIo, scratchDir } from '../cli/helpers.js';
import { qemuCheck } from '../support/qemu.js';

const dir = scratchDir('bitmap-cli');
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
let seq = 0;

interface Listed {
  name: string;
  flags: string[];
  granularity: number;
}

async function listed(f: string): Promise<Listed[]> {
  const j = JSON.parse(ok(await qemuImg(['info', '--output=json', f]), 'qemu-img info').stdout) as {
    'format-specific': { data: { bitmaps?: Listed[] } };
  };
  return j['format-specific'].data.bitmaps ?? [];
}

/** qemu-img's message in our words: our program name, its line breaks joined, its node names replaced by the file. */
function normalized(stderr: string, file: string): string {
  return stderr
    .replace(/qemu-img: /g, '')
    .replace(/qcow2-harness: /g, '')
    .replace(/'#block\d+'/g, `'${file}'`)
    .replace(/\s*\n\s*/g, ' ')
    .trim();
}

async function pair(setup: (f: string) => Promise<void>, opts = ''): Promise<[string, string]> {
  const n = ++seq;
  const q = path.join(dir, `q${n}.qcow2`);
  ok(await qemuImg(['create', '-q', '-f', 'qcow2', ...(opts ? ['-o', opts] : []), q, '4M']), 'create');
  await setup(q);
  const o = path.join(dir, `o${n}.qcow2`);
  fs.copyFileSync(q, o);
  return [q, o];
}

const withBitmaps = async (f: string): Promise<void> => {
  ok(await qemuImg(['bitmap', '--add', f, 'b0']), 'add b0');
  ok(await qemuImg(['bitmap', '--add', '-g', '4k', '--disable', f, 'b1']), 'add b1');
  ok(await qemuIo(['-c', 'write 100k 5k', f]), 'write');
};

// Each command line runs as `bitmap ARGS... FILE NAME` (FILE inserted before the last word).
const CASES: { args: string[]; opts?: string }[] = [
  { args: ['--add', 'n'] },
  { args: ['--add', '-g', '128k', 'n'] },
  { args: ['--add', '--disable', 'n'] },
  { args: ['--disable', '--add', 'n'] },
  { args: ['--add', 'b0'] },
  { args: ['--add', '--add', 'n'] },
  { args: ['--add', '-g', '1000', 'n'] },
  { args: ['--add', '-g', '256', 'n'] },
  { args: ['--add', '-g', '4G', 'n'] },
  { args: ['--add', '-g', 'abc', 'n'] },
  { args: ['--add', 'n'], opts: 'compat=0.10' },
  { args: ['--add', 'n'], opts: 'cluster_size=512' },
  { args: ['--remove', 'b0'] },
  { args: ['--remove', 'nope'] },
  { args: ['--remove', '-g', '64k', 'b0'] },
  { args: ['--clear', 'b0'] },
  { args: ['--enable', 'b1'] },
  { args: ['--disable', 'b0'] },
  { args: ['--enable', 'nope'] },
  { args: ['--merge', 'b0', 'b1'] },
  { args: ['--merge=b0', '--clear', 'b1'] },
  { args: ['--add', '--merge', 'b0', 'n'] },
  { args: ['--merge', 'nope', 'b1'] },
  { args: ['--add', '--merge', 'nope', 'n'] },
  { args: ['-F', 'qcow2', '--merge', 'b0', 'b1'] },
  { args: ['-b', 'x', '--remove', 'b0'] },
  { args: ['b0'] },
  { args: ['--remove', '--remove', 'b0'] },
];

describe.concurrent('qcow2-harness bitmap as qemu-img bitmap', () => {
  it.each(CASES.map((c) => [c.args.join(' ') + (c.opts ? ` (-o ${c.opts})` : ''), c] as const))('%s', async (_label, c) => {
    const [q, o] = await pair(c.opts ? async () => {} : withBitmaps, c.opts);
    const argsFor = (f: string) => [...c.args.slice(0, -1), f, c.args[c.args.length - 1]!];
    const theirs = await qemuImg(['bitmap', ...argsFor(q)]);
    const mine = await ours(dir, ['bitmap', ...argsFor(o)]);
    expect(mine.rc).toBe(theirs.rc);
    expect(normalized(mine.stderr, o)).toBe(normalized(theirs.stderr, o).replaceAll(q, o));
    expect(mine.stdout).toBe(theirs.stdout);
    const after = await listed(q);
    expect(await listed(o)).toEqual(after);
    for (const b of after) expect(await qemuDirtyRanges(o, b.name)).toEqual(await qemuDirtyRanges(q, b.name));
    const check = await qemuCheck(o);
    expect([check.rc, check.corruptions, check.leaks]).toEqual([0, 0, 0]);
  });

  it('merges from another image with -b, and refuses bitmaps of another size as qemu-img does', async () => {
    const [src] = await pair(withBitmaps);
    for (const size of ['4M', '8M']) {
      const [q, o] = await pair(async (f) => {
        if (size !== '4M') ok(await qemuImg(['resize', '-q', f, size]), 'resize');
        ok(await qemuImg(['bitmap', '--add', f, 't']), 'add t');
      });
      const theirs = await qemuImg(['bitmap', '--merge', 'b0', '-b', src, '-F', 'qcow2', q, 't']);
      const mine = await ours(dir, ['bitmap', '--merge', 'b0', '-b', src, '-F', 'qcow2', o, 't']);
      expect([mine.rc, normalized(mine.stderr, o)]).toEqual([theirs.rc, normalized(theirs.stderr, o)]);
      expect(await qemuDirtyRanges(o, 't')).toEqual(await qemuDirtyRanges(q, 't'));
    }
    expect(await qemuDirtyRanges(src, 'b0')).toEqual([[65536, 65536]]);
  });
});

describe('qcow2-harness io on an image with bitmaps (issue 10: one write used to lose them)', () => {
  it('keeps an enabled and a disabled bitmap: listed without in-use, check clean, exactly the written granules', async () => {
    const [q, o] = await pair(async (f) => {
      ok(await qemuImg(['bitmap', '--add', f, 'on']), 'add on');
      ok(await qemuImg(['bitmap', '--add', '--disable', f, 'off']), 'add off');
    });
    const cmds = ['write 4k 4k', 'write -z 1M 128k', 'discard 3M 64k'];
    ok(await qemuIo([...cmds.flatMap((c) => ['-c', c]), q]), 'qemu-io');
    const mine = await ours(dir, ['io', ...cmds.flatMap((c) => ['-c', c]), o]);
    expect(mine.rc, mine.stderr).toBe(0);
    const info = await qemuImg(['info', o]);
    expect(info.stderr).toBe('');
    expect(await listed(o)).toEqual([
      { name: 'on', flags: ['auto'], granularity: 65536 },
      { name: 'off', flags: [], granularity: 65536 },
    ]);
    expect(await qemuDirtyRanges(o, 'on')).toEqual([
      [0, 65536],
      [1 << 20, 131072],
      [3 << 20, 65536],
    ]);
    expect(await qemuDirtyRanges(o, 'on')).toEqual(await qemuDirtyRanges(q, 'on'));
    expect(await qemuDirtyRanges(o, 'off')).toEqual([]);
    const check = await qemuCheck(o);
    expect([check.rc, check.corruptions, check.leaks, check.checkErrors]).toEqual([0, 0, 0, 0]);
  });
});
