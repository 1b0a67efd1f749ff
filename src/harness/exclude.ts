/**
 * `fuzz --exclude`: leave op kinds and configuration features out of a
 * campaign, the way a fuzzer user suppresses a known crash so that it does not
 * drown new findings. Op kinds are taken out of the target's capabilities (so
 * their seeds are skipped, as for any kind a target lacks); features are
 * steered away from exactly as a writer's declined features are
 * (reader/features.ts), so generation keeps its shape and shrinking works.
 */
import { ALL_OP_KINDS, type OpKind } from './ops.js';
import { STEERABLE } from './reader/features.js';
import type { Target } from './targets/types.js';

export interface Exclusions {
  kinds: ReadonlySet<OpKind>;
  features: ReadonlySet<string>;
}

/** Feature names `--exclude` takes: the steerable ones plus any refcount width or cluster size. */
function isFeature(name: string): boolean {
  return (
    (STEERABLE as readonly string[]).includes(name) ||
    /^refcount_bits=(1|2|4|8|16|32|64)$/.test(name) ||
    /^cluster_size=(512|1024|2048|4096|8192|16384|32768|65536|131072|262144|524288|1048576|2097152)$/.test(name)
  );
}

/** Parses a comma-separated list; an unknown name is an Error whose message lists what is accepted. */
export function parseExclusions(list: readonly string[]): Exclusions {
  const kinds = new Set<OpKind>();
  const features = new Set<string>();
  for (const name of list.flatMap((l) => l.split(',')).map((s) => s.trim()).filter(Boolean)) {
    if ((ALL_OP_KINDS as readonly string[]).includes(name)) kinds.add(name as OpKind);
    else if (isFeature(name)) features.add(name);
    else {
      throw new Error(
        `--exclude: unknown op kind or feature '${name}' (op kinds: ${ALL_OP_KINDS.join(', ')}; features: ${STEERABLE.join(', ')}, refcount_bits=N, cluster_size=N)`,
      );
    }
  }
  return { kinds, features };
}

/** What `fuzz --include` takes: today only `bitmap` (./bitmap-trace.ts). */
export const INCLUDABLE = ['bitmap'] as const;

/**
 * Parses `--include` (comma-separated, repeatable): true when bitmap ops are to
 * be mixed in. Anything else is an Error naming what is accepted.
 */
export function parseInclusions(list: readonly string[]): { bitmaps: boolean } {
  let bitmaps = false;
  for (const name of list.flatMap((l) => l.split(',')).map((s) => s.trim()).filter(Boolean)) {
    if (name !== 'bitmap') throw new Error(`--include: unknown op kind '${name}' (accepted: ${INCLUDABLE.join(', ')})`);
    bitmaps = true;
  }
  return { bitmaps };
}

/**
 * The target without the excluded op kinds. A proxy, not a copy: capabilities
 * may change while a run goes on (a cmd program names its own at create), and
 * every other member must act on the target itself.
 */
export function withoutKinds(target: Target, kinds: ReadonlySet<OpKind>): Target {
  if (kinds.size === 0) return target;
  return new Proxy(target, {
    get(t, prop) {
      if (prop === 'capabilities') return new Set([...t.capabilities].filter((k) => !kinds.has(k)));
      const v = Reflect.get(t, prop, t) as unknown;
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(t) : v;
    },
  });
}
