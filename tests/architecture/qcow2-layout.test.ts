/**
 * The engine's layout rules (docs/DESIGN.md, issue 8), checked on the
 * source itself: no import cycle under src/qcow2 (type-only imports count:
 * they are cycles of concern even though they vanish at runtime), nothing
 * in the engine imports the public facade image.ts, the facade stays thin,
 * and no engine file grows past 600 lines.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, test } from 'vitest';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const ENGINE = join(ROOT, 'src/qcow2');
const MAX_FILE_LINES = 600;
const MAX_FACADE_LINES = 300;
/**
 * Files at the facade's level that may import image.ts: the package index,
 * and open-file.ts, which opens an image by path and hands back the facade
 * (it is an entry point beside image.ts, not something the engine uses).
 */
const FACADE_IMPORTERS = new Set(['index.ts', 'open-file.ts']);

function engineFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((d) => {
    const p = join(dir, d.name);
    if (d.isDirectory()) return engineFiles(p);
    return d.name.endsWith('.ts') && !d.name.endsWith('.test.ts') ? [p] : [];
  });
}

/** Every module specifier a file names: import and export ... from (type-only included), and import(). */
export function importSpecifiers(source: string): string[] {
  const out: string[] = [];
  const staticForm = /^\s*(?:import|export)\s+(?:type\s+)?(?:[^'";]*?\s+from\s+)?['"]([^'"]+)['"]/gm;
  const dynamicForm = /\bimport\(\s*['"]([^'"]+)['"]\s*\)/g;
  for (const re of [staticForm, dynamicForm]) for (const m of source.matchAll(re)) out.push(m[1]);
  return out;
}

/** The import graph of the engine: file (relative to src/qcow2) → the engine files it imports. */
function engineGraph(): Map<string, string[]> {
  const graph = new Map<string, string[]>();
  for (const file of engineFiles(ENGINE)) {
    const deps = importSpecifiers(readFileSync(file, 'utf8'))
      .filter((s) => s.startsWith('.'))
      .map((s) => relative(ENGINE, resolve(dirname(file), s.replace(/\.js$/, '.ts'))))
      .filter((r) => !r.startsWith('..'));
    graph.set(relative(ENGINE, file), deps);
  }
  return graph;
}

/** One import cycle as a path a → … → a, or undefined (depth-first search with an on-stack set). */
export function findCycle(graph: Map<string, string[]>): string[] | undefined {
  const done = new Set<string>();
  const stack: string[] = [];
  const onStack = new Set<string>();
  const visit = (n: string): string[] | undefined => {
    if (onStack.has(n)) return [...stack.slice(stack.indexOf(n)), n];
    if (done.has(n)) return undefined;
    stack.push(n);
    onStack.add(n);
    for (const d of graph.get(n) ?? []) {
      const c = visit(d);
      if (c) return c;
    }
    stack.pop();
    onStack.delete(n);
    done.add(n);
    return undefined;
  };
  for (const n of [...graph.keys()].sort()) {
    const c = visit(n);
    if (c) return c;
  }
  return undefined;
}

const lineCount = (file: string) => readFileSync(file, 'utf8').split('\n').length - 1;

describe('the checks themselves', () => {
  test('the import parser sees type-only, multi-line, re-export and dynamic imports', () => {
    const src = [
      "import type { A } from './a.js';",
      'import {',
      '  B,',
      "} from './b.js';",
      "export { C } from './c.js';",
      "export * from './d.js';",
      "import './e.js';",
      "const f = await import('./f.js');",
    ].join('\n');
    expect(importSpecifiers(src).sort()).toEqual(['./a.js', './b.js', './c.js', './d.js', './e.js', './f.js']);
  });

  test('the cycle finder finds a three-file cycle and passes a diamond', () => {
    const cyclic = new Map([['a', ['b']], ['b', ['c']], ['c', ['a']], ['d', ['a']]]);
    expect(findCycle(cyclic)).toEqual(['a', 'b', 'c', 'a']);
    const diamond = new Map([['a', ['b', 'c']], ['b', ['d']], ['c', ['d']], ['d', []]]);
    expect(findCycle(diamond)).toBeUndefined();
  });
});

describe('src/qcow2 layout', () => {
  const graph = engineGraph();

  test('the graph covers the engine', () => {
    // Guards the rules below against a parser that silently finds nothing.
    expect(graph.get('image.ts')?.length ?? 0).toBeGreaterThan(5);
    expect(graph.get('state.ts')).toContain('refcount.ts');
  });

  test('no import cycle (type-only imports included)', () => {
    expect(findCycle(graph)).toBeUndefined();
  });

  test('nothing in the engine imports the facade image.ts', () => {
    const importers = [...graph].filter(([f, deps]) => deps.includes('image.ts') && !FACADE_IMPORTERS.has(f)).map(([f]) => f);
    expect(importers).toEqual([]);
  });

  test(`image.ts has at most ${MAX_FACADE_LINES} lines`, () => {
    expect(lineCount(join(ENGINE, 'image.ts'))).toBeLessThanOrEqual(MAX_FACADE_LINES);
  });

  test(`no engine file has more than ${MAX_FILE_LINES} lines`, () => {
    const long = engineFiles(ENGINE)
      .map((f) => ({ file: relative(ENGINE, f), lines: lineCount(f) }))
      .filter((x) => x.lines > MAX_FILE_LINES);
    expect(long).toEqual([]);
  });
});
