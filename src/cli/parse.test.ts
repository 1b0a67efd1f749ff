import { describe, expect, it } from 'vitest';
import { parseArgs } from './args.js';
import { UsageError } from './errors.js';
import { createOptionsFrom, parseOptionList } from './options.js';
import { cvtstr, parseSize, parseSizeBig, printfFixed, sizeToStr } from './sizes.js';

describe('parseSize (qemu_strtosz)', () => {
  it.each([
    ['0', 0],
    ['512', 512],
    ['1k', 1024],
    ['1K', 1024],
    ['64k', 65536],
    ['1M', 1 << 20],
    ['1.5M', 1.5 * (1 << 20)],
    ['2G', 2 * 2 ** 30],
    ['1T', 2 ** 40],
    ['2P', 2 * 2 ** 50],
    ['2E', 2 * 2 ** 60],
    ['0x1000', 4096],
    ['10b', 10],
  ])('%s → %d', (text, v) => expect(parseSize(text)).toBe(v));
  it.each(['', 'x', '1Q', '-1', '1.5', '1kk', '8E'])('%s is refused', (text) => expect(parseSize(text)).toBeNull());
  it('the double fast path agrees with the exact BigInt parse', () => {
    const texts = ['007', '0k', '15b', '2m', '7E', '8E', '9E', '123456789012345', '1234567890123456', '999999999999999E', '8191P', '8192P', '4503599627370497'];
    for (const t of texts) {
      const big = parseSizeBig(t);
      const exact = big === null || BigInt(Number(big)) !== big ? null : Number(big);
      expect([t, parseSize(t)]).toEqual([t, exact]);
    }
  });
});

describe('printfFixed (glibc %.Nf)', () => {
  it('rounds exact ties to even, and everything else as toFixed', () => {
    expect(printfFixed(1.0625, 3)).toBe('1.062');
    expect(printfFixed(1.0635, 3)).toBe((1.0635).toFixed(3));
    expect(printfFixed(0.5, 0)).toBe('0');
    expect(printfFixed(2.5, 0)).toBe('2');
    expect(printfFixed(3.5, 0)).toBe('4');
    expect(printfFixed(2 ** 52 + 0.0, 1)).toBe('4503599627370496.0');
    expect(printfFixed(1.00048828125, 3)).toBe('1.000');
  });
});

describe('size printing', () => {
  it('size_to_str', () => {
    expect(sizeToStr(0)).toBe('0 B');
    expect(sizeToStr(1 << 20)).toBe('1 MiB');
    expect(sizeToStr(266240)).toBe('260 KiB');
    expect(sizeToStr(1000 * 1024)).toBe('0.977 MiB');
    expect(sizeToStr(1.5 * 2 ** 30)).toBe('1.5 GiB');
  });
  it("qemu-io's cvtstr", () => {
    expect(cvtstr(65536)).toBe('64 KiB');
    expect(cvtstr(512)).toBe('512 bytes');
    expect(cvtstr(1.5 * 2 ** 20)).toBe('1.500 MiB');
  });
});

describe('parseArgs', () => {
  const spec = { short: { f: true, q: false, u: false, c: true }, long: { output: true, shrink: false } };
  it('mixes options and operands, combines flags, attaches values', () => {
    const p = parseArgs(['-fqcow2', 'a', '-qu', '--output=json', 'b', '-c', 'x', '-c', 'y', '--', '-z'], spec, 't');
    expect(p.operands).toEqual(['a', 'b', '-z']);
    expect(p.values.get('f')).toEqual(['qcow2']);
    expect(p.values.get('c')).toEqual(['x', 'y']);
    expect(p.values.has('q') && p.values.has('u')).toBe(true);
    expect(p.values.get('output')).toEqual(['json']);
  });
  it('refuses unknown options and missing values', () => {
    expect(() => parseArgs(['-z'], spec, 't')).toThrow(UsageError);
    expect(() => parseArgs(['--nope'], spec, 't')).toThrow(UsageError);
    expect(() => parseArgs(['-f'], spec, 't')).toThrow(/requires an argument/);
    expect(() => parseArgs(['--shrink=1'], spec, 't')).toThrow(/doesn't allow/);
  });
});

describe('-o option lists', () => {
  it('splits on commas, ",," is a literal comma, later keys win', () => {
    const m = parseOptionList(['cluster_size=4k,backing_file=a,,b.qcow2', 'cluster_size=8k,lazy_refcounts']);
    expect([...m]).toEqual([
      ['cluster_size', '8k'],
      ['backing_file', 'a,b.qcow2'],
      ['lazy_refcounts', 'on'],
    ]);
  });
  it('builds CreateOptions with qemu-img spellings', () => {
    const o = createOptionsFrom(parseOptionList(['cluster_size=2M,refcount_bits=64,compat=v3,extended_l2=on,compression_type=zstd,lazy_refcounts=yes']), 'f');
    expect(o).toEqual({ clusterSize: 2 << 20, refcountBits: 64, compat: '1.1', extendedL2: true, compressionType: 'zstd', lazyRefcounts: true });
  });
});
