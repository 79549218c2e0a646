#!/usr/bin/env bash
# Sets up a fresh Debian machine and runs every check CI runs: format, lints, all tests, and a
# bounded fuzz of the REST API against its OpenAPI document. The end-to-end tests need root
# (network namespaces, iptables, containerd, TUN devices); run as another user they would only
# skip, so this refuses to start instead.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
  echo "scripts/test.sh: run as root (sudo ./scripts/test.sh): the end-to-end tests create network" >&2
  echo "namespaces, iptables rules and containers, and under CI=true a skipped test is a failure" >&2
  exit 1
fi
source scripts/install-deps.sh
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
scripts/fuzz-api.sh
