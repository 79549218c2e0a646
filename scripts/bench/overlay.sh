#!/usr/bin/env bash
# Benchmark `overlay` (targets P7, P8): root, cluster and four workers as processes in a lab of
# network namespaces, with a containerd of its own and a registry on the lab bridge. A client
# instance on wa and a server instance on wb (encrypted tunnel), and the same pair on pa/pb
# (workers with --insecure-plaintext-overlay); TCP bulk throughput (median of runs) and 64-byte
# request/response round trips (p50, p99) from each client's namespace to its server's
# round-robin service IP against the wa/wb pair routed natively (kernel routing through the
# lab), all measured in the same run. Prints a table, writes bench/results/overlay-<time>.json.
# Needs root. Exits non-zero if it cannot run.
#
#   scripts/bench/overlay.sh                  # 3 × 5 s bulk, 2,000 round trips per path
#   scripts/bench/overlay.sh --seconds 2 --runs 1 --round-trips 500
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/oakestra-target}"
# Two invocations on purpose (see hollow.sh): the measured `oakestra` must not get test features.
cargo build --release -p oakestra >&2
cargo build --release -p oak-bench >&2
exec "$CARGO_TARGET_DIR/release/oak-bench" overlay --oakestra "$CARGO_TARGET_DIR/release/oakestra" "$@"
