#!/usr/bin/env bash
# Benchmark `deploy` (targets P1, P5): root, cluster and worker as processes on this machine with
# real containerd and a local registry; 50 × (request instance → RUNNING at the root → undeploy)
# of a warm image against `ctr run --rm` of the same image in the same run, then the worker's idle
# RSS and CPU with 0 and 20 instances. Prints a table, writes bench/results/deploy-<time>.json.
# Needs root. Exits non-zero if it cannot run.
#
#   scripts/bench/deploy.sh                  # 50 deploys
#   scripts/bench/deploy.sh --deploys 10 --idle-seconds 5
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/oakestra-target}"
# Two invocations on purpose (see hollow.sh): the measured `oakestra` must not get test features.
cargo build --release -p oakestra >&2
cargo build --release -p oak-bench >&2
exec "$CARGO_TARGET_DIR/release/oak-bench" deploy --oakestra "$CARGO_TARGET_DIR/release/oakestra" "$@"
