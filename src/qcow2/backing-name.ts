/**
 * What a backing file name in a qcow2 header names, as QEMU reads it
 * (block.c: bdrv_get_full_backing_filename_from_filename, path_has_protocol,
 * bdrv_fill_options, parse_json_filename).
 *
 * - A plain name ("base.qcow2", "../b/base.raw") is a file; a relative one is
 *   relative to the directory of the image that names it (path_combine).
 * - A name with a protocol (letters up to a ':' before any '/') is taken as
 *   it is, never combined with the image's directory: "file:NAME" is the file
 *   NAME, relative to the current directory; "json:{...}" is a set of block
 *   options (QEMU writes such names when the backing node had options a plain
 *   name cannot say); any other protocol is a network or special driver.
 *
 * Of json: options we honour the ones that say which file and which format,
 * and ignore those that only tune how QEMU does I/O (cache, aio, locking,
 * node names). Any other option could change what the guest reads (raw's
 * offset and size, a nested backing, a protocol driver), so the name is
 * refused with the option in the message rather than read wrongly.
 */
import path from 'node:path';
import { BackingFileError } from './errors.js';
import type { BackingFormat } from './types.js';

export interface BackingTarget {
  /** The file to open. */
  file: string;
  /** The name messages give it (QEMU's: the file name as the options gave it). */
  shownAs: string;
  /** The format to open it as: the header's, else the json: driver's; undefined means probe. */
  format?: BackingFormat;
}

/** path_has_protocol: a ':' before any '/'. */
export function hasProtocol(name: string): boolean {
  const m = /[:/]/.exec(name);
  return m !== null && m[0] === ':';
}

/** QEMU's full backing file name (qemu-img info's full-backing-filename): combined with the image's directory unless absolute or a protocol. */
export function fullBackingName(imageName: string, backing: string): string {
  if (backing === '' || backing.startsWith('/') || hasProtocol(backing)) return backing;
  const slash = imageName.lastIndexOf('/');
  return slash < 0 ? backing : imageName.slice(0, slash + 1) + backing;
}

/** Drivers a Debian QEMU knows but this engine does not open (network, devices, filters). */
const OTHER_QEMU_PROTOCOLS = new Set([
  'host_device', 'host_cdrom', 'nbd', 'nbd+tcp', 'nbd+unix', 'http', 'https', 'ftp', 'ftps', 'ssh', 'iscsi', 'iser',
  'gluster', 'gluster+tcp', 'gluster+unix', 'gluster+rdma', 'rbd', 'nfs', 'null-co', 'null-aio', 'blkdebug',
  'blkverify', 'vvfat', 'fat', 'throttle', 'copy-on-read', 'compress', 'quorum', 'io_uring', 'nvme', 'vxhs',
]);

/** json: options that only tune how QEMU does I/O; at the top level or under file. */
const HARMLESS = new Set([
  'node-name', 'read-only', 'auto-read-only', 'force-share', 'discard', 'detect-zeroes', 'cache.direct', 'cache.no-flush',
  'aio', 'aio-max-batch', 'locking', 'drop-cache', 'x-check-cache-dropped', 'pr-manager',
  // qcow2 run-time options: caches and overlap checks, never what is read.
  'cache-size', 'l2-cache-size', 'l2-cache-entry-size', 'refcount-cache-size', 'cache-clean-interval', 'pass-discard-request',
  'pass-discard-snapshot', 'pass-discard-other', 'discard-no-unref', 'lazy-refcounts', 'overlap-check',
]);

const FORMATS = new Set<string>(['qcow2', 'raw']);

/**
 * Resolves `name` (a header's backing file name) of the image at `imagePath`
 * (shown to the user as `imageShownAs`), whose header gives `headerFormat`;
 * names with a protocol are relative to `cwd` (default: the process's).
 */
export function resolveBackingName(
  imagePath: string,
  name: string,
  headerFormat: BackingFormat | undefined,
  o: { imageShownAs?: string; cwd?: string } = {},
): BackingTarget {
  const imageShownAs = o.imageShownAs;
  const cwd = o.cwd ?? process.cwd();
  if (!hasProtocol(name)) {
    const combine = (base: string): string => (path.isAbsolute(name) ? name : path.join(path.dirname(base), name));
    return { file: combine(imagePath), shownAs: imageShownAs === undefined ? combine(imagePath) : combine(imageShownAs), format: headerFormat };
  }
  const protocol = name.slice(0, name.indexOf(':'));
  if (protocol === 'file') {
    const file = name.slice('file:'.length);
    return { file: path.resolve(cwd, file), shownAs: file, format: headerFormat };
  }
  if (protocol === 'json') return fromJson(name.slice('json:'.length), headerFormat, cwd);
  if (OTHER_QEMU_PROTOCOLS.has(protocol)) throw new BackingFileError(`the '${protocol}' protocol is not supported by this engine (only files): '${name}'`);
  throw new BackingFileError(`Unknown protocol '${protocol}'`);
}

/** qdict_flatten: nested objects become dotted keys ("file": {"filename": x} is "file.filename": x). */
function flatten(o: Record<string, unknown>, prefix: string, out: Map<string, unknown>): void {
  for (const [k, v] of Object.entries(o)) {
    const key = prefix + k;
    if (v !== null && typeof v === 'object' && !Array.isArray(v)) flatten(v as Record<string, unknown>, `${key}.`, out);
    else out.set(key, v);
  }
}

function fromJson(text: string, headerFormat: BackingFormat | undefined, cwd: string): BackingTarget {
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (e) {
    // QEMU's words where its parser's reason is the same one (a text cut short), JSON.parse's otherwise.
    const why = /end of JSON input/.test((e as Error).message) ? 'premature EOI' : (e as Error).message;
    throw new BackingFileError(`Could not parse the JSON options: JSON parse error, ${why}`);
  }
  // QEMU's words for anything but a JSON object (parse_json_filename).
  if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) throw new BackingFileError('Invalid JSON object given');
  const opts = new Map<string, unknown>();
  flatten(parsed as Record<string, unknown>, '', opts);
  const str = (k: string): string | undefined => {
    const v = opts.get(k);
    if (v === undefined) return undefined;
    if (typeof v !== 'string') throw new BackingFileError(`Invalid parameter type for '${k}', expected: string`);
    return v;
  };
  // The header's backing format goes into the options before the JSON is
  // merged in, and a merge never overwrites (bdrv_open_backing_file, then
  // qdict_join(..., false)): the header's format wins over the JSON's driver.
  const driver = headerFormat ?? str('driver');
  const topFilename = str('filename');
  // No format from the header and a bare protocol node: the file itself is the backing device.
  if (driver === 'file' && topFilename !== undefined && opts.get('file.filename') === undefined) {
    return { file: path.resolve(cwd, topFilename), shownAs: topFilename, format: 'raw' };
  }
  const fileDriver = str('file.driver') ?? 'file';
  const filename = str('file.filename');
  for (const k of opts.keys()) {
    const own = k.startsWith('file.') ? k.slice('file.'.length) : k;
    if (k === 'driver' || k === 'file.driver' || k === 'file.filename' || k === 'filename' || HARMLESS.has(own) || own.startsWith('cache.')) continue;
    throw new BackingFileError(`json: backing option '${k}' is not supported by this engine (it could change what the guest reads)`);
  }
  if (driver !== undefined && !FORMATS.has(driver)) {
    if (driver === 'file') throw new BackingFileError('A block device must be specified for "file"');
    throw new BackingFileError(`the '${driver}' driver is not supported by this engine (qcow2 or raw)`);
  }
  if (fileDriver !== 'file') throw new BackingFileError(`the '${fileDriver}' protocol is not supported by this engine (only files)`);
  // A format driver opens its file through the "file" child: a top-level
  // filename alone does not name one (QEMU: "A block device must be specified").
  if (filename === undefined) throw new BackingFileError('A block device must be specified for "file"');
  return { file: path.resolve(cwd, filename), shownAs: filename, format: driver as BackingFormat | undefined };
}
