import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { imageOptsString, rewriteImageArgs, rewriteShellCommand, type ImageAccess } from './access.js';
import { qemuDirtyRanges } from './dirty-bitmap.js';
import { imgCheck, imgCompare, imgConvertToRaw, imgCreate, imgInfo, imgResize, imgSnapshot } from './img.js';
import { qemuIoBatch } from './io.js';
import { QEMU_IMG, runTool } from './run.js';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qemu-access-'));
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

const secret = { id: 'sec0', data: 'pw-1' };
const access: ImageAccess = { secret };

describe('image access arguments', () => {
  it('an option string carries the key secret and the data file, commas doubled', () => {
    expect(imageOptsString('/a,b/x.qcow2', { secret, dataFile: '/d,1' })).toBe(
      'driver=qcow2,file.filename=/a,,b/x.qcow2,encrypt.key-secret=sec0,data-file.filename=/d,,1',
    );
  });

  it('qemu-img arguments get the --object after the subcommand and --image-opts for the image, without -f qcow2', () => {
    expect(rewriteImageArgs(['bitmap', '-f', 'qcow2', '--add', '/i.qcow2', 'b0'], '/i.qcow2', access)).toEqual([
      'bitmap',
      '--object',
      'secret,id=sec0,data=pw-1',
      '--add',
      '--image-opts',
      'driver=qcow2,file.filename=/i.qcow2,encrypt.key-secret=sec0',
      'b0',
    ]);
    // Nothing to add, or the image not named: unchanged.
    expect(rewriteImageArgs(['resize', '-f', 'qcow2', '/i.qcow2', '1M'], '/i.qcow2', undefined)).toEqual(['resize', '-f', 'qcow2', '/i.qcow2', '1M']);
    expect(rewriteImageArgs(['info', '/other'], '/i.qcow2', access)).toEqual(['info', '/other']);
  });

  it('repro.sh lines are rewritten word by word, quoted option strings included', () => {
    expect(rewriteShellCommand("qemu-img snapshot -c 'a b' image.qcow2", 'image.qcow2', access)).toBe(
      "qemu-img snapshot --object 'secret,id=sec0,data=pw-1' -c 'a b' --image-opts 'driver=qcow2,file.filename=image.qcow2,encrypt.key-secret=sec0'",
    );
    expect(rewriteShellCommand("qemu-io --image-opts -c 'write -q 0 512' 'driver=qcow2,file.driver=blkdebug,file.image.filename=image.qcow2'", 'image.qcow2', access)).toBe(
      "qemu-io --object 'secret,id=sec0,data=pw-1' --image-opts -c 'write -q 0 512' 'driver=qcow2,file.driver=blkdebug,file.image.filename=image.qcow2,encrypt.key-secret=sec0'",
    );
    expect(rewriteShellCommand('echo image.qcow2', 'image.qcow2', access)).toBe('echo image.qcow2');
  });
});

describe('the wrappers open an encrypted image with its secret (real qemu-img/qemu-io/qemu-nbd)', () => {
  it('LUKS: create, qemu-io, check, info, compare, convert, snapshot, resize and a bitmap read back; without the secret they fail', async () => {
    const img = path.join(dir, 'luks.qcow2');
    await imgCreate(img, { size: 65536, clusterSize: 4096, encrypt: { format: 'luks', secret, iterTimeMs: 10 } });
    expect((await runTool(QEMU_IMG, ['bitmap', '--object', `secret,id=sec0,data=${secret.data}`, '--add', '--image-opts', imageOptsString(img, access), 'b0'])).rc).toBe(0);
    const w = await qemuIoBatch(img, ['write -P 0x5a 4096 8192'], { access });
    expect(w.results.map((x) => x.ok)).toEqual([true]);
    await expect(qemuIoBatch(img, ['read 0 512'])).rejects.toThrow(/encrypt.key-secret/);

    const check = await imgCheck(img, { access });
    expect(check.rc).toBe(0);
    expect((await imgCheck(img)).rc).not.toBe(0);
    const info = await imgInfo(img, { format: 'qcow2', access });
    expect(info.encrypted).toBe(true);
    expect(info['format-specific']!.data.encrypt!.format).toBe('luks');

    const expected = path.join(dir, 'expected.raw');
    const bytes = new Uint8Array(65536);
    bytes.fill(0x5a, 4096, 12288);
    fs.writeFileSync(expected, bytes);
    expect((await imgCompare(img, expected, { formatA: 'qcow2', formatB: 'raw', access })).rc).toBe(0);
    expect((await imgCompare(img, expected, { formatA: 'qcow2', formatB: 'raw' })).rc).toBe(2);
    const raw = path.join(dir, 'luks.raw');
    await imgConvertToRaw(img, raw, { access });
    expect(new Uint8Array(fs.readFileSync(raw))).toEqual(bytes);
    // The raw bytes on disk are not the guest's: the data is encrypted.
    expect(fs.readFileSync(img).includes(Buffer.alloc(512, 0x5a))).toBe(false);

    expect((await imgSnapshot(img, 'c', 's1', undefined, access)).rc).toBe(0);
    expect((await imgSnapshot(img, 'c', 's2')).rc).not.toBe(0);
    expect((await imgResize(img, 131072, { access })).rc).toBe(0);
    expect(await qemuDirtyRanges(img, 'b0', undefined, access)).toEqual([[4096, 8192]]);
  });
});
