/**
 * How QEMU's tools are told to open an image that needs more than its file
 * name: an encrypted image needs the secret its key is in (`--object
 * secret,id=ID,data=...` plus `--image-opts driver=qcow2,file.filename=F,
 * encrypt.key-secret=ID`, qemu-img.c img_open_opts); an image whose data file
 * is elsewhere than its header says names it (`data-file.filename=D`). Every
 * wrapper in this directory takes an ImageAccess and builds its arguments
 * here, so each oracle opens an image the way the image needs.
 */

/** A QEMU secret object holding a passphrase (qemu-img --object secret,...). */
export interface QemuSecret {
  id: string;
  /** The passphrase itself (the harness's secrets are plain ASCII without commas). */
  data: string;
}

export interface ImageAccess {
  /** The image is encrypted with the passphrase this secret holds. */
  secret?: QemuSecret;
  /** The external data file to use instead of the name in the header (an absolute path). */
  dataFile?: string;
}

/** In a QemuOpts string a comma is escaped by doubling it. */
const optValue = (s: string) => s.replace(/,/g, ',,');

/** True when the image must be named through --image-opts. */
export function needsImageOpts(a: ImageAccess | undefined): a is ImageAccess {
  return a !== undefined && (a.secret !== undefined || a.dataFile !== undefined);
}

/** The --object arguments that define the access's secret (none without one). */
export function secretArgs(a: ImageAccess | undefined): string[] {
  return a?.secret ? ['--object', `secret,id=${a.secret.id},data=${a.secret.data}`] : [];
}

/** The option string naming `file` as a qcow2 image with this access's key and data file. */
export function imageOptsString(file: string, a: ImageAccess | undefined, extra: string[] = []): string {
  const kv = ['driver=qcow2', `file.filename=${optValue(file)}`, ...extra];
  if (a?.secret) kv.push(`encrypt.key-secret=${a.secret.id}`);
  if (a?.dataFile) kv.push(`data-file.filename=${optValue(a.dataFile)}`);
  return kv.join(',');
}

/** A raw file as an --image-opts operand (qemu-img compare takes both operands as option strings). */
export function rawImageOpts(file: string): string {
  return `driver=raw,file.filename=${optValue(file)}`;
}

/**
 * Adds what `access` needs to the options of an image given as an option
 * string already (a blkdebug stack: driver=qcow2,file.driver=blkdebug,...).
 */
export function withAccessOpts(opts: string, a: ImageAccess | undefined): string {
  const kv = [opts];
  if (a?.secret) kv.push(`encrypt.key-secret=${a.secret.id}`);
  if (a?.dataFile) kv.push(`data-file.filename=${optValue(a.dataFile)}`);
  return kv.join(',');
}

/**
 * qemu-img (or qemu-io) arguments written for a plain qcow2 file, rewritten
 * to open `image` with `access`: the --object goes right after the
 * subcommand, `-f qcow2` goes (qemu-img refuses it beside --image-opts), and
 * the image operand becomes `--image-opts <option string>` (getopt permutes,
 * so the flag may stand just before its operand). Arguments that do not name
 * `image` are returned as they are.
 */
export function rewriteImageArgs(args: readonly string[], image: string, a: ImageAccess | undefined, tool: 'qemu-img' | 'qemu-io' = 'qemu-img'): string[] {
  if (!needsImageOpts(a) || !args.includes(image)) return [...args];
  const at = tool === 'qemu-img' ? 1 : 0;
  const out: string[] = args.slice(0, at);
  out.push(...secretArgs(a));
  for (let i = at; i < args.length; i++) {
    const x = args[i]!;
    if (x === '-f' && args[i + 1] === 'qcow2') {
      i++;
      continue;
    }
    if (x === image) out.push('--image-opts', imageOptsString(image, a));
    else out.push(x);
  }
  return out;
}

/**
 * The same rewrite for a repro.sh line (a shell command over `image.qcow2`),
 * token by token: single-quoted words stay whole; a quoted option string
 * that starts with driver=qcow2 (blkdebug) gets the key and data file added.
 */
export function rewriteShellCommand(cmd: string, image: string, a: ImageAccess | undefined): string {
  if (!needsImageOpts(a)) return cmd;
  const words = cmd.match(/'(?:[^']|'\\'')*'|\S+/g) ?? [];
  const tool = words[0] === 'qemu-io' ? 'qemu-io' : words[0] === 'qemu-img' ? 'qemu-img' : undefined;
  if (!tool) return cmd;
  const secret = secretArgs(a).map((w, i) => (i === 1 ? `'${w}'` : w));
  const at = tool === 'qemu-img' ? 2 : 1;
  const out = words.slice(0, at);
  out.push(...secret);
  for (let i = at; i < words.length; i++) {
    const w = words[i]!;
    if (w === '-f' && words[i + 1] === 'qcow2') {
      i++;
      continue;
    }
    if (w === image) out.push('--image-opts', `'${imageOptsString(image, a)}'`);
    else if (w.startsWith("'driver=qcow2,")) out.push(`'${withAccessOpts(w.slice(1, -1), a)}'`);
    else out.push(w);
  }
  return out.join(' ');
}
