#!/usr/bin/env bash
# Sets up a fresh Debian machine and runs a one-device Oakestra (1-DOC) in the foreground.
# Data lives in ${OAKESTRA_DATA_DIR:-/var/lib/oakestra}; the API listens on port 10000.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/install-deps.sh
cargo build --release --locked -p oakestra
bin="${CARGO_TARGET_DIR:-target}/release/oakestra"
data="${OAKESTRA_DATA_DIR:-/var/lib/oakestra}"
echo "starting root, cluster and worker (1-DOC) on http://localhost:10000 (API docs at /api/docs), data in $data" >&2
exec "$bin" up --data-dir "$data" "$@"
