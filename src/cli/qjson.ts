/**
 * JSON as qemu-img 7.2 prints it (--output json). QEMU builds a QDict and
 * writes it with its JSONWriter, so the text differs from JSON.stringify in
 * three ways a byte-for-byte comparison sees:
 *  - a dict's members come in hash-bucket order (qobject/qdict.c: tdb_hash of
 *    the key modulo QDICT_BUCKET_MAX, buckets walked upwards, and within one
 *    bucket the member inserted last first, as QLIST_INSERT_HEAD puts it);
 *  - an empty list or dict is opened and closed on separate lines
 *    (json-writer.c: the closing bracket always follows pretty_newline);
 *  - strings escape every code point below 0x20 or from 0x7f as \uXXXX with
 *    upper-case hex, and beyond the BMP as a surrogate pair (quoted_str).
 * Callers insert members in the QAPI schema's order; only a bucket collision
 * makes that order visible.
 */

const QDICT_BUCKET_MAX = 512;

/** qdict.c's tdb_hash (the TDB string hash), on the key's UTF-8 bytes. */
function tdbHash(key: string): number {
  const bytes = Buffer.from(key, 'utf8');
  let value = Math.imul(0x238f13af, bytes.length) >>> 0;
  for (let i = 0; i < bytes.length; i++) value = (value + ((bytes[i]! << ((i * 5) % 24)) >>> 0)) >>> 0;
  return (Math.imul(1103515243, value) + 12345) >>> 0;
}

/** A dict's members in the order QEMU's qdict_first/qdict_next visit them. */
export function qdictEntries(obj: Record<string, unknown>): [string, unknown][] {
  return Object.entries(obj)
    .filter(([, v]) => v !== undefined)
    .map(([k, v], i) => ({ k, v, i, b: tdbHash(k) % QDICT_BUCKET_MAX }))
    .sort((x, y) => x.b - y.b || y.i - x.i)
    .map(({ k, v }) => [k, v]);
}

function quoted(s: string): string {
  let out = '"';
  for (const ch of s) {
    const cp = ch.codePointAt(0)!;
    if (ch === '"') out += '\\"';
    else if (ch === '\\') out += '\\\\';
    else if (ch === '\b') out += '\\b';
    else if (ch === '\f') out += '\\f';
    else if (ch === '\n') out += '\\n';
    else if (ch === '\r') out += '\\r';
    else if (ch === '\t') out += '\\t';
    else if (cp >= 0xd800 && cp <= 0xdfff) out += '\\uFFFD'; // a lone surrogate: QEMU's replacement for invalid UTF-8
    else if (cp > 0xffff) out += hex4(0xd800 + ((cp - 0x10000) >> 10)) + hex4(0xdc00 + ((cp - 0x10000) & 0x3ff));
    else if (cp < 0x20 || cp >= 0x7f) out += hex4(cp);
    else out += ch;
  }
  return out + '"';
}

function hex4(n: number): string {
  return '\\u' + n.toString(16).toUpperCase().padStart(4, '0');
}

function write(v: unknown, depth: number): string {
  const nl = (d: number) => '\n' + '    '.repeat(d);
  if (v === null) return 'null';
  if (typeof v === 'string') return quoted(v);
  if (typeof v === 'number' || typeof v === 'bigint') return String(v);
  if (typeof v === 'boolean') return v ? 'true' : 'false';
  if (Array.isArray(v)) {
    return '[' + v.map((x) => nl(depth + 1) + write(x, depth + 1)).join(',') + nl(depth) + ']';
  }
  if (typeof v === 'object') {
    const members = qdictEntries(v as Record<string, unknown>);
    return '{' + members.map(([k, x]) => `${nl(depth + 1)}${quoted(k)}: ${write(x, depth + 1)}`).join(',') + nl(depth) + '}';
  }
  throw new TypeError(`qemuJson: no JSON form for a ${typeof v}`);
}

/** qobject_to_json_pretty of the value, as qemu-img prints it (without the trailing newline). */
export function qemuJson(v: unknown): string {
  return write(v, 0);
}
