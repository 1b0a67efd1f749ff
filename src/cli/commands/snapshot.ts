import { has, last, parseArgs } from '../args.js';
import type { CliContext } from '../context.js';
import { CommandFailed, EXIT_OK, UsageError } from '../errors.js';
import { checkOpened, IMAGE_OPTS_LONG, imageSpec, IMAGE_OPTS_HELP } from '../image-opts.js';
import { FORCE_SHARE_HELP, forceShare, openQcow2, reason } from '../open.js';
import { snapshotTable } from '../snapshot-table.js';
import { LimitError, RefcountTableLimitError, SnapshotError } from '../../qcow2/errors.js';
import { MAX_SNAPSHOTS } from '../../qcow2/format/constants.js';
import type { Qcow2Image } from '../../qcow2/image.js';

export const SNAPSHOT_HELP = `Usage: qcow2-harness snapshot [-q] [-f fmt] [--object OBJ] [--image-opts] -c|-a|-d NAME FILE
       qcow2-harness snapshot [-f fmt] [-U] -l FILE

Internal snapshots, as 'qemu-img snapshot'.
  -c NAME   create a snapshot of the active layer
  -a NAME   apply (revert to) a snapshot, by name or id
  -d NAME   delete a snapshot, by name or id
  -l        list the snapshots
${FORCE_SHARE_HELP} (with -l)
${IMAGE_OPTS_HELP}
Exit codes: 0 success, 1 failure (a bad command line, an image that cannot be
opened, is invalid, corrupt or unsupported, an I/O error), 70 an internal error.
`;

export async function snapshotCommand(argv: string[], ctx: CliContext): Promise<number> {
  const p = parseArgs(argv, { short: { f: true, c: true, a: true, d: true, l: false, q: false, U: false }, long: { 'force-share': false, ...IMAGE_OPTS_LONG } }, 'snapshot');
  if (has(p, 'help')) {
    ctx.stdout(SNAPSHOT_HELP);
    return EXIT_OK;
  }
  const actions = ['c', 'a', 'd', 'l'].filter((k) => has(p, k));
  if (actions.length > 1 || (p.values.get(actions[0] ?? '')?.length ?? 0) > 1) throw new UsageError("Cannot mix '-l', '-a', '-c', '-d'", 'snapshot');
  if (actions.length === 0) throw new UsageError('Expecting one of -c, -a, -d or -l', 'snapshot');
  if (p.operands.length !== 1) throw new UsageError(p.operands.length ? `Unexpected argument: ${p.operands[1]}` : 'Expecting one image file name', 'snapshot');
  const spec = imageSpec(p, p.operands[0]!, 'snapshot');
  const file = spec.file;
  const action = actions[0]!;
  const img = openQcow2(ctx, file, { format: spec.format, readOnly: action === 'l', forceShare: forceShare(p), passphrase: spec.passphrase(), name: spec.shownAs, dataFile: spec.dataFile });
  checkOpened(img, spec, action !== 'l');
  try {
    const name = last(p, action)!;
    try {
      if (action === 'l') {
        const list = img.listSnapshots();
        if (list.length) ctx.stdout('Snapshot list:\n' + snapshotTable(list));
      } else if (action === 'c') createAsQemu(img, name);
      else if (action === 'a') applyAsQemu(img, name);
      else {
        // qemu-img snapshot -d looks a snapshot up by name only (-a takes an id too).
        const target = img.listSnapshots().find((x) => x.name === name);
        if (!target) throw new CommandFailed(`Could not delete snapshot '${name}': snapshot not found`);
        img.deleteSnapshot(target.id);
      }
    } catch (e) {
      if (e instanceof CommandFailed) throw e;
      const verb = { c: 'create', a: 'apply', d: 'delete', l: 'list' }[action];
      throw new CommandFailed(`Could not ${verb} snapshot '${name}': ${reason(e)}`);
    }
  } finally {
    img.close();
  }
  return EXIT_OK;
}

/** qemu-img words a failed bdrv_snapshot_create as "errno (strerror)": a refcount that overflows is EINVAL, a full table EFBIG. */
function createAsQemu(img: Qcow2Image, name: string): void {
  try {
    img.createSnapshot(name);
  } catch (e) {
    if (e instanceof RefcountTableLimitError) throw new CommandFailed(`Could not create snapshot '${name}': -27 (File too large)`);
    if (e instanceof LimitError) throw new CommandFailed(`Could not create snapshot '${name}': -22 (Invalid argument)`);
    if (e instanceof SnapshotError && img.listSnapshots().length >= MAX_SNAPSHOTS) throw new CommandFailed(`Could not create snapshot '${name}': -27 (File too large)`);
    throw e;
  }
}

/** bdrv_snapshot_goto's "Failed to load snapshot" and errno: ENOTSUP with an external data file, ENOENT for an unknown one. */
function applyAsQemu(img: Qcow2Image, name: string): void {
  // bdrv_snapshot_goto refuses any image with dirty bitmaps (persistent ones are loaded, enabled or not) before the driver looks.
  if (img.bitmaps().length) throw new CommandFailed(`Could not apply snapshot '${name}': Device has active dirty bitmaps`);
  const fail = (why: string) => new CommandFailed(`Could not apply snapshot '${name}': Failed to load snapshot: ${why}`);
  if (img.info().dataFile !== undefined) throw fail('Operation not supported');
  if (!img.listSnapshots().some((x) => x.id === name || x.name === name)) throw fail('No such file or directory');
  img.applySnapshot(name);
}
