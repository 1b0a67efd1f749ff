/**
 * The repro script of a trace with an external data file runs with
 * qemu-img/qemu-io alone: it creates the data file beside the image (a
 * relative name, which qemu-img 7.2 takes from the script's directory) and
 * checks a saved image against its saved data file.
 */
import { execa } from 'execa';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { DATA_FILE_NAME, toModelConfig } from '../../src/harness/config.js';
import { runTrace } from '../../src/harness/execute.js';
import { applyOp, type Op } from '../../src/harness/ops.js';
import { reproScript } from '../../src/harness/repro.js';
import { makeTarget } from '../../src/harness/targets/index.js';
import { DiskModel } from '../../src/model/disk.js';
import { scratchDir } from '../cli/helpers.js';
import { plainConfig } from '../support/trace.js';

let dir: string;
beforeAll(() => {
  dir = scratchDir('datafile-repro');
});
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

const config = plainConfig({ dataFile: { raw: true } });
const ops: Op[] = [
  { kind: 'write', off: 0, len: 4096 },
  { kind: 'write-zeroes', off: 65536, len: 65536, unmap: true },
  { kind: 'write', off: 200 * 1024, len: 512 },
];

it('replays a data_file_raw trace and checks the saved image with its data file', async () => {
  // The image and data file our engine leaves behind, as the runner saves them into a corpus entry.
  const r = await runTrace(makeTarget('ts'), config, { ops }, { tmpRoot: dir, keepDir: true });
  expect(r.failure).toBeUndefined();
  const entry = fs.mkdtempSync(path.join(dir, 'entry-'));
  fs.copyFileSync(path.join(r.dir!, 'image.qcow2'), path.join(entry, 'image.qcow2'));
  fs.copyFileSync(path.join(r.dir!, DATA_FILE_NAME), path.join(entry, DATA_FILE_NAME));
  const model = new DiskModel(toModelConfig(config));
  ops.forEach((op, i) => applyOp(model, op, i + 1));
  fs.writeFileSync(path.join(entry, 'repro.sh'), reproScript({ target: 'ts', config, ops, model, refused: new Set(), oracle: 'read', message: 'none' }));
  const run = await execa('sh', [path.join(entry, 'repro.sh')], { reject: false, env: { LC_ALL: 'C', PATH: process.env.PATH } });
  expect(run.stdout, String(run.stderr)).toContain('no problem found');
  expect(run.exitCode).toBe(0);
  expect(run.stdout).not.toContain('BUG');
});
