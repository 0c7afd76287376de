import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll } from 'vitest';
import { fromBinary } from '@bufbuild/protobuf';
import { OpSchema, type Definition } from '../../../src/gen/buildkit/ops_pb.js';
import type { FrontendContext, FrontendWarning } from '../../../src/frontend/dockerfile/frontend.js';
import { NotFoundError } from '../../../src/util/errors.js';
import { sha256 } from '../../../src/util/digest.js';
import { cannedResolver } from './base-image.js';
import { materialize, type CorpusCase } from './corpus.js';

export const roots: string[] = [];
afterAll(() => {
  for (const r of roots) rmSync(r, { recursive: true, force: true });
});

/**
 * A daemon stand-in: solving a definition whose result is a `local://<name>` source yields a ref
 * reading that local directory (as the client's filesync would send it); any other definition is
 * recorded and gets an opaque ref.
 */
export function fakeDaemon(locals: Record<string, string>, attrs: Record<string, string>, resolve = cannedResolver()) {
  const refs = new Map<string, string | undefined>();
  const solved: Definition[] = [];
  const warnings: FrontendWarning[] = [];
  const resolved: string[] = [];
  const ctx: FrontendContext = {
    attrs,
    sessionId: 'sess',
    workerPlatforms: [{ os: 'linux', architecture: 'amd64' }],
    async solve(def) {
      const term = fromBinary(OpSchema, def.def[def.def.length - 1]!);
      const head = term.inputs[0]!.digest;
      const bytes = def.def.find((b) => sha256(b) === head)!;
      const op = fromBinary(OpSchema, bytes);
      const id = `ref${refs.size}`;
      if (op.op.case === 'source' && op.op.value.identifier.startsWith('local://')) {
        const name = op.op.value.identifier.slice('local://'.length);
        if (!(name in locals)) throw new NotFoundError(`no local source ${name}`);
        refs.set(id, locals[name]);
      } else {
        solved.push(def);
        refs.set(id, undefined);
      }
      return id;
    },
    async readFile(ref, path) {
      const dir = refs.get(ref);
      if (!dir) throw new NotFoundError(`${ref} has no files`);
      try {
        return readFileSync(join(dir, path));
      } catch {
        throw new NotFoundError(`open ${path}: no such file or directory`);
      }
    },
    async resolveImageConfig(ref, opts) {
      resolved.push(`${ref} ${opts.logName}`);
      return resolve(ref, opts);
    },
    warn: (w) => warnings.push(w),
  };
  return { ctx, solved, warnings, resolved };
}

export function caseDir(c: CorpusCase): string {
  const dir = mkdtempSync(join(tmpdir(), 'loom-df-'));
  roots.push(dir);
  materialize(c, dir);
  return dir;
}

