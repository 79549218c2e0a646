#!/usr/bin/env bash
# Benchmark `recovery` (target P9): a root, two clusters and four single-worker processes;
# `kill -9` of the worker running an instance (recovery after the clusters' --node-timeout),
# then of the cluster running one (after the root's --cluster-timeout), --runs times each. Prints
# the time from each kill until the root shows the instance RUNNING elsewhere (p50, p99, min,
# max, and beyond the configured timeout against the target) and writes
# bench/results/recovery-<time>.json.
#
#   scripts/bench/recovery.sh
#   scripts/bench/recovery.sh --runs 20 --worker-timeout 3 --cluster-timeout 5 --report-interval 1
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/oakestra-target}"
cargo build --release -p oak-bench -p oakestra >&2
exec "$CARGO_TARGET_DIR/release/oak-bench" recovery "$@"
