#!/usr/bin/env bash
# Sets up a fresh Debian machine and runs a one-device Oakestra (1-DOC) in the foreground.
# Data lives in ${OAKESTRA_DATA_DIR:-/var/lib/oakestra}; the API listens on port 10000.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/install-deps.sh
cargo build --release --locked -p oakestra
bin="${CARGO_TARGET_DIR:-target}/release/oakestra"
data="${OAKESTRA_DATA_DIR:-/var/lib/oakestra}"
# The cluster channel (50052) and the tunnel (50103) lie in Linux's ephemeral port range: keep
# outgoing connections from taking them, or a start can find its own port "in use".
reserved="$(cat /proc/sys/net/ipv4/ip_local_reserved_ports 2>/dev/null || true)"
for port in 50052 50103; do
  case ",$reserved," in *",$port,"*) ;; *) reserved="${reserved:+$reserved,}$port" ;; esac
done
sysctl -q -w net.ipv4.ip_local_reserved_ports="$reserved" || echo "could not reserve ports 50052 and 50103 (continuing)" >&2
echo "starting root, cluster and worker (1-DOC) on http://localhost:10000 (API docs at /api/docs), data in $data" >&2
exec "$bin" up --data-dir "$data" "$@"
