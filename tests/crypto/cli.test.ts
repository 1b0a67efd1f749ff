/**
 * Encrypted images end to end through the CLI, against the real qemu-img and
 * qemu-io: --object secret / --image-opts, create -o encrypt.*, info's encrypt
 * block, amend of LUKS key slots. iter-time is 10 ms so each PBKDF2 is short
 * (creation still measures PBKDF2 speed, as QEMU does: about a second each).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ioArgs, ok, ours, qemuImg, qemuIo, scratchDir } from '../cli/helpers.js';

const dir = scratchDir('crypto');
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
const at = (n: string) => path.join(dir, n);
const S0 = 'secret,id=s0,data=correct horse';
const S1 = 'secret,id=s1,data=battery staple';
const opts = (file: string, secret = 's0') => `driver=qcow2,file.filename=${at(file)},encrypt.key-secret=${secret}`;
const LUKS = 'encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10';

beforeAll(async () => {
  ok(await qemuImg(['create', '-q', '-f', 'qcow2', '--object', S0, '-o', LUKS, at('qemu-luks.qcow2'), '4M']), 'qemu-img create luks');
  ok(await ours(dir, ['create', '-q', '--object', S0, '-o', LUKS, at('ours-luks.qcow2'), '4M']), 'create luks');
});

describe('LUKS images', () => {
  it('io writes an image qemu-img made, qemu-io reads it back, qemu-img check is clean', async () => {
    const w = ok(await ours(dir, ['io', '--object', S0, '--image-opts', opts('qemu-luks.qcow2'), ...ioArgs(['write -P 0x5c 4096 70000', 'read -P 0x5c 4096 70000'])]), 'io');
    expect(w.stdout).toContain('read 70000/70000 bytes at offset 4096');
    const r = ok(await qemuIo(['--object', S0, '--image-opts', opts('qemu-luks.qcow2'), '-c', 'read -P 0x5c 4096 70000', '-c', 'read -P 0 0 4096']), 'qemu-io');
    expect(r.stdout).not.toContain('verification failed');
    ok(await qemuImg(['check', '--object', S0, '--image-opts', opts('qemu-luks.qcow2')]), 'qemu-img check');
    // The ciphertext is in the file, not the pattern.
    expect(fs.readFileSync(at('qemu-luks.qcow2')).includes(Buffer.alloc(512, 0x5c))).toBe(false);
  });

  it('an image we create opens in qemu-io with the secret, both ways', async () => {
    ok(await qemuIo(['--object', S0, '--image-opts', opts('ours-luks.qcow2'), '-c', 'write -P 0xa1 1M 64k']), 'qemu-io write');
    ok(await ours(dir, ['io', '--object', S0, '--image-opts', opts('ours-luks.qcow2'), ...ioArgs(['write -P 0xb2 0 512', 'write -P 0xb3 3M 9000'])]), 'io write');
    const r = ok(
      await qemuIo(['--object', S0, '--image-opts', opts('ours-luks.qcow2'), ...ioArgs(['read -P 0xb2 0 512', 'read -P 0xb3 3M 9000', 'read -P 0xa1 1M 64k'])]),
      'qemu-io read',
    );
    expect(r.stdout).not.toContain('verification failed');
    const c = ok(await ours(dir, ['io', '--object', S0, '--image-opts', opts('ours-luks.qcow2'), '-c', 'read -P 0xa1 1M 64k']), 'io read');
    expect(c.stdout).not.toContain('verification failed');
    ok(await qemuImg(['check', '--object', S0, '--image-opts', opts('ours-luks.qcow2')]), 'qemu-img check');
    ok(await ours(dir, ['check', '--object', S0, '--image-opts', opts('ours-luks.qcow2')]), 'check');
  });

  it('info prints what qemu-img info prints, human and json', async () => {
    for (const f of ['ours-luks.qcow2', 'qemu-luks.qcow2']) {
      for (const out of [[], ['--output', 'json']]) {
        const q = ok(await qemuImg(['info', ...out, at(f)]), 'qemu-img info');
        const o = ok(await ours(dir, ['info', ...out, at(f)]), 'info');
        expect(o.stdout).toBe(q.stdout);
      }
    }
    const j = JSON.parse(ok(await ours(dir, ['info', '--output', 'json', at('ours-luks.qcow2')]), 'info').stdout);
    expect(j.encrypted).toBe(true);
    expect(j['format-specific'].data.encrypt).toMatchObject({ format: 'luks', 'cipher-alg': 'aes-256', 'cipher-mode': 'xts', 'ivgen-alg': 'plain64' });
  });

  it('amend adds and erases key slots as qemu-img amend does', async () => {
    fs.copyFileSync(at('ours-luks.qcow2'), at('amend.qcow2'));
    ok(
      await ours(dir, ['amend', '--object', S0, '--object', S1, '-o', 'encrypt.state=active,encrypt.new-secret=s1,encrypt.keyslot=3,encrypt.iter-time=10', '--image-opts', opts('amend.qcow2')]),
      'amend add',
    );
    const r = ok(await qemuIo(['--object', S1, '--image-opts', opts('amend.qcow2', 's1'), '-c', 'read -P 0xb2 0 512']), 'qemu-io with the new secret');
    expect(r.stdout).not.toContain('verification failed');
    ok(await ours(dir, ['amend', '--object', S1, '-o', 'encrypt.state=inactive,encrypt.keyslot=0', '--image-opts', opts('amend.qcow2', 's1')]), 'amend erase');
    const old = await qemuIo(['--object', S0, '--image-opts', opts('amend.qcow2'), '-c', 'read 0 512']);
    expect(old.rc).toBe(1);
    expect(old.stderr).toContain('Invalid password, cannot unlock any keyslot');
    const info = JSON.parse(ok(await qemuImg(['info', '--output', 'json', at('amend.qcow2')]), 'qemu-img info').stdout);
    const slots = info['format-specific'].data.encrypt.slots as { active: boolean }[];
    expect(slots.map((s) => s.active)).toEqual([false, false, false, true, false, false, false, false]);
    // Erasing the last slot is refused; the image stays readable.
    const last = await ours(dir, ['amend', '--object', S1, '-o', 'encrypt.state=inactive,encrypt.keyslot=3', '--image-opts', opts('amend.qcow2', 's1')]);
    expect(last.rc).toBe(1);
    expect(last.stderr).toMatch(/^qcow2-harness: .*erase the only active keyslot 3.*refusing operation\n$/);
    ok(await qemuImg(['check', '--object', S1, '--image-opts', opts('amend.qcow2', 's1')]), 'qemu-img check');
  });

  it('refuses with qemu-img\'s words and exit code 1', async () => {
    const cases: [string[], RegExp][] = [
      [['io', '-c', 'read 0 512', at('ours-luks.qcow2')], /Parameter 'encrypt.key-secret' is required for cipher/],
      [['check', at('ours-luks.qcow2')], /Parameter 'encrypt.key-secret' is required for cipher/],
      [['io', '--object', 'secret,id=s0,data=wrong', '--image-opts', opts('ours-luks.qcow2'), '-c', 'read 0 512'], /Invalid password, cannot unlock any keyslot/],
      [['io', '--image-opts', opts('ours-luks.qcow2'), '-c', 'read 0 512'], /No secret with id 's0'/],
      [['info', '-f', 'qcow2', '--image-opts', opts('ours-luks.qcow2')], /--image-opts and --format are mutually exclusive/],
      [['info', '--object', 'secret,id=s0', at('ours-luks.qcow2')], /Either 'file' or 'data' must be provided/],
      [['info', '--image-opts', `${opts('ours-luks.qcow2')},encrypt.format=aes`], /Header reported 'luks' encryption format but options specify 'aes'/],
      [['create', '-q', '-o', 'encrypt.format=luks,encrypt.key-secret=nope', at('x.qcow2'), '1M'], /No secret with id 'nope'/],
      [['create', '-q', '-o', 'encrypt.format=luks', at('x.qcow2'), '1M'], /Parameter 'encrypt.key-secret' is required for cipher/],
    ];
    for (const [argv, msg] of cases) {
      const r = await ours(dir, argv);
      expect(r.rc, argv.join(' ')).toBe(1);
      expect(r.stderr, argv.join(' ')).toMatch(msg);
      expect(r.stderr.trim().split('\n'), argv.join(' ')).toHaveLength(1);
    }
  });
});

describe('legacy AES images', () => {
  it('encrypt.format=aes and encryption=on: qemu-io reads what we wrote, info matches qemu-img', async () => {
    for (const [name, o] of [
      ['aes.qcow2', 'encrypt.format=aes,encrypt.key-secret=s0'],
      ['legacy.qcow2', 'encryption=on,encrypt.key-secret=s0'],
    ] as const) {
      const c = ok(await ours(dir, ['create', '--object', S0, '-o', o, at(name), '1M']), 'create');
      const q = ok(await qemuImg(['create', '--object', S0, '-o', o, '-f', 'qcow2', at(`q-${name}`), '1M']), 'qemu-img create');
      expect(c.stdout).toBe(q.stdout.replace(`q-${name}`, name));
      ok(await ours(dir, ['io', '--object', S0, '--image-opts', opts(name), '-c', 'write -P 0x77 512 4096']), 'io');
      const r = ok(await qemuIo(['--object', S0, '--image-opts', opts(name), '-c', 'read -P 0x77 512 4096']), 'qemu-io');
      expect(r.stdout).not.toContain('verification failed');
      const qi = ok(await qemuImg(['info', '--output', 'json', at(name)]), 'qemu-img info');
      expect(ok(await ours(dir, ['info', '--output', 'json', at(name)]), 'info').stdout).toBe(qi.stdout);
      ok(await qemuImg(['check', '--object', S0, '--image-opts', opts(name)]), 'qemu-img check');
    }
  });
});
