#!/usr/bin/env bash
# Benchmark `placement` (target P3): decision time of the cluster scheduler among 1,000 workers
# and of the root scheduler among 100 clusters with outstanding reservations, in one quiet
# process, against one pass over the same candidates. Prints a table and writes
# bench/results/placement-<time>.json.
#
#   scripts/bench/placement.sh
#   scripts/bench/placement.sh --nodes 5000 --clusters 500 --decisions 5000
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/oakestra-target}"
cargo build --release -p oak-bench >&2
exec "$CARGO_TARGET_DIR/release/oak-bench" placement "$@"
