import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { configProblems, type TraceConfig } from './config.js';
import { qemuDeclines } from './declines.js';
import { runTrace } from './execute.js';
import type { Op } from './ops.js';
import { configFeatures, protocolLacks, steer } from './reader/features.js';
import { makeTarget } from './targets/index.js';
import type { KnownBug } from './targets/types.js';
import { plainConfig } from '../../tests/support/trace.js';

const tmpRoot = fs.mkdtempSync(path.join(os.tmpdir(), 'qh-declines-'));
afterAll(() => fs.rmSync(tmpRoot, { recursive: true, force: true }));

const plain = plainConfig({ size: 131072 });
const aes: TraceConfig = { ...plain, encrypt: { format: 'aes' } };
const known = new Set<KnownBug>(['unencrypted-compressed-write', 'encrypted-downgrade-garbage']);

describe('what the qemu target declines on an encrypted image', () => {
  it('compressed writes (also under a fault) and downgrades, only while they are known bugs, only when encrypted', () => {
    const wc: Op = { kind: 'write-compressed', off: 0, len: 65536 };
    const down: Op = { kind: 'amend', key: 'compat', value: '0.10' };
    expect(qemuDeclines(aes, wc, known)).toMatch(/unencrypted/);
    expect(qemuDeclines(aes, { kind: 'fault', where: 'cluster_alloc_bytes', errno: 'eio', op: wc }, known)).toMatch(/unencrypted/);
    expect(qemuDeclines(aes, down, known)).toMatch(/garbage/);
    expect(qemuDeclines(aes, { kind: 'amend', key: 'compat', value: '1.1' }, known)).toBeUndefined();
    expect(qemuDeclines(aes, { kind: 'write', off: 0, len: 512 }, known)).toBeUndefined();
    expect(qemuDeclines(plain, wc, known)).toBeUndefined();
    expect(qemuDeclines(aes, wc, new Set())).toBeUndefined();
  });

  it('an explicit compressed write on QEMU is refused by the target itself, as the model refuses it; strict runs it and QEMU takes it', async () => {
    const ops: Op[] = [
      { kind: 'write', off: 65536, len: 4096 },
      { kind: 'write-compressed', off: 0, len: 65536 },
    ];
    const r = await runTrace(makeTarget('qemu'), aes, { ops }, { tmpRoot });
    expect(r.failure).toBeUndefined();
    expect([...r.refused]).toEqual([2]);
    const strict = await runTrace(makeTarget('qemu', { strict: true }), aes, { ops }, { tmpRoot });
    expect(strict.failure?.oracle).toBe('op');
    expect(strict.failure?.message).toContain('must be refused');
  });
});

describe('configurations the cmd protocol cannot carry', () => {
  const withData: TraceConfig = { ...plain, dataFile: { raw: false } };
  it('are named as features, declined for cmd programs and readers, and steered away from', async () => {
    expect(configFeatures(aes)).toContain('encrypt.format=aes');
    expect(protocolLacks({ ...aes, dataFile: { raw: false } })).toEqual(['data_file', 'encrypt.format=aes']);
    expect(protocolLacks({ ...plain, lazyRefcounts: true })).toEqual([]);
    const steered = steer({ ...withData, encrypt: { format: 'luks' } }, new Set(['data_file', 'encrypt.format=luks']));
    expect(steered.dataFile).toBeUndefined();
    expect(steered.encrypt).toBeUndefined();
    expect(configProblems(steered)).toEqual([]);
    const r = await runTrace(makeTarget('ts', { producer: 'qemu' }), withData, { ops: [{ kind: 'write', off: 0, len: 512 }] }, { tmpRoot });
    expect(r.failure).toBeUndefined();
    expect(r.refusal?.features).toEqual(['data_file']);
  });

  it('configProblems keeps the pairs QEMU or the model cannot do out', () => {
    expect(configProblems({ ...plain, compat: '0.10', refcountBits: 16, encrypt: { format: 'luks' } })).toContain('encrypt.format=luks is generated with compat=1.1 only');
    expect(configProblems({ ...aes, preallocation: 'metadata' })).toContain('preallocation=metadata on an encrypted image reads garbage');
    expect(configProblems({ ...aes, dataFile: { raw: true } })).toContain('data_file_raw cannot be used with encryption');
    expect(configProblems({ ...plain, compat: '0.10', encrypt: { format: 'aes' } })).toEqual([]);
  });
});
