/**
 * Mutated LLB through the real socket (root, runc, a real docker-registry): upstream's own
 * definitions (the shared vectors), each op decoded, one field of it changed (a path to `..`, a
 * number to -1, an input dropped...), the graph re-linked by the new digests, and solved. Every
 * build must end, with a result or an `error:` line, in bounded time; the daemon must keep serving
 * (no crash, no unhandled rejection in its log); and a good build afterwards must still give
 * upstream's exact result, so nothing already stored was damaged.
 *
 * LOOM_LLB_FUZZ_SEED replays a run; LOOM_LLB_FUZZ_MS sets its length (default 20 s);
 * LOOM_LLB_FUZZ_LOG=FILE appends each build's outcome to FILE.
 */
import { fromBinary, fromJson, toBinary, toJson, type JsonValue } from '@bufbuild/protobuf';
import { appendFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DefinitionSchema, OpSchema, type Definition } from '../../../src/gen/buildkit/ops_pb.js';
import { sha256 } from '../../../src/util/digest.js';
import { buildctl, removeDir, startDaemon, tarListing, type TestDaemon } from '../../helpers/daemon.js';
import { prng } from '../../helpers/prng.js';
import { startRegistry, vectorsDir, vectorsRegistryConfig, type TestRegistry } from '../../helpers/registry.js';

const VECTORS = vectorsDir();
const d = describe.runIf(process.getuid?.() === 0 && VECTORS !== undefined);

/** Vectors that run on amd64 and need nothing from the client but a local dir (no secrets or ssh). */
const SEEDS = ['file-ops', 'merge-diff', 'exec-basic', 'exec-flags', 'local-source'];

/** Values a mutated field takes: the edges a parser or a path join gets wrong. */
const STRINGS = ['', '/', '.', '..', '../../..', '/../../etc', '/proc/self', 'a/../../b', '//x//', '*', '[', '\u0000', 'é', 'x'.repeat(5000), 'docker-image://', 'local://nope', 'sha256:zz', '-1', 'true'];
const NUMBERS = [0, -1, 1, 2, 7, 0o7777, 2 ** 31, -(2 ** 31), 2 ** 53];

type Rnd = () => number;
const pick = <T>(rnd: Rnd, a: readonly T[]): T => a[Math.floor(rnd() * a.length)]!;

/** Every [container, key] under `v` whose value is a leaf or an array, to change one of them. */
function slots(v: JsonValue, out: [Record<string, JsonValue> | JsonValue[], string | number][] = []): typeof out {
  if (Array.isArray(v)) {
    v.forEach((x, i) => {
      if (x !== null && typeof x === 'object') slots(x, out);
      else out.push([v, i]);
    });
  } else if (v !== null && typeof v === 'object') {
    for (const [k, x] of Object.entries(v)) {
      out.push([v, k]);
      if (x !== null && typeof x === 'object') slots(x, out);
    }
  }
  return out;
}

function mutateValue(rnd: Rnd, old: JsonValue): JsonValue | undefined {
  if (Array.isArray(old)) {
    if (old.length === 0 || rnd() < 0.5) return [...old, ...old];
    const c = [...old];
    c.splice(Math.floor(rnd() * c.length), 1);
    return c;
  }
  if (typeof old === 'boolean') return !old;
  if (typeof old === 'number') return pick(rnd, NUMBERS);
  // int64 fields are strings in protobuf JSON.
  if (typeof old === 'string' && /^-?\d+$/.test(old)) return String(pick(rnd, NUMBERS));
  if (typeof old === 'string') return rnd() < 0.7 ? pick(rnd, STRINGS) : old + pick(rnd, STRINGS);
  return undefined; // an object: removed below
}

/**
 * One op of `def` with one field changed (or removed), the ops above it re-linked to its new digest.
 * Undefined when the change does not make a valid Op message.
 */
function mutateDefinition(rnd: Rnd, def: Definition): Buffer | undefined {
  const ops = def.def.map((b) => fromBinary(OpSchema, b));
  const target = Math.floor(rnd() * Math.max(1, ops.length - 1)); // the last op is the terminal
  const json = toJson(OpSchema, ops[target]!) as JsonValue;
  const all = slots(json);
  if (all.length === 0) return undefined;
  const [obj, key] = pick(rnd, all);
  const next = mutateValue(rnd, (obj as Record<string | number, JsonValue>)[key]!);
  if (next === undefined || rnd() < 0.1) {
    if (Array.isArray(obj)) obj.splice(key as number, 1);
    else delete (obj as Record<string, JsonValue>)[key as string];
  } else (obj as Record<string | number, JsonValue>)[key] = next;
  try {
    ops[target] = fromJson(OpSchema, json);
  } catch {
    return undefined;
  }
  // Re-link: each op's inputs name the new digests of the ops they named, in definition order (an
  // op's inputs come before it in what upstream's marshaller writes).
  const renamed = new Map<string, string>();
  const bytes: Uint8Array[] = [];
  def.def.forEach((old, i) => {
    const op = ops[i]!;
    for (const inp of op.inputs) inp.digest = renamed.get(inp.digest) ?? inp.digest;
    const b = toBinary(OpSchema, op);
    renamed.set(sha256(old), sha256(b));
    bytes.push(b);
  });
  return Buffer.from(toBinary(DefinitionSchema, { ...def, def: bytes, metadata: {} } as Definition));
}

/** A few bytes of the encoded definition flipped, cut or repeated: the decoder's side. */
function mutateBytes(rnd: Rnd, buf: Buffer): Buffer {
  const b = Buffer.from(buf);
  const at = Math.floor(rnd() * b.length);
  switch (Math.floor(rnd() * 3)) {
    case 0:
      b[at] = Math.floor(rnd() * 256);
      return b;
    case 1:
      return b.subarray(0, at);
    default:
      return Buffer.concat([b.subarray(0, at), b.subarray(at - Math.min(at, 16), at), b.subarray(at)]);
  }
}

let reg: TestRegistry;
let daemon: TestDaemon;
let work: string;

d('mutated LLB definitions', () => {
  beforeAll(async () => {
    work = mkdtempSync(join(tmpdir(), 'loom-llbfuzz-'));
    reg = await startRegistry();
    daemon = await startDaemon({ config: vectorsRegistryConfig(reg) });
  }, 120_000);

  afterAll(async () => {
    await daemon?.stop();
    await reg?.stop();
    if (daemon) removeDir(daemon.dir);
    if (work) removeDir(work);
  });

  it('end with a result or a clean error, keep the daemon serving and leave the store intact', async () => {
    const seed = Number(process.env.LOOM_LLB_FUZZ_SEED ?? 20261205);
    const rnd = prng(seed);
    const deadline = Date.now() + Number(process.env.LOOM_LLB_FUZZ_MS ?? 20_000);
    const vectors = SEEDS.map((n) => readFileSync(join(VECTORS!, 'llb', `${n}.llb`)));
    const out = join(work, 'out.tar');
    // The local-source vector's `context` (its include, exclude and follow patterns get mutated too).
    const ctx = join(work, 'ctx');
    mkdirSync(join(ctx, 'src', 'sub'), { recursive: true });
    writeFileSync(join(ctx, 'src', 'a.txt'), 'a\n');
    writeFileSync(join(ctx, 'src', 'sub', 'b.json'), '{}\n');
    writeFileSync(join(ctx, 'src', 'x.tmp'), 'tmp\n');
    writeFileSync(join(ctx, 'c.json'), '[]\n');
    symlinkSync('src', join(ctx, 'link'));
    // The good build first, so later mutations run against a cache that holds its steps.
    const good = await buildctl(daemon.addr, ['build', '--output', `type=tar,dest=${out}`], { stdin: vectors[0] });
    expect(good.code, good.stderr).toBe(0);
    const expected = readFileSync(join(VECTORS!, 'llb', 'expected', 'file-ops.tar-listing.txt'), 'utf8');
    expect(await tarListing(out)).toBe(expected);

    let runs = 0;
    let solved = 0;
    while (Date.now() < deadline) {
      const base = pick(rnd, vectors);
      const def = rnd() < 0.8 ? mutateDefinition(rnd, fromBinary(DefinitionSchema, base)) : mutateBytes(rnd, base);
      if (!def) continue;
      const what = `seed ${seed}, run ${runs}: ${def.toString('base64').slice(0, 2000)}`;
      const started = Date.now();
      const r = await buildctl(daemon.addr, ['build', '--local', `context=${ctx}`], { stdin: def, timeoutMs: 90_000 });
      expect(Date.now() - started, `no answer within 90 s (${what})`).toBeLessThan(90_000);
      if (process.env.LOOM_LLB_FUZZ_LOG) appendFileSync(process.env.LOOM_LLB_FUZZ_LOG, `${runs} ${Date.now() - started}ms code=${r.code} ${r.stderr.split('\n').filter((l) => l.startsWith('error')).join(' | ')} ${process.env.LOOM_LLB_FUZZ_LOG_DEFS ? def.toString('base64') : ''}\n`);
      if (r.code === 0) solved++;
      else {
        expect(r.stderr, what).toMatch(/^error: .+/m);
        // A JavaScript fault passed on as the error names nothing the user sent.
        expect(r.stderr, what).not.toMatch(/RangeError|TypeError|Invalid array length|Cannot read propert|is not a function|Maximum call stack|undefined/);
      }
      expect(daemon.proc.exitCode, `the daemon exited (${what})\n${daemon.logs().slice(-3000)}`).toBeNull();
      runs++;
    }
    expect(runs).toBeGreaterThan(5);
    // Some mutations must still solve, or only the decoder's errors were exercised.
    expect(solved).toBeGreaterThan(0);

    const w = await buildctl(daemon.addr, ['debug', 'workers']);
    expect(w.code).toBe(0);
    expect(daemon.logs()).not.toMatch(/unhandled|uncaught/i);
    // The daemon logs an error it did not expect (a fault, not bad input) as such.
    expect(daemon.logs().split('\n').filter((l) => l.includes('unexpected error'))).toEqual([]);
    rmSync(out, { force: true });
    const again = await buildctl(daemon.addr, ['build', '--output', `type=tar,dest=${out}`], { stdin: vectors[0] });
    expect(again.code, again.stderr).toBe(0);
    expect(await tarListing(out)).toBe(expected);
  }, 600_000);
});
