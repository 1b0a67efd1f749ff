/**
 * qemu-io command scripts shared by the CLI tests. They are built from the
 * cluster size so that every case hits the same kinds of places: whole
 * clusters, ranges straddling clusters, unaligned bytes, zero writes with and
 * without unmap over allocated and unallocated clusters, whole and partial
 * discards, several L2 tables, and the last bytes of the disk.
 */
export interface ScriptShape {
  clusterSize: number;
  size: number;
  extendedL2?: boolean;
  /** Add a compressed write (qemu-io write -c) on a fresh cluster. */
  compressed?: boolean;
  /** A v2 image over a backing file: a discard there leaves the data (DESIGN.md). */
  discardKeepsData?: boolean;
}

/** Room for every place the script touches; at least 1 MiB so small clusters span many L2 tables. */
export function minSize(cs: number): number {
  return Math.max(32 * cs, 1 << 20);
}

export function standardScript(s: ScriptShape): string[] {
  const cs = s.clusterSize;
  const size = s.size;
  if (size < minSize(cs)) throw new Error(`size ${size} too small for cluster size ${cs}`);
  const c = (n: number) => n * cs;
  const cmds = [
    `write -P 0x11 0 ${cs}`,
    `write -P 0x22 ${cs / 2} ${cs}`,
    `write -P 0x33 ${c(3) + 3} 1000`,
    `write -z ${c(5)} ${c(2)}`,
    `write -P 0x44 ${c(8)} ${c(2)}`,
    `write -z -u ${c(8)} ${cs}`,
    `write -z ${c(9) + 512} 512`,
    `discard ${c(10)} ${cs}`,
    `write -P 0x55 ${c(11)} ${cs}`,
    `discard ${c(11)} ${cs}`,
    `write -P 0x66 ${c(12)} ${cs}`,
    `discard ${c(12) + 512} 512`,
    `write -P 0x67 ${c(13)} ${c(2)}`,
    `write -z -u ${c(13) + 512} ${cs}`,
    `write -P 0x77 ${Math.floor((size * 3) / 4) - 333} 5000`,
    `write -P 0x78 ${size - cs - 77} ${cs + 77}`,
    `flush`,
    `write -P 0x79 ${c(1)} 7`,
  ];
  if (s.extendedL2) {
    const sc = cs / 32;
    cmds.push(
      `write -P 0x81 ${c(15) + sc} ${sc}`,
      `write -z ${c(15) + 3 * sc} ${2 * sc}`,
      `write -P 0x82 ${c(16)} ${cs}`,
      `discard ${c(16) + 4 * sc} ${4 * sc}`,
      `write -z -u ${c(16) + 10 * sc} ${sc}`,
      `write -P 0x83 ${c(16) + 20 * sc + 5} 10`,
    );
  }
  if (s.compressed) cmds.push(`write -c -P 0x91 ${c(18)} ${cs}`, `write -P 0x92 ${c(18) + 100} 100`);
  cmds.push(`write -P 0x99 ${c(20)} ${c(3)}`, `write -z ${c(20) + 100} ${c(2)}`);
  return cmds;
}

/** Reads that verify what standardScript left, with qemu-io's -P checks (all of them pass on a correct image). */
export function verifyingReads(s: ScriptShape): string[] {
  const cs = s.clusterSize;
  const c = (n: number) => n * cs;
  return [
    `read -P 0x11 0 ${cs / 2}`,
    `read -P 0x22 ${cs / 2} ${cs / 2}`,
    `read -P 0 ${c(5)} ${c(2)}`,
    `read -P 0 ${c(8)} ${cs}`,
    s.discardKeepsData ? `read -P 0x55 ${c(11)} ${cs}` : `read -P 0 ${c(11)} ${cs}`,
    `read -P 0x66 ${c(12)} 512`,
    `read -P 0x78 ${s.size - cs} ${cs}`,
  ];
}
