import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { resolveTool } from './resolve.js';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qh-resolve-'));
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

function file(rel: string, mode: number): string {
  const p = path.join(dir, rel);
  fs.mkdirSync(path.dirname(p), { recursive: true });
  fs.writeFileSync(p, '#!/bin/sh\n');
  fs.chmodSync(p, mode);
  return p;
}

describe('resolveTool (execvp search, once per tool and PATH)', () => {
  it('takes the first executable file on PATH, passing over a directory and a file without an x bit', () => {
    file('a/tool', 0o644);
    fs.mkdirSync(path.join(dir, 'b/tool'), { recursive: true });
    const good = file('c/tool', 0o755);
    file('d/tool', 0o755);
    const search = ['a', 'b', 'c', 'd'].map((d) => path.join(dir, d)).join(':');
    expect(resolveTool('tool', search)).toEqual({ ok: true, file: good });
  });

  it('an empty PATH entry is the current directory, resolved to an absolute path', () => {
    const cwd = process.cwd();
    const here = file('e/here-tool', 0o755);
    try {
      process.chdir(path.join(dir, 'e'));
      expect(resolveTool('here-tool', `${path.join(dir, 'none')}::`)).toEqual({ ok: true, file: here });
    } finally {
      process.chdir(cwd);
    }
  });

  it('a name with a slash is used as given, not searched', () => {
    file('f/rel-tool', 0o755);
    expect(resolveTool(path.join(dir, 'f/rel-tool'), '')).toEqual({ ok: true, file: path.join(dir, 'f/rel-tool') });
    expect(resolveTool('./rel-tool', path.join(dir, 'f'))).toMatchObject({ ok: false, rc: 127 });
  });

  it('not found is 127, found but not executable 126; a tool installed later is found then', () => {
    const search = path.join(dir, 'g');
    expect(resolveTool('late-tool', search)).toEqual({ ok: false, rc: 127, message: "failed to run command 'late-tool': No such file or directory\n" });
    file('g/late-tool', 0o644);
    expect(resolveTool('late-tool', search)).toEqual({ ok: false, rc: 126, message: "failed to run command 'late-tool': Permission denied\n" });
    fs.chmodSync(path.join(dir, 'g/late-tool'), 0o755);
    expect(resolveTool('late-tool', search)).toEqual({ ok: true, file: path.join(dir, 'g/late-tool') });
  });

  it('each PATH is searched on its own: a changed PATH finds the tool where that PATH says', () => {
    const x = file('h/which', 0o755);
    const y = file('i/which', 0o755);
    expect(resolveTool('which', path.join(dir, 'h'))).toEqual({ ok: true, file: x });
    expect(resolveTool('which', path.join(dir, 'i'))).toEqual({ ok: true, file: y });
    expect(resolveTool('which', `${path.join(dir, 'i')}:${path.join(dir, 'h')}`)).toEqual({ ok: true, file: y });
  });
});
