import type { SnapshotInfo } from '../qcow2/types.js';
import { sizeToStr } from './sizes.js';

/** The snapshot table qemu-img prints (info and snapshot -l), column for column. */
export function snapshotTable(snapshots: readonly SnapshotInfo[]): string {
  const lines = [
    `${'ID'.padEnd(10)}${'TAG'.padEnd(17)}${'VM SIZE'.padStart(8)}${'DATE'.padStart(20)}${'VM CLOCK'.padStart(13)}${'ICOUNT'.padStart(11)}`,
  ];
  for (const s of snapshots) {
    lines.push(
      `${s.id.padEnd(9)} ${s.name.padEnd(16)} ${sizeToStr(s.vmStateSize).padStart(8)}${formatDate(s.dateSec).padStart(20)}` +
        `${formatClock(s.vmClockNsec).padStart(13)}${(s.icount === null ? '' : String(s.icount)).padStart(11)}`,
    );
  }
  return lines.join('\n') + '\n';
}

function pad2(n: number): string {
  return String(n).padStart(2, '0');
}

/** Local time, as qemu prints it (strftime "%Y-%m-%d %H:%M:%S"). */
function formatDate(sec: number): string {
  const d = new Date(sec * 1000);
  return `${d.getFullYear()}-${pad2(d.getMonth() + 1)}-${pad2(d.getDate())} ${pad2(d.getHours())}:${pad2(d.getMinutes())}:${pad2(d.getSeconds())}`;
}

function formatClock(nsec: number): string {
  const ms = Math.floor(nsec / 1e6);
  const h = Math.floor(ms / 3_600_000);
  const m = Math.floor(ms / 60_000) % 60;
  const s = Math.floor(ms / 1000) % 60;
  return `${pad2(h)}:${pad2(m)}:${pad2(s)}.${String(ms % 1000).padStart(3, '0')}`;
}

/** qemu-img's JSON form of a snapshot. */
export function snapshotJson(s: SnapshotInfo): Record<string, unknown> {
  const j: Record<string, unknown> = {};
  if (s.icount !== null) j['icount'] = s.icount;
  j['vm-clock-nsec'] = s.vmClockNsec % 1e9;
  j['name'] = s.name;
  j['date-sec'] = s.dateSec;
  j['date-nsec'] = s.dateNsec;
  j['vm-clock-sec'] = Math.floor(s.vmClockNsec / 1e9);
  j['id'] = s.id;
  j['vm-state-size'] = s.vmStateSize;
  return j;
}
