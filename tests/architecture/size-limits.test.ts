/**
 * Size limits of issue 8 for every file under src/: no file over 600 lines,
 * no function (declaration, method, arrow, accessor) over 150 lines. Functions
 * are found with the TypeScript parser, so a long closure counts as much as a
 * long top-level function.
 */
import fs from 'node:fs';
import path from 'node:path';
import ts from 'typescript';
import { describe, expect, it } from 'vitest';

const MAX_FILE_LINES = 600;
const MAX_FUNCTION_LINES = 150;

function sources(dir: string): string[] {
  return fs.readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) return sources(p);
    return /\.(ts|mjs)$/.test(e.name) ? [p] : [];
  });
}

/** Functions of `text` longer than `max` lines, as "file:line (n lines)". */
export function longFunctions(file: string, text: string, max: number): string[] {
  const sf = ts.createSourceFile(file, text, ts.ScriptTarget.Latest, true);
  const out: string[] = [];
  const visit = (n: ts.Node): void => {
    if (ts.isFunctionLike(n) && 'body' in n && n.body) {
      const first = sf.getLineAndCharacterOfPosition(n.getStart()).line;
      const last = sf.getLineAndCharacterOfPosition(n.end).line;
      if (last - first + 1 > max) out.push(`${file}:${first + 1} (${last - first + 1} lines)`);
    }
    ts.forEachChild(n, visit);
  };
  visit(sf);
  return out;
}

describe('size limits under src/', () => {
  const files = sources('src');

  it('no file is longer than 600 lines', () => {
    const long = files.map((f) => [f, fs.readFileSync(f, 'utf8').split('\n').length - 1] as const).filter(([, n]) => n > MAX_FILE_LINES);
    expect(long).toEqual([]);
  });

  it('no function is longer than 150 lines', () => {
    expect(files.flatMap((f) => longFunctions(f, fs.readFileSync(f, 'utf8'), MAX_FUNCTION_LINES))).toEqual([]);
  });

  it('the function finder sees a long closure (self-test)', () => {
    const body = Array.from({ length: 160 }, (_, i) => `  x += ${i};`).join('\n');
    const text = `export function outer() {\n  const inner = () => {\n  let x = 0;\n${body}\n  return x;\n  };\n  return inner;\n}\n`;
    expect(longFunctions('t.ts', text, MAX_FUNCTION_LINES)).toHaveLength(2);
    expect(longFunctions('t.ts', 'function f() { return 1; }', MAX_FUNCTION_LINES)).toEqual([]);
  });
});
