/**
 * The installed command itself (dist/cli/main.js, spawned): help everywhere,
 * one-line errors with the documented exit codes, never a stack trace.
 */
import { execa, execaNode } from 'execa';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { QCOW2_MAGIC } from '../../src/qcow2/format/constants.js';
import { ok, qemuImg, scratchDir, ensureBuilt } from './helpers.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const bin = path.join(root, 'dist/cli/main.js');
const dir = scratchDir('bin');
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

// The bin runs compiled code.
beforeAll(ensureBuilt);

async function run(args: string[]) {
  const r = await execaNode(bin, args, { cwd: dir, reject: false, stripFinalNewline: false, env: { LC_ALL: 'C' } });
  return { rc: r.exitCode, stdout: String(r.stdout), stderr: String(r.stderr) };
}

function expectOneLineError(stderr: string): void {
  expect(stderr).toMatch(/^qcow2-harness: /);
  expect(stderr).not.toMatch(/^\s+at /m);
}

describe('the qcow2-harness command', () => {
  it('has --help for itself and every command', async () => {
    const top = await run(['--help']);
    expect(top.rc).toBe(0);
    for (const cmd of ['create', 'info', 'convert', 'check', 'io', 'snapshot', 'amend', 'resize', 'demo']) {
      expect(top.stdout).toContain(`  ${cmd}`);
      const r = await run([cmd, '--help']);
      expect({ cmd, rc: r.rc, usage: r.stdout.startsWith('Usage: qcow2-harness ' + cmd) }).toEqual({ cmd, rc: 0, usage: true });
    }
    // The harness's commands word their own help; they must still answer it.
    for (const cmd of ['fuzz', 'replay', 'minimize', 'merge', 'bench']) {
      expect(top.stdout).toContain(`  ${cmd}`);
      const r = await run([cmd, '--help']);
      expect({ cmd, rc: r.rc, said: r.stdout.includes(cmd) }).toEqual({ cmd, rc: 0, said: true });
    }
    // Every command's help ends with its exit codes.
    for (const cmd of ['create', 'info', 'convert', 'check', 'io', 'snapshot', 'amend', 'resize', 'demo', 'fuzz', 'replay', 'minimize', 'merge', 'bench']) {
      expect({ cmd, exitCodes: /\nExit codes[^\n]*: 0 /.test((await run([cmd, '--help'])).stdout) }).toEqual({ cmd, exitCodes: true });
    }
  });

  // In qemu's words: the file driver's own "Could not open" inside qemu-img's, qemu-io's "can't open device".
  it('reports a missing file in one line, exit 1', async () => {
    for (const cmd of [['info'], ['check'], ['convert', '-O', 'raw'], ['io', '-c', 'read 0 1'], ['snapshot', '-l'], ['amend', '-o', 'compat=1.1']]) {
      const args = cmd[0] === 'convert' ? [...cmd, 'missing.qcow2', 'out.raw'] : cmd[0] === 'io' ? ['io', 'missing.qcow2', '-c', 'read 0 1'] : [...cmd, 'missing.qcow2'];
      const r = await run(args);
      expect(r.rc, args.join(' ')).toBe(1);
      const why = cmd[0] === 'io' ? "can't open device missing.qcow2: " : "Could not open 'missing.qcow2': ";
      expect(r.stderr, args.join(' ')).toBe(`qcow2-harness: ${why}Could not open 'missing.qcow2': No such file or directory\n`);
    }
  });

  it('usage errors name the problem and point at --help', async () => {
    const r = await run(['create', '-Z', 'x.qcow2', '1M']);
    expect(r.rc).toBe(1);
    expect(r.stderr).toBe("qcow2-harness: invalid option -- 'Z'\nTry 'qcow2-harness create --help' for more information\n");
    const u = await run(['frobnicate']);
    expect(u.rc).toBe(1);
    expectOneLineError(u.stderr);
  });

  it('the harness commands: a bad command line is one line and exit 2 (1 means failures found)', async () => {
    const cases: [string[], string][] = [
      [['fuzz', '--target', 'nope'], "unknown target 'nope'"],
      [['fuzz', '--runs', '0'], '--runs must be an integer >= 1'],
      [['fuzz', '--time', '5', '--runs', '5'], 'give --time or --runs, not both'],
      [['fuzz', '--shard', '3/3'], '--shard must be i/n with 0 <= i < n'],
      [['fuzz', '--frob'], "unrecognized option '--frob'"],
      [['fuzz', '--include', 'amend'], "--include: unknown op kind 'amend' (accepted: bitmap)"],
      [['fuzz', '--include'], "option '--include' requires an argument"],
      [['fuzz', '--include', 'bitmap', '--producer', 'qemu'], '--include bitmap needs --target ts or qemu (a writer whose bitmaps QEMU can read), without --producer'],
      [['fuzz', '--include', 'bitmap', '--exclude', 'bitmap'], '--include bitmap and --exclude bitmap contradict each other'],
      [['replay'], 'give a corpus entry or a corpus directory'],
      [['replay', 'missing'], "'missing' is neither a corpus entry nor a corpus directory"],
      [['minimize', 'missing'], "'missing' is not a corpus entry"],
      [['merge', 'dest'], 'give DEST and at least one SRC corpus'],
    ];
    for (const [args, message] of cases) {
      const r = await run(args);
      expect({ args, rc: r.rc, stderr: r.stderr }).toEqual({
        args,
        rc: 2,
        stderr: `qcow2-harness: ${message}\nTry 'qcow2-harness ${args[0]} --help' for more information\n`,
      });
    }
    // bench keeps qemu-img's 1 for a bad command line (its 1 is "a result differs").
    const b = await run(['bench', '--size', '3M']);
    expect(b.rc).toBe(1);
    expect(b.stderr).toBe("qcow2-harness: --size must be a multiple of 2 MiB\nTry 'qcow2-harness bench --help' for more information\n");
  });

  it('answers a damaged image cleanly (info, check, convert)', async () => {
    const f = path.join(dir, 'bad.qcow2');
    ok(await qemuImg(['create', '-q', '-f', 'qcow2', f, '1M']), 'create');
    const b = fs.readFileSync(f);
    b.writeUInt32BE(QCOW2_MAGIC, 0);
    b.writeUInt32BE(0x7fffffff, 20); // cluster_bits: nonsense
    fs.writeFileSync(f, b);
    for (const args of [['info', 'bad.qcow2'], ['check', 'bad.qcow2'], ['convert', '-O', 'raw', 'bad.qcow2', 'bad.raw']]) {
      const r = await run(args);
      expect(r.rc, args.join(' ')).toBe(1);
      expectOneLineError(r.stderr);
      expect(r.stderr.split('\n').length, r.stderr).toBe(2);
    }
    expect(fs.existsSync(path.join(dir, 'bad.raw'))).toBe(false);
  });

  it('refuses an unknown incompatible feature bit', async () => {
    const f = path.join(dir, 'incompat.qcow2');
    ok(await qemuImg(['create', '-q', '-f', 'qcow2', f, '1M']), 'create');
    const b = fs.readFileSync(f);
    b[79] = b[79]! | 0x80; // incompatible_features bit 7 (header offset 72, big endian)
    fs.writeFileSync(f, b);
    const q = await qemuImg(['info', f]);
    const r = await run(['info', 'incompat.qcow2']);
    expect(q.rc).toBe(1);
    expect(r.rc).toBe(1);
    expectOneLineError(r.stderr);
  });

  it('check exit codes: 0 clean, 63 raw', async () => {
    ok(await qemuImg(['create', '-q', '-f', 'qcow2', path.join(dir, 'c.qcow2'), '1M']), 'create');
    ok(await qemuImg(['create', '-q', '-f', 'raw', path.join(dir, 'c.raw'), '1M']), 'create');
    expect((await run(['check', 'c.qcow2'])).rc).toBe(0);
    const raw = await run(['check', 'c.raw']);
    expect(raw.rc).toBe(63);
    expect(raw.stderr).toBe('qcow2-harness: This image format does not support checks\n');
  });

  it('demo runs and passes', async () => {
    const r = await run(['demo']);
    expect(r.stderr).toBe('');
    expect(r.stdout).toMatch(/RESULT: OK/);
    expect(r.rc).toBe(0);
  });
});

describe('io reading commands from standard input', () => {
  // Scripts of every kind qemu-io's command loop meets: output, a failing command,
  // a blank line, a '#' line (a command to qemu-io, not a comment), quit, no final newline.
  const scripts = [
    'write -P 0x33 0 4k\nread -P 0x33 0 4k\nbogus\n\nlength\n',
    'length',
    '# not a comment\n  length\nlength extra\nquit\nlength\n',
  ];
  it.each(scripts.map((s, i) => [i, s]))('script %i prints what qemu-io prints, prompts included', async (_i, script) => {
    const timing = (s: string) => s.replace(/; [\d.]+ sec \(.*\)/g, '; T sec');
    const results = [];
    for (const who of ['qemu', 'ours'] as const) {
      ok(await qemuImg(['create', '-q', '-f', 'qcow2', path.join(dir, 'stdin.qcow2'), '1M']), 'create');
      const r =
        who === 'qemu'
          ? await execa('qemu-io', ['stdin.qcow2'], { cwd: dir, input: script, reject: false, stripFinalNewline: false })
          : await execaNode(bin, ['io', 'stdin.qcow2'], { cwd: dir, input: script, reject: false, stripFinalNewline: false, env: { LC_ALL: 'C' } });
      results.push({ rc: r.exitCode, stdout: timing(String(r.stdout)), stderr: String(r.stderr).replace(/^qemu-io: |^qcow2-harness: /gm, '') });
    }
    expect(results[1]).toEqual(results[0]);
  });
});
