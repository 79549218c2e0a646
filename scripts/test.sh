#!/usr/bin/env bash
# Sets up a fresh Debian machine and runs every check CI runs: format, lints, all tests, and a
# bounded fuzz of the REST API against its OpenAPI document.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/install-deps.sh
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
scripts/fuzz-api.sh
