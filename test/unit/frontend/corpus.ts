/**
 * A corpus of Dockerfiles covering the frontend's features, each with the context files it needs.
 * Used by the conversion tests (and, with a daemon, to compare builds with upstream). Base images
 * come from `localhost:5000/busybox`, the registry the integration tests start.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';

export interface CorpusCase {
  name: string;
  dockerfile: string;
  files?: Record<string, string | Uint8Array>;
  buildArgs?: Record<string, string>;
  target?: string;
  platform?: string;
}

/** A ustar archive of `files` (regular files, mode 0644, uid/gid 0), for ADD auto-extraction. */
export function tarOf(files: Record<string, string>): Uint8Array {
  const blocks: Buffer[] = [];
  for (const [name, content] of Object.entries(files)) {
    const data = Buffer.from(content);
    const h = Buffer.alloc(512);
    h.write(name, 0, 100, 'utf8');
    h.write('0000644\0', 100);
    h.write('0000000\0', 108);
    h.write('0000000\0', 116);
    h.write(data.length.toString(8).padStart(11, '0') + '\0', 124);
    h.write('00000000000\0', 136);
    h.write('        ', 148);
    h.write('0', 156);
    h.write('ustar\0', 257);
    h.write('00', 263);
    let sum = 0;
    for (const b of h) sum += b;
    h.write(sum.toString(8).padStart(6, '0') + '\0 ', 148);
    blocks.push(h, data, Buffer.alloc((512 - (data.length % 512)) % 512));
  }
  blocks.push(Buffer.alloc(1024));
  return Buffer.concat(blocks);
}

export const CORPUS: CorpusCase[] = [
  {
    name: 'multistage',
    dockerfile: `# syntax=docker/dockerfile:1
ARG BASE=localhost:5000/busybox
ARG VERSION=1.0
FROM \${BASE} AS builder
ARG VERSION
ENV GREETING="hello world"
WORKDIR /src
COPY src/ ./
RUN echo "$GREETING $VERSION" > out.txt && cat main.txt >> out.txt

FROM \${BASE}:latest AS other
RUN echo other > /other

FROM scratch
LABEL org.opencontainers.image.title="demo" version=\${VERSION}
COPY --from=builder /src/out.txt /out.txt
COPY --from=other /other /
COPY --from=0 /src/main.txt /copied/
ENTRYPOINT ["/bin/false"]
`,
    files: { 'src/main.txt': 'main\n', 'src/skip.log': 'ignored\n', '.dockerignore': '*.log\n**/*.log\n' },
  },
  {
    name: 'config',
    dockerfile: `FROM localhost:5000/busybox
MAINTAINER Jane <jane@example.com>
ENV PATH=/opt/bin:$PATH LANG=C.UTF-8
ENV LANG en_US.UTF-8
USER 1000:1000
WORKDIR relative
WORKDIR /abs/dir
WORKDIR sub
VOLUME /data ["/logs"]
VOLUME ["/cache", "/tmp/x"]
EXPOSE 8080 53/udp 9000-9002/tcp
STOPSIGNAL SIGQUIT
HEALTHCHECK --interval=30s --timeout=3s --start-period=1m30s --retries=3 CMD wget -q localhost || exit 1
SHELL ["/bin/sh", "-ec"]
CMD echo "shell form"
ENTRYPOINT ["/entry"]
LABEL a=1 "b c"="d e" multi="line\\
 continued"
ONBUILD RUN echo triggered
ONBUILD COPY . /app
`,
  },
  {
    name: 'entrypoint-cmd',
    dockerfile: `FROM localhost:5000/busybox AS a
CMD ["a"]
ENTRYPOINT /bin/echo hello
FROM a AS b
ENTRYPOINT ["x"]
FROM b
CMD ["c"]
ENTRYPOINT ["y"]
HEALTHCHECK NONE
`,
  },
  {
    name: 'args',
    dockerfile: `ARG G1=global
ARG G2
FROM localhost:5000/busybox
ARG G1
ARG G2=stage-default
ARG LOCAL=\${G1}-suffix
ARG TARGETPLATFORM
ARG TARGETARCH
ARG BUILDPLATFORM
ARG FROMCLI
ENV E1=$LOCAL
RUN echo "$G1 $G2 $LOCAL $TARGETPLATFORM $TARGETARCH $BUILDPLATFORM $FROMCLI" > /args.txt
RUN env | sort > /env.txt
ARG G1=override
RUN echo \${G1:-x} \${UNSET:-fallback} \${G1:+set} > /mods.txt
`,
    buildArgs: { FROMCLI: 'cli-value', G2: 'from-cli' },
  },
  {
    name: 'heredoc',
    dockerfile: `FROM localhost:5000/busybox
ARG NAME=world
RUN <<EOF
echo "hello $NAME" > /greeting
EOF
RUN <<-EOT sh
\techo chomped > /chomp
\tEOT
RUN <<'EOF'
#!/bin/sh
echo "shebang" > /shebang
EOF
COPY <<EOF /etc/app.conf
name=\${NAME}
EOF
COPY <<"EOF" /etc/raw.conf
name=\${NAME}
EOF
RUN cat <<A <<B > /two
first
A
second
B
`,
  },
  {
    name: 'copy-semantics',
    dockerfile: `FROM localhost:5000/busybox
WORKDIR /w
COPY dir /dest1
COPY dir/ /dest2/
COPY *.txt /texts/
COPY file1.txt renamed.txt
COPY --chown=1000:1000 file1.txt /owned/
COPY --chown=app file2.txt /owned-by-name/
COPY --chmod=0640 file1.txt /modes/
COPY --link file2.txt /linked/
COPY nomatch* /empty/
ADD archive.tar /unpacked/
ADD file1.txt /added.txt
RUN ls -la /w /dest1 /dest2 /texts /owned /modes /linked /unpacked > /listing
`,
    files: {
      'dir/a': 'a\n',
      'dir/sub/b': 'b\n',
      'file1.txt': 'one\n',
      'file2.txt': 'two\n',
      'archive.tar': tarOf({ 'inner.txt': 'intar\n' }),
    },
  },
  {
    name: 'run-mounts',
    dockerfile: `FROM localhost:5000/busybox AS base
RUN mkdir -p /shared && echo from-base > /shared/f
FROM localhost:5000/busybox
RUN --mount=type=cache,target=/var/cache/app,id=appcache,sharing=locked echo x > /var/cache/app/x
RUN --mount=type=cache,target=/c2,uid=1000,gid=1000,mode=0700 ls -ld /c2 > /c2.txt
RUN --mount=type=bind,source=ctx.txt,target=/mnt/ctx.txt cat /mnt/ctx.txt > /ctx-copy
RUN --mount=type=bind,from=base,source=/shared,target=/s cat /s/f > /from-base
RUN --mount=type=tmpfs,target=/scratch,size=64m touch /scratch/x && echo ok > /tmpfs-ok
RUN --mount=type=secret,id=mysecret,required=false cat /run/secrets/mysecret 2>/dev/null || echo nosecret > /secret.txt
RUN --network=none echo offline > /net
`,
    files: { 'ctx.txt': 'ctx\n' },
  },
  {
    name: 'escape',
    dockerfile: "# escape=`\nFROM localhost:5000/busybox\nENV A=\"x`\"y\"\nRUN echo a `\n    b > /out\nCOPY f1 `\n     /f1\n",
    files: { f1: 'f1\n' },
  },
  {
    name: 'onbuild-child',
    dockerfile: `FROM localhost:5000/busybox AS parent
ONBUILD RUN echo parent-trigger > /trig
FROM parent
RUN echo child
`,
  },
  {
    name: 'target-and-platform',
    dockerfile: `FROM --platform=$BUILDPLATFORM localhost:5000/busybox AS build
ARG TARGETOS TARGETARCH
RUN echo "$TARGETOS/$TARGETARCH" > /target
FROM localhost:5000/busybox AS final
COPY --from=build /target /target
FROM final AS unused
RUN exit 1
`,
    target: 'final',
    platform: 'linux/arm64',
  },
];

/** Writes a case's Dockerfile and files under `dir`. */
export function materialize(c: CorpusCase, dir: string): void {
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'Dockerfile'), c.dockerfile);
  for (const [name, content] of Object.entries(c.files ?? {})) {
    const p = join(dir, name);
    mkdirSync(dirname(p), { recursive: true });
    writeFileSync(p, content);
  }
}
