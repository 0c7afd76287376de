# loom as the image behind buildx's docker-container driver: buildx runs it privileged with its
# state in /var/lib/buildkit, then execs `buildctl debug workers` and `buildctl dial-stdio` in it.
#   docker build -t loom .
#   docker buildx create --name loom --driver docker-container --driver-opt image=loom
FROM node:20-bookworm-slim AS build
RUN apt-get update && apt-get install -y --no-install-recommends python3 make g++ gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/loom
COPY package.json package-lock.json tsconfig.json ./
RUN npm ci --no-audit --no-fund --ignore-scripts && npm rebuild better-sqlite3 node-pty
COPY proto ./proto
COPY src ./src
COPY bin ./bin
COPY runc-shim ./runc-shim
COPY scripts/bundle-cli.mjs ./scripts/
RUN npm run build && (test ! -f runc-shim/Makefile || make -C runc-shim) && npm prune --omit=dev

FROM node:20-bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends \
      runc qemu-user-static git ca-certificates iproute2 iptables python3 attr openssh-client \
      bzip2 xz-utils zstd \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/loom
COPY --from=build /opt/loom /opt/loom
RUN ln -s /opt/loom/bin/buildkitd.js /usr/local/bin/buildkitd \
    && ln -s /opt/loom/bin/buildctl /usr/local/bin/buildctl
VOLUME /var/lib/buildkit
ENTRYPOINT ["buildkitd"]
