#!/usr/bin/env bash
# Installs what loom needs on Debian 12: the Debian packages its daemon and tests use, then the npm
# packages (native ones are built; their install scripts are allowed in package.json), then builds
# dist/. Safe to run again. Must run as root (apt-get).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

packages=(
  runc                 # the OCI runtime exec steps run in
  qemu-user-static     # foreign-platform steps (linux/arm64 on amd64)
  busybox-static       # the test base image
  docker-registry      # a real OCI registry for tests and the bench
  skopeo               # inspecting images and archives in tests
  git                  # git:// sources
  iproute2 iptables    # network namespaces for step networking
  python3              # file metadata calls Node lacks (xattrs, ns times, mknod)
  attr                 # getfattr/setfattr for xattrs through filesync
  openssh-client       # ssh-agent for the ssh forwarding tests
  gcc make libc6-dev   # building runc-shim
  tar gzip ca-certificates
  bzip2 xz-utils zstd   # ADD auto-extracts .tar.bz2, .tar.xz and .tar.zst archives, as upstream
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# `npm install` rather than `npm ci`: with this machine's npm settings the lock file carries no entries
# for other platforms' optional binaries, which `npm ci` refuses; install still follows the lock.
npm install --no-audit --no-fund
npm run build
# The C shim between the daemon and runc (the daemon would also compile it on first use).
make -s -C runc-shim
