/**
 * What a property suite over traces needs besides fast-check: the text of a
 * failing run (what a CI log must show to reproduce it), and counts of what
 * the runs actually did, so a suite can fail when its generator stops
 * reaching an op kind, a refusal or the end-of-run oracles.
 */
import type { TraceConfig } from '../../src/harness/config.js';
import type { RunOutcome } from '../../src/harness/execute.js';
import { formatOp, specOfKind, type Op, type OpKind } from '../../src/harness/ops.js';

/**
 * The plain configuration tests start from: a 1 MiB v3 image of 64 KiB
 * clusters, 16-bit refcounts, no optional feature; `o` changes what a test
 * is about.
 */
export function plainConfig(o: Partial<TraceConfig> = {}): TraceConfig {
  return { size: 1 << 20, clusterSize: 65536, refcountBits: 16, compat: '1.1', lazyRefcounts: false, extendedL2: false, compressionType: 'zlib', ...o };
}

/** An op's kind, split where one kind has distinct sub-operations (snapshot actions, amend keys). */
export function opLabel(op: Op): string {
  if (op.kind === 'snapshot') return `snapshot ${op.action}`;
  if (op.kind === 'amend') return `amend ${op.key}`;
  return op.kind;
}

/** Every label the kinds of a target's capabilities can produce. */
export function labelsOf(kinds: ReadonlySet<OpKind>): string[] {
  return [...kinds].flatMap((k) => {
    if (k === 'snapshot') return ['snapshot create', 'snapshot apply', 'snapshot delete'];
    if (k === 'amend') return ['amend refcount_bits', 'amend compat', 'amend lazy_refcounts'];
    return [k];
  });
}

/** The run as a failing property prints it: the failure, the config and the numbered ops. */
export function describeRun(r: RunOutcome): string {
  const f = r.failure;
  return [
    f ? `${f.oracle}${f.opIndex !== undefined ? ` after op ${f.opIndex}` : ''}: ${f.message}` : 'no failure',
    `config ${JSON.stringify(r.config)}`,
    ...r.ops.map((x, i) => `  ${String(i + 1).padStart(3)}: ${formatOp(x)}${r.refused.has(i + 1) ? '   (refused)' : ''}`),
  ].join('\n');
}

export class TraceStats {
  runs = 0;
  ops = 0;
  qemuImgChecks = 0;
  /** Ops the target refused, as the model allowed. */
  refused = 0;
  /** Range ops covering the whole disk, from offset 0 to the end. */
  wholeDisk = 0;
  private readonly done = new Map<string, number>();
  private readonly drawn = new Map<string, number>();

  add(r: RunOutcome): void {
    this.runs++;
    this.ops += r.ops.length;
    this.qemuImgChecks += r.qemuImgChecks;
    this.refused += r.refused.size;
    // A model-level size is not in the outcome; a whole-disk op is one whose range is the config's size
    // only when no resize ran before it, so count those conservatively.
    let size: number | undefined = r.config.size;
    r.ops.forEach((op, i) => {
      if (op.kind === 'resize') size = undefined;
      // An aio group covers the whole disk when one of its requests does.
      const ranges: { off: number; len: number }[] = op.kind === 'aio' ? op.reqs : 'off' in op ? [op] : [];
      if (ranges.some((x) => x.off === 0 && x.len === size)) this.wholeDisk++;
      const l = opLabel(op);
      this.drawn.set(l, (this.drawn.get(l) ?? 0) + 1);
      if (!r.refused.has(i + 1)) this.done.set(l, (this.done.get(l) ?? 0) + 1);
    });
  }

  /** How many ops with this label ran and were accepted. */
  executed(label: string): number {
    return this.done.get(label) ?? 0;
  }

  /** How many ops with this label the runs generated (accepted or refused). */
  generated(label: string): number {
    return this.drawn.get(label) ?? 0;
  }

  /**
   * Labels of `kinds` executed (accepted) fewer than `min` times, or with
   * `generated` generated fewer than `min` times, with their counts; empty when none.
   */
  under(kinds: ReadonlySet<OpKind>, min: number, o: { generated?: boolean; except?: string[] } = {}): Record<string, number> {
    const out: Record<string, number> = {};
    // Kinds no seed resolves to (bitmap: its own suite generates it) cannot be asked of a seeded campaign.
    const seeded = new Set([...kinds].filter((k) => specOfKind(k).variants || specOfKind(k).wrap));
    for (const l of labelsOf(seeded)) {
      if (o.except?.includes(l)) continue;
      const n = o.generated ? this.generated(l) : this.executed(l);
      if (n < min) out[l] = n;
    }
    return out;
  }

  summary(): string {
    const kinds = [...this.drawn].map(([k, n]) => `${k}=${this.executed(k)}/${n}`).join(' ');
    return `runs=${this.runs} ops=${this.ops} refused=${this.refused} wholeDisk=${this.wholeDisk} checks=${this.qemuImgChecks} accepted/generated: ${kinds}`;
  }
}
