import { describe, expect, it } from 'vitest';
import { parseStages, type Instruction } from '../../../src/frontend/dockerfile/instructions.js';
import { DockerfileError } from '../../../src/frontend/dockerfile/errors.js';
import { dockerfileToLLB } from '../../../src/frontend/dockerfile/convert.js';
import { cannedResolver } from './base-image.js';

// Each instruction on line 3 of `FROM x\n\n<instruction>\n`; the message is upstream's (BuildKit
// v0.11.6); '' means the instruction parses (mount values are checked when the stage is built).
const INSTRUCTION_ERRORS: [string, string][] = [
  ["FROM a b", "dockerfile parse error on line 3: FROM requires either one or three arguments"],
  ["FROM a AS 1x", "dockerfile parse error on line 3: invalid name for build stage: \"1x\", name can't start with a number or contain symbols"],
  ["FROM --plat=x y", "dockerfile parse error on line 3: unknown flag: plat"],
  ["COPY a", "dockerfile parse error on line 3: COPY requires at least two arguments, but only one was provided. Destination could not be determined"],
  ["COPY --link=maybe a b", "dockerfile parse error on line 3: expecting boolean value for flag link, not: maybe"],
  ["COPY --chown a b", "dockerfile parse error on line 3: missing a value on flag: chown"],
  ["COPY --chown=a --chown=b a b", "dockerfile parse error on line 3: duplicate flag specified: chown"],
  ["COPY a <<EOF", "unterminated heredoc"],
  ["ADD --checksum a b", "dockerfile parse error on line 3: missing a value on flag: checksum"],
  ["ONBUILD ONBUILD x", "dockerfile parse error on line 3: Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed"],
  ["ONBUILD FROM x", "dockerfile parse error on line 3: FROM isn't allowed as an ONBUILD trigger"],
  ["HEALTHCHECK FOO", "dockerfile parse error on line 3: Unknown type \"FOO\" in HEALTHCHECK (try CMD)"],
  ["HEALTHCHECK CMD", "dockerfile parse error on line 3: Missing command after HEALTHCHECK CMD"],
  ["HEALTHCHECK --interval=1ns CMD x", "dockerfile parse error on line 3: Interval \"interval\" cannot be less than 1ms"],
  ["HEALTHCHECK --interval=bad CMD x", "dockerfile parse error on line 3: time: invalid duration \"bad\""],
  ["HEALTHCHECK --retries=-1 CMD x", "dockerfile parse error on line 3: --retries cannot be negative (-1)"],
  ["HEALTHCHECK NONE x", "dockerfile parse error on line 3: HEALTHCHECK NONE takes no arguments"],
  ["WORKDIR a b", ""],
  ["USER", "dockerfile parse error on line 3: USER requires exactly one argument"],
  ["SHELL sh -c", "dockerfile parse error on line 3: SHELL requires the arguments to be in JSON form"],
  ["SHELL []", "dockerfile parse error on line 3: SHELL requires at least one argument"],
  ["VOLUME [\"\"]", "dockerfile parse error on line 3: VOLUME specified can not be an empty string"],
  ["ARG =x", "dockerfile parse error on line 3: ARG names can not be blank"],
  ["ENV =x", "dockerfile parse error on line 3: ENV names can not be blank"],
  ["LABEL", "dockerfile parse error on line 3: LABEL requires at least one argument"],
  ["RUN --mount=type=nope x", ""],
  ["RUN --mount=typ=cache x", ""],
  ["RUN --mount=from=$X x", "dockerfile parse error on line 3: 'from' doesn't support variable expansion, define alias stage instead"],
  ["RUN --mount=type=cache,sharing=bad x", ""],
  ["RUN --mount=type=tmpfs,size=1x x", ""],
  ["RUN --mount=type=bind,mode=0755 x", ""],
  ["RUN --mount=type=secret x", ""],
  ["RUN --mount=type=secret,from=a x", ""],
  ["RUN --mount=type=bind,required x", ""],
  ["RUN --network=foo x", "dockerfile parse error on line 3: invalid network mode \"foo\""],
  ["RUN --foo x", "dockerfile parse error on line 3: unknown flag: foo"],
  ["RUNN x", "dockerfile parse error on line 3: unknown instruction: RUNN (did you mean RUN?)"],
  ["EXPOSE", "dockerfile parse error on line 3: EXPOSE requires at least one argument"],
  ["MAINTAINER a b", ""],
  ["STOPSIGNAL a b", ""],
  ["CMD --x a", "dockerfile parse error on line 3: unknown flag: x"],
];

function errorOf(fn: () => unknown): DockerfileError | undefined {
  try {
    fn();
  } catch (e) {
    return e as DockerfileError;
  }
  return undefined;
}

describe('parseStages', () => {
  for (const [line, message] of INSTRUCTION_ERRORS) {
    it(`${line} -> ${message || 'ok'}`, () => {
      const err = errorOf(() => parseStages(`FROM x\n\n${line}\n`));
      if (message === '') {
        expect(err).toBeUndefined();
        return;
      }
      expect(err).toBeInstanceOf(DockerfileError);
      expect(err!.message).toBe(message);
      expect(err!.location[0]!.start.line).toBe(3);
    });
  }

  it('groups instructions into stages with meta ARGs first', () => {
    const { stages, metaArgs } = parseStages('ARG A=1 B\nFROM x AS Build\nRUN a\nFROM --platform=$P build\nCOPY --from=build --chmod=644 --link --parents --exclude=*.md a/./b /c/\n');
    expect(metaArgs.flatMap((a) => a.args)).toEqual([
      { key: 'A', value: '1', comment: '' },
      { key: 'B', value: undefined, comment: '' },
    ]);
    expect(stages.map((s) => [s.name, s.baseName, s.platform, s.commands.length])).toEqual([
      ['build', 'x', '', 1],
      ['', 'build', '$P', 1],
    ]);
    const copy = stages[1]!.commands[0] as Extract<Instruction, { kind: 'copy' }>;
    expect(copy).toMatchObject({ from: 'build', chmod: '644', link: true, parents: true, exclude: ['*.md'], sourcePaths: ['a/./b'], destPath: '/c/' });
  });

  it('reads RUN shell and exec forms, heredoc files, mounts and network', () => {
    const { stages } = parseStages('FROM x\nRUN --mount=type=cache,target=/c --mount=from=y,target=/y --network=none <<EOF\necho hi\nEOF\nRUN ["a", "b c"]\n');
    const [r1, r2] = stages[0]!.commands as Extract<Instruction, { kind: 'run' }>[];
    expect(r1).toMatchObject({ cmdLine: ['<<EOF'], prependShell: true, network: 'none', files: [{ name: 'EOF', data: 'echo hi\n', chomp: false }] });
    expect(r1!.mounts.map((m) => m.from)).toEqual(['', 'y']);
    expect(r2).toMatchObject({ cmdLine: ['a', 'b c'], prependShell: false });
  });

  it('parses HEALTHCHECK options into nanoseconds', () => {
    const { stages } = parseStages('FROM x\nHEALTHCHECK --interval=1m30s --timeout=500ms --start-period=2s --retries=4 CMD ["check"]\n');
    expect((stages[0]!.commands[0] as Extract<Instruction, { kind: 'healthcheck' }>).health).toEqual({
      test: ['CMD', 'check'],
      interval: 90_000_000_000n,
      timeout: 500_000_000n,
      startPeriod: 2_000_000_000n,
      retries: 4,
    });
  });
});

describe('RUN --mount values checked when the stage is built', () => {
  const cases: [string, string][] = [
    ['type=nope', 'unsupported mount type "nope"'],
    ['typ=cache', "unexpected key 'typ' in 'typ=cache' (did you mean type?)"],
    ['type=cache,sharing=bad', 'unsupported sharing value "bad"'],
    ['type=tmpfs,size=1x', 'invalid value for size: 1x'],
    ['type=bind,mode=0755', 'mode not allowed for "bind" type mounts'],
    ['type=secret', 'invalid secret mount. one of source, target required'],
    ['type=bind,required', "unexpected key 'required' for mount type 'bind'"],
    ['type=cache,uid=x', 'invalid value x for uid'],
    ['type=bind,ro=maybe', 'invalid value for ro: maybe'],
  ];
  for (const [mount, message] of cases) {
    it(mount, async () => {
      const err = await dockerfileToLLB({ dockerfile: `FROM scratch\nRUN --mount=${mount} x\n`, resolveImageConfig: cannedResolver() }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(DockerfileError);
      expect((err as Error).message).toBe(message);
      expect((err as DockerfileError).location.map((r) => r.start.line)).toEqual([2]);
    });
  }
});
