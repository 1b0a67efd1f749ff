import { describe, expect, it } from 'vitest';
import type { TraceConfig } from './config.js';
import { parseExclusions, withoutKinds } from './exclude.js';
import { runCampaign } from './runner.js';
import { makeTarget } from './targets/index.js';
import type { Target } from './targets/types.js';

describe('fuzz --exclude', () => {
  it('parses op kinds and features, and refuses an unknown name with the accepted ones', () => {
    const x = parseExclusions(['write-compressed,compression_type=zstd', 'refcount_bits=1']);
    expect([...x.kinds]).toEqual(['write-compressed']);
    expect([...x.features].sort()).toEqual(['compression_type=zstd', 'refcount_bits=1']);
    expect(() => parseExclusions(['zstd'])).toThrow(/unknown op kind or feature 'zstd'.*compression_type=zstd/);
  });

  it('a campaign without write-compressed and zstd generates neither, and still runs the rest', async () => {
    const configs: TraceConfig[] = [];
    const recording = (): Target => {
      const t = makeTarget('ts');
      const setup = t.setup.bind(t);
      t.setup = (config, dir) => {
        configs.push(config);
        return setup(config, dir);
      };
      return t;
    };
    const base = { target: 'ts', seed: 11, runs: 30, maxOps: 8, targetFactory: recording };
    const all = await runCampaign(base);
    // The same seed without exclusions does generate both, so the verdict below is not vacuous.
    expect(all.opCounts['write-compressed'] ?? 0).toBeGreaterThan(0);
    expect(configs.some((c) => c.compressionType === 'zstd')).toBe(true);
    configs.length = 0;
    const some = await runCampaign({ ...base, exclude: parseExclusions(['write-compressed,compression_type=zstd']) });
    expect(some.failures).toEqual([]);
    expect(some.opCounts['write-compressed']).toBeUndefined();
    expect(configs.length).toBeGreaterThan(0);
    expect(configs.every((c) => c.compressionType === 'zlib')).toBe(true);
    expect(some.opCounts['write'] ?? 0).toBeGreaterThan(0);
  });

  it('the proxy hides only the excluded kinds and acts on the target itself', () => {
    const t = makeTarget('ts');
    const w = withoutKinds(t, new Set(['aio', 'fault']));
    expect(w.capabilities.has('aio')).toBe(false);
    expect(w.capabilities.has('write')).toBe(true);
    expect(t.capabilities.has('aio')).toBe(true);
    expect(w.imagePath).toBeTypeOf('function');
  });
});
