#!/usr/bin/env bash
# Sets loom up on a fresh Debian 12 machine and starts the daemon with upstream's defaults:
# state in /var/lib/buildkit, listening on unix:///run/buildkit/buildkitd.sock. Extra arguments go
# to buildkitd (e.g. --addr tcp://127.0.0.1:1234 --debug).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
./scripts/install-deps.sh
exec node bin/buildkitd.js "$@"
