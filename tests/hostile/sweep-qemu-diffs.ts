/**
 * Cases of the robustness sweep where qemu-img 7.2 info and ours disagree on
 * whether the corrupted image opens, each with what QEMU does, what we do
 * and why ours is kept. The sweep fails on a disagreement missing here and
 * on an entry that no longer disagrees, so this list stays exact.
 */
export const SWEEP_QEMU_DIFFS: ReadonlyMap<string, string> = new Map([]);
