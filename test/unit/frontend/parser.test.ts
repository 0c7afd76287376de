import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { detectSyntax, parse, type ParseResult } from '../../../src/frontend/dockerfile/parser.js';
import { DockerfileError } from '../../../src/frontend/dockerfile/errors.js';

/** Each node as upstream's parser tests print it: `start-end dump`, then its heredocs. */
function dumpAll(r: ParseResult): string {
  return r.children
    .map(
      (c) =>
        `${c.startLine}-${c.endLine} ${c.dump()}\n` +
        c.heredocs.map((h) => `  heredoc ${JSON.stringify(h.name)} ${h.expand} ${h.chomp} ${h.fileDescriptor} ${JSON.stringify(h.content)}\n`).join(''),
    )
    .join('');
}

// Expected dumps were produced by upstream's parser (BuildKit v0.11.6) on the same inputs.
const PARSE_CASES: { name: string; input: string; dump: string; warnings?: string[] }[] = [
  { name: "json and shell forms", input: "FROM busybox\nRUN [\"echo\", \"a b\"]\nRUN echo \"a b\"\nCMD [\"sh\", \"-c\", \"x\"] trailing\nENTRYPOINT [ \"bad json\"\nVOLUME [\"/a\", \"/b\"]\nVOLUME /c /d\n", dump: "1-1 from \"busybox\"\n2-2 run \"echo\" \"a b\"\n3-3 run \"echo \\\"a b\\\"\"\n4-4 cmd \"sh\" \"-c\" \"x\"\n5-5 entrypoint \"[ \\\"bad json\\\"\"\n6-6 volume \"/a\" \"/b\"\n7-7 volume \"/c\" \"/d\"\n" },
  { name: "continuations and comments", input: "FROM busybox\nRUN apt-get update \\\n    # a comment inside\n    && apt-get install -y \\\n\n      curl\n# comment\nLABEL a=b\n", dump: "1-1 from \"busybox\"\n2-6 run \"apt-get update     && apt-get install -y       curl\"\n8-8 label \"a\" \"b\"\n", warnings: ["Empty continuation line found in: RUN apt-get update     && apt-get install -y       curl"] },
  { name: "escape directive", input: "# escape=`\nFROM busybox\nRUN echo a `\n  b\nCOPY C:\\src `\n  C:\\dst\n", dump: "2-2 from \"busybox\"\n3-4 run \"echo a   b\"\n5-6 copy \"C:\\\\src\" \"C:\\\\dst\"\n" },
  { name: "directives stop at first non-directive", input: "# syntax=docker/dockerfile:1\n# check=skip=all\n# comment\n# escape=`\nFROM busybox\nRUN a \\\n b\n", dump: "5-5 from \"busybox\"\n6-7 run \"a  b\"\n" },
  { name: "env and label forms", input: "FROM x\nENV a b c\nENV a=b c=\"d e\" f=g\\ h\nLABEL \"x y\"=z k='v w'\nARG a b=c d=\n", dump: "1-1 from \"x\"\n2-2 env \"a\" \"b c\"\n3-3 env \"a\" \"b\" \"c\" \"\\\"d e\\\"\" \"f\" \"g\\\\ h\"\n4-4 label \"\\\"x y\\\"\" \"z\" \"k\" \"'v w'\"\n5-5 arg \"a\" \"b=c\" \"d=\"\n" },
  { name: "heredocs", input: "FROM x\nRUN <<EOF\necho hi\nEOF\nRUN <<-\"EOT\" cat\n\tindented $x\n\tEOT\nCOPY <<a.txt <<b.txt /dst/\nA\na.txt\nB\nb.txt\nRUN 3<<EOF cat <&3\nfd3\nEOF\n", dump: "1-1 from \"x\"\n2-4 run \"<<EOF\"\n  heredoc \"EOF\" true false 0 \"echo hi\\n\"\n5-7 run \"<<-\\\"EOT\\\" cat\"\n  heredoc \"EOT\" false true 0 \"\\tindented $x\\n\"\n8-12 copy \"<<a.txt\" \"<<b.txt\" \"/dst/\"\n  heredoc \"a.txt\" true false 0 \"A\\n\"\n  heredoc \"b.txt\" true false 0 \"B\\n\"\n13-15 run \"3<<EOF cat <&3\"\n  heredoc \"EOF\" true false 3 \"fd3\\n\"\n" },
  { name: "onbuild and healthcheck", input: "FROM x\nONBUILD RUN echo hi\nONBUILD ADD [\"a\", \"b\"]\nHEALTHCHECK --interval=5s CMD curl -f localhost\nHEALTHCHECK NONE\nHEALTHCHECK CMD [\"a\", \"b\"]\n", dump: "1-1 from \"x\"\n2-2 onbuild (run \"echo hi\")\n3-3 onbuild (add \"a\" \"b\")\n4-4 healthcheck [\"--interval=5s\"] \"CMD\" \"curl -f localhost\"\n5-5 healthcheck \"NONE\"\n6-6 healthcheck \"CMD\" \"a\" \"b\"\n" },
  { name: "flags", input: "FROM --platform=linux/arm64 x AS y\nCOPY --from=y --chown=\"a b\" --chmod=755 src /dst\nRUN --mount=type=cache,target=/c --network=none echo\nCOPY -- --notaflag /x\n", dump: "1-1 from [\"--platform=linux/arm64\"] \"x\" \"AS\" \"y\"\n2-2 copy [\"--from=y\" \"--chown=a b\" \"--chmod=755\"] \"src\" \"/dst\"\n3-3 run [\"--mount=type=cache,target=/c\" \"--network=none\"] \"echo\"\n4-4 copy \"--notaflag\" \"/x\"\n" },
  { name: "crlf and bom", input: "﻿FROM x\r\nRUN a \\\r\n  b\r\n", dump: "1-1 from \"x\"\n2-3 run \"a   b\"\n" },
  { name: "unknown instruction is kept", input: "FROM x\nFOO bar baz\nrun lower case\n", dump: "1-1 from \"x\"\n2-2 foo \"\"\n3-3 run \"lower case\"\n" },
];
const PARSE_ERRORS: { name: string; input: string; message: string; lines: number[] }[] = [
  { name: "unterminated heredoc", input: "FROM x\nRUN <<EOF\nbody\n", message: "unterminated heredoc", lines: [2,3] },
  { name: "duplicate directive", input: "# escape=`\n# escape=\\\nFROM x\n", message: "only one escape parser directive can be used", lines: [1] },
  { name: "bad escape", input: "# escape=x\nFROM x\n", message: "invalid escape token 'x' does not match ` or \\", lines: [0] },
  { name: "non-string JSON", input: "FROM x\nCMD [\"a\", 1]\n", message: "when using JSON array syntax, arrays must be comprised of strings only", lines: [2] },
  { name: "ENV without value", input: "FROM x\nENV onlyname\n", message: "ENV must have two arguments", lines: [2] },
  { name: "ENV pair without =", input: "FROM x\nENV a=b c\n", message: "Syntax error - can't find = in \"c\". Must be of the form: name=value", lines: [2] },
  { name: "no instructions", input: "# c\n\n", message: "file with no instructions", lines: [2] },
];

describe('parser', () => {
  for (const c of PARSE_CASES) {
    it(c.name, () => {
      const r = parse(c.input);
      expect(dumpAll(r)).toBe(c.dump);
      expect(r.warnings.length ? r.warnings.map((w) => w.short) : undefined).toEqual(c.warnings);
    });
  }

  for (const c of PARSE_ERRORS) {
    it(`error: ${c.name}`, () => {
      let err: unknown;
      try {
        parse(c.input);
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(DockerfileError);
      expect((err as DockerfileError).message).toBe(c.message);
      expect((err as DockerfileError).location.map((r) => r.start.line)).toEqual(c.lines);
    });
  }

  it('reports the escape token and directives, and warns about empty continuation lines', () => {
    const r = parse('# syntax=docker/dockerfile:1.4\n# escape=`\nFROM x\nRUN a `\n\n  b\n');
    expect(r.escapeToken).toBe('`');
    expect(r.directives.map((d) => [d.name, d.value, d.location[0]!.start.line])).toEqual([
      ['syntax', 'docker/dockerfile:1.4', 1],
      ['escape', '`', 2],
    ]);
    expect(r.warnings).toHaveLength(1);
    expect(r.warnings[0]!.short).toBe('Empty continuation line found in: RUN a   b');
    expect(r.warnings[0]!.location?.start.line).toBe(6);
  });

  it('refuses lines longer than upstream allows', () => {
    expect(() => parse('FROM x\nRUN ' + 'a'.repeat(70000) + '\n')).toThrow('dockerfile line greater than max allowed size of 65535');
  });

  // Upstream's own parser test files, when the upstream sources are on this machine.
  const root = '/opt/upstream/src/bk/frontend/dockerfile/parser/testfiles';
  it.skipIf(!existsSync(root))("matches upstream's parser test files", () => {
    const dirs = readdirSync(root);
    expect(dirs.length).toBeGreaterThan(20);
    for (const d of dirs) {
      const got = parse(readFileSync(`${root}/${d}/Dockerfile`)).children.map((c) => `(${c.dump()})\n`).join('');
      expect(got, d).toBe(readFileSync(`${root}/${d}/result`, 'utf8'));
    }
  });
});

describe('detectSyntax', () => {
  it('finds # syntax, // syntax and JSON syntax, skipping a shebang', () => {
    expect(detectSyntax('# syntax=docker/dockerfile:1 --opt\nFROM x\n')).toMatchObject({ ref: 'docker/dockerfile:1', cmdline: 'docker/dockerfile:1 --opt' });
    expect(detectSyntax('#!/usr/bin/env buildctl\n# syntax = example/frontend\nFROM x\n')?.location[0]!.start.line).toBe(2);
    expect(detectSyntax('// syntax=x/y\n{}')?.ref).toBe('x/y');
    expect(detectSyntax('{"syntax": "z/w"}')?.ref).toBe('z/w');
    expect(detectSyntax('FROM x\n# syntax=late\n')).toBeUndefined();
    expect(detectSyntax('# escape=`\n# syntax=ok\nFROM x')?.ref).toBe('ok');
  });
});
