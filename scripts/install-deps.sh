#!/usr/bin/env bash
# Installs what building and testing oakestra needs on Debian/Ubuntu. Idempotent.
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

# System packages: a C toolchain for SQLite (bundled) and a few -sys crates; protoc for
# containerd's gRPC API; Mosquitto, the external MQTT broker and the real MQTT peers the tests
# use; containerd and runc, the workers' container runtime; and for the end-to-end tests a
# local OCI registry, skopeo to push to it, busybox-static to build test images from, and
# iproute2/iptables for network namespaces; python3-venv for the API fuzz's schemathesis;
# chromium and chromium-driver for the dashboard's browser test; qemu-system-x86 for unikernel
# workers (`-u`) and their end-to-end test, which also downloads (not installs) Debian's
# linux-image-cloud-amd64 as its test kernel; prometheus for `promtool` (every tier's /metrics
# and the shipped monitoring configuration are checked with it) and the monitoring e2e test.
PACKAGES=(build-essential pkg-config ca-certificates curl protobuf-compiler mosquitto mosquitto-clients
  containerd runc docker-registry skopeo busybox-static iproute2 iptables python3-venv
  chromium chromium-driver qemu-system-x86 prometheus)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ] || [ "${CI:-}" = "true" ]; then
  $SUDO apt-get update
fi
if [ "${#missing[@]}" -gt 0 ]; then
  apt_install() { DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends "$@"; }
  if ! apt_install "${missing[@]}"; then
    # A package backported onto the machine (seen: qemu-utils from bookworm-backports) can clash
    # with the release's own packages (qemu-system-x86): prefer the release's versions.
    codename="$(. /etc/os-release && echo "${VERSION_CODENAME:-}")"
    [ -n "$codename" ] || { echo "install-deps: apt-get install failed" >&2; exit 1; }
    echo "install-deps: retrying with the packages of $codename (-t $codename)" >&2
    apt_install -t "$codename" "${missing[@]}"
  fi
fi

# Rust toolchain (1.88 or newer). Debian's cargo is too old, so rustup is used when none is found.
if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
  export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "installing the Rust toolchain with rustup" >&2
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --component clippy,rustfmt
  export PATH="$HOME/.cargo/bin:$PATH"
fi
cargo --version >&2
