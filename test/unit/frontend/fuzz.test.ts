import { describe, expect, it } from 'vitest';
import { dockerfileToLLB } from '../../../src/frontend/dockerfile/convert.js';
import { DockerfileError } from '../../../src/frontend/dockerfile/errors.js';
import { parse } from '../../../src/frontend/dockerfile/parser.js';
import { ShellLex } from '../../../src/frontend/dockerfile/shell-lex.js';
import { LoomError } from '../../../src/util/errors.js';
import { CORPUS } from './corpus.js';
import { cannedResolver } from './base-image.js';
import { prng } from '../../helpers/prng.js';

const FRAGMENTS = [
  'FROM localhost:5000/busybox', 'FROM scratch AS s', 'FROM s', 'FROM --platform=$BUILDPLATFORM localhost:5000/busybox AS b', 'FROM ${IMG:-scratch}',
  'ARG IMG', 'ARG A=1 B', 'ENV a=b c="d e"', 'ENV x y z', 'LABEL "k v"=w', 'WORKDIR /w', 'WORKDIR rel/$a', 'USER 1000:1000',
  'RUN echo "$a" ${b:-c} ${d#x} ${e//a/b}', 'RUN ["sh", "-c", "x"]', 'RUN <<EOF', 'RUN <<-EOT sh', 'EOF', '\tEOT', 'COPY <<EOF /f', 'COPY --from=s /a /b',
  'COPY --from=b --chown=app:app --chmod=600 a* /d/', 'COPY --link x /y', 'COPY --parents a/./b /c/', 'ADD https://example.com/x.tgz /x', 'ADD --checksum=sha256:abc a b',
  'ADD git@github.com:x/y.git#main:sub /src', 'RUN --mount=type=cache,target=/c,sharing=locked true', 'RUN --mount=type=secret,id=s true', 'RUN --mount=type=ssh true',
  'RUN --mount=from=s,target=/m true', 'RUN --network=none --security=insecure true', 'ONBUILD RUN x', 'HEALTHCHECK --interval=1s CMD x', 'HEALTHCHECK NONE',
  'EXPOSE 80 $P/udp', 'VOLUME ["/v"]', 'STOPSIGNAL 9', 'SHELL ["/bin/sh", "-c"]', 'CMD x', 'ENTRYPOINT ["y"]', 'MAINTAINER m', '# escape=`', '# syntax=docker/dockerfile:1',
  '# comment', '', '\\', 'RUN a \\', '   b', 'FOO bar',
];
const NOISE = ['\\', '`', '\n', '\r\n', '"', "'", '$', '${', '}', '[', ']', '<<', '--', '=', ',', ' ', '\t', '#', '\u0000', '\uFEFF', 'é', '*', '/./', ':'];

function randomDockerfile(rnd: () => number): string {
  const pick = <T>(a: T[]) => a[Math.floor(rnd() * a.length)]!;
  const n = 1 + Math.floor(rnd() * 12);
  let s = Array.from({ length: n }, () => pick(FRAGMENTS)).join(pick(['\n', '\n', '\r\n']));
  if (rnd() < 0.5) s = 'FROM localhost:5000/busybox\n' + s;
  return mutate(s, rnd, Math.floor(rnd() * 3));
}

function mutate(s: string, rnd: () => number, times: number): string {
  let out = s;
  for (let k = 0; k < times; k++) {
    const p = Math.floor(rnd() * (out.length + 1));
    switch (Math.floor(rnd() * 4)) {
      case 0:
        out = out.slice(0, p) + NOISE[Math.floor(rnd() * NOISE.length)] + out.slice(p);
        break;
      case 1:
        out = out.slice(0, p) + out.slice(p + 1 + Math.floor(rnd() * 8));
        break;
      case 2: {
        const q = Math.floor(rnd() * out.length);
        out = out.slice(0, p) + out.slice(q, q + 20) + out.slice(p);
        break;
      }
      default:
        out = out.slice(0, p);
    }
  }
  return out;
}

/** Anything the frontend throws must be a LoomError with a message; Dockerfile errors name real lines. */
function checkError(err: unknown, input: string): void {
  if (!(err instanceof LoomError)) throw new Error(`not a LoomError for ${JSON.stringify(input)}: ${String((err as Error)?.stack ?? err)}`);
  expect(err.message.length).toBeGreaterThan(0);
  if (err instanceof DockerfileError) {
    const lines = input.split('\n').length + 1;
    for (const r of err.location) expect(r.start.line, JSON.stringify(input)).toBeLessThanOrEqual(lines);
  }
}

describe('fuzzing the Dockerfile frontend', () => {
  it('random and mutated Dockerfiles give results or clean LoomErrors, quickly', async () => {
    const seed = Number(process.env.LOOM_FUZZ_SEED ?? 20240601);
    const rnd = prng(seed);
    const deadline = Date.now() + Number(process.env.LOOM_FUZZ_MS ?? 4000);
    const resolve = cannedResolver();
    let runs = 0;
    let ok = 0;
    while (Date.now() < deadline) {
      const base = rnd() < 0.4 ? mutate(CORPUS[Math.floor(rnd() * CORPUS.length)]!.dockerfile, rnd, 1 + Math.floor(rnd() * 4)) : randomDockerfile(rnd);
      const started = Date.now();
      try {
        await dockerfileToLLB({ dockerfile: base, sessionId: 's', resolveImageConfig: resolve, buildArgs: rnd() < 0.3 ? { a: 'x', P: '81' } : {} });
        ok++;
      } catch (err) {
        checkError(err, base);
      }
      expect(Date.now() - started, `slow on ${JSON.stringify(base)} (seed ${seed})`).toBeLessThan(2000);
      runs++;
    }
    expect(runs).toBeGreaterThan(200);
    // The generator must also produce valid Dockerfiles, or the fuzzing only exercises errors.
    expect(ok).toBeGreaterThan(runs / 20);
  });

  it('the parser and lexer survive arbitrary bytes', () => {
    const rnd = prng(7);
    const lex = new ShellLex('\\');
    for (let i = 0; i < 3000; i++) {
      const len = Math.floor(rnd() * 200);
      const bytes = Buffer.from(Array.from({ length: len }, () => (rnd() < 0.7 ? 32 + Math.floor(rnd() * 95) : Math.floor(rnd() * 256))));
      try {
        parse(bytes);
      } catch (err) {
        checkError(err, bytes.toString());
      }
      const word = bytes.toString('latin1');
      try {
        lex.processWords(word, ['a=1', 'b=x*y']);
      } catch (err) {
        // The lexer reports plain errors; the converter attaches the line and makes them LoomErrors.
        expect((err as Error).message).toMatch(/^failed to process /);
      }
    }
  });

  it('pathological patterns and long lines stay fast', async () => {
    const lex = new ShellLex('\\');
    const started = Date.now();
    const v = 'a'.repeat(2000);
    expect(lex.processWord('${v##*a*a*a*a*a*a*a*a*a*a*b}', [`v=${v}`])).toBe(v);
    expect(lex.processWord('${v//a*a*a*a*b/x}', [`v=${v.slice(0, 300)}`])).toBe(v.slice(0, 300));
    await dockerfileToLLB({ dockerfile: 'FROM scratch\nENV ' + 'a=b '.repeat(5000) + '\n', resolveImageConfig: cannedResolver() });
    expect(() => parse('FROM x\nRUN ' + '\\\n'.repeat(20000) + 'x\n')).not.toThrow();
    expect(Date.now() - started).toBeLessThan(5000);
  });
});
