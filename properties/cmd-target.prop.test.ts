/**
 * The cmd: target end to end, with the example protocol adapter that forwards
 * to qemu-io/qemu-img (docs/cmd-protocol.md): the protocol works, and a program
 * that breaks it is reported, not trusted.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { expect, it } from 'vitest';
import { runTrace } from '../src/harness/execute.js';
import { assertTraces } from '../src/harness/property.js';
import { makeTarget } from '../src/harness/targets/index.js';

const example = path.join(import.meta.dirname, '..', 'src', 'harness', 'targets', 'cmd-example-qemu.mjs');
const config = { size: 65536, clusterSize: 4096, refcountBits: 16, compat: '1.1' as const, lazyRefcounts: false, extendedL2: false, compressionType: 'zlib' as const };

it('a protocol-speaking program passes the oracles (fixed seed)', async () => {
  const r = await assertTraces(`cmd:node ${example}`, { seed: 77, numRuns: 6, maxOps: 6 });
  expect(r.runs).toBe(6);
});

it('a program that answers garbage or dies is a failure, not a pass', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qh-cmd-'));
  try {
    const liar = path.join(dir, 'liar.sh');
    fs.writeFileSync(liar, '#!/bin/sh\nread line; echo "not json"\n');
    const r1 = await runTrace(makeTarget(`cmd:sh ${liar}`), config, { ops: [{ kind: 'write', off: 0, len: 512 }] });
    expect(r1.failure?.oracle).toBe('exception');
    expect(r1.failure?.message).toMatch(/not a JSON line/);
    const silent = path.join(dir, 'silent.sh');
    fs.writeFileSync(silent, '#!/bin/sh\nexec sleep 30\n');
    const r2 = await runTrace(makeTarget(`cmd:sh ${silent}`, { timeoutMs: 500 }), config, { ops: [] });
    expect(r2.failure?.oracle).toBe('hang');
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
