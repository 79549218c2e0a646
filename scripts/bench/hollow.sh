#!/usr/bin/env bash
# Benchmark `hollow` (targets P3, P4, P6): one root, 10 clusters × 1,000 hollow workers (real
# registration and MQTT, fake runtime), 10,000 instances requested at once. Reports instances/s
# reaching RUNNING at the root, placement decision p50/p99 at both tiers and the RSS of root and
# clusters, and the instance-request rate as a ratio to the same root's GET /api/clusters rate
# (target >= 0.6); prints a table and writes bench/results/hollow-<time>.json. Exits non-zero if it
# cannot run or not every instance reaches RUNNING.
#
#   scripts/bench/hollow.sh                   # full scale
#   scripts/bench/hollow.sh --scale quick     # 2 clusters × 50 workers, 500 instances
#   scripts/bench/hollow.sh --clusters 2 --workers-per-cluster 20 --instances 200
#   scripts/bench/hollow.sh --per-request 10   # ?count=10: ten instances per request
#   scripts/bench/hollow.sh --help
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/oakestra-target}"
# Two invocations on purpose: built together, Cargo would unify oak-runtime's features and
# compile the `oakestra` under test with the fake runtime (`test-util`) that only oak-bench enables.
cargo build --release -p oakestra >&2
cargo build --release -p oak-bench >&2
exec "$CARGO_TARGET_DIR/release/oak-bench" hollow --oakestra "$CARGO_TARGET_DIR/release/oakestra" "$@"
