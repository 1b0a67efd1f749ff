/**
 * The `external` block of a reader finding saved by fuzz (corpus.ts
 * ExternalExpectation): a misread by an outside implementation is that
 * project's bug, so `npm test`'s corpus replay must keep seeing it while it is
 * present and say so once it is gone, exactly as for the hand-judged entries.
 * Only built-in targets over outside projects get one (libqcow): our own
 * engines' findings, and those of a cmd: program (an adopter's own
 * implementation, whose CI should stay red until the bug is fixed), stay
 * ordinary regression entries.
 */
import type { ExternalExpectation } from '../corpus.js';
import type { OracleName } from '../oracles.js';

/** Built-in reader targets that wrap another project's implementation. */
const OUTSIDE_TARGETS = new Set(['libqcow']);

/** The message a replay must still contain: counts that shrinking or a fix may change are cut. */
export function stableMessagePart(message: string): string {
  return message
    .replace(/ \(\d+ sectors? differ\)$/, '')
    .replace(/ within \d+ ms$/, '')
    .split(': its stderr:')[0]!;
}

export function readerExternal(
  target: string,
  implementation: string | undefined,
  oracle: OracleName,
  message: string,
  found: string,
): ExternalExpectation | undefined {
  if (!OUTSIDE_TARGETS.has(target)) return undefined;
  return {
    project: implementation ?? target,
    description:
      `Found by ${found}: ${message}. Not yet judged: confirm it outside the harness with repro.sh ` +
      '(a real misread), or fix the adapter, or document the difference; then describe the bug here.',
    oracle,
    messageIncludes: stableMessagePart(message),
  };
}
