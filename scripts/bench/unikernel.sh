#!/usr/bin/env bash
# Benchmark `unikernel` (target P11): root, cluster and a worker with `-u` (QEMU, TCG) as
# processes on this machine; the test unikernel (Debian's cloud kernel + busybox initramfs
# serving HTTP) deployed 20 × with its kernel archive cached (one warm-up deploy first):
# request → RUNNING at the root, → console marker, → first HTTP answer from the guest, each
# followed by an undeploy; against the worker's own QEMU command line started by hand in the
# same run. Then the worker's and the QEMU processes' RSS with 5 VMs running.
# Prints a table, writes bench/results/unikernel-<time>.json. Needs root and
# qemu-system-x86_64 on an amd64 host. Exits non-zero if it cannot run.
#
#   scripts/bench/unikernel.sh               # 20 runs, 5 VMs
#   scripts/bench/unikernel.sh --runs 5 --vms 3
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/oakestra-target}"
# Two invocations on purpose (see hollow.sh): the measured `oakestra` must not get test features.
cargo build --release -p oakestra >&2
cargo build --release -p oak-bench >&2
exec "$CARGO_TARGET_DIR/release/oak-bench" unikernel --oakestra "$CARGO_TARGET_DIR/release/oakestra" "$@"
