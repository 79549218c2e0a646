#!/usr/bin/env bash
# Benchmark `root-idle`: RSS and CPU of an idle `oakestra root` (release build), fresh and after
# serving a small workload (login, one application with two services, list calls).
# Prints a table and writes bench/results/root-idle-<time>.json. Exits non-zero if it cannot run.
set -euo pipefail
cd "$(dirname "$0")/../.."
target="${CARGO_TARGET_DIR:-target}"
cargo build --release --locked -p oakestra >&2
bin="$target/release/oakestra"
dir=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$bin" root --api-addr 127.0.0.1 --api-port "$port" --data-dir "$dir/root" --admin-password bench-password 2>"$dir/root.log" &
pid=$!
trap 'kill $pid 2>/dev/null || true; rm -rf "$dir"' EXIT
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/api/health" >/dev/null && break; sleep 0.1; done
url="http://127.0.0.1:$port"

rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$pid/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
idle_cpu_percent() { # CPU % of one core over $1 seconds
  local t0 t1 hz; hz=$(getconf CLK_TCK); t0=$(cpu_ticks); sleep "$1"; t1=$(cpu_ticks)
  python3 -c "print(round(100.0 * ($t1 - $t0) / $hz / $1, 3))"
}

sleep 2
rss_fresh=$(rss_kb); cpu_fresh=$(idle_cpu_percent 10)
token=$(curl -sf "$url/api/auth/login" -d '{"username":"Admin","password":"bench-password"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
curl -sf -H "Authorization: Bearer $token" "$url/api/application/" -d @examples/sla/clientsrvr.json >/dev/null
for _ in $(seq 200); do curl -sf -H "Authorization: Bearer $token" "$url/api/services/" >/dev/null; done
sleep 2
rss_used=$(rss_kb); cpu_used=$(idle_cpu_percent 10)

printf '%-28s %10s %12s\n' "state" "RSS (MB)" "CPU (% core)"
printf '%-28s %10.1f %12s\n' "fresh, idle" "$(awk "BEGIN{print $rss_fresh/1024}")" "$cpu_fresh"
printf '%-28s %10.1f %12s\n' "after 200 requests, idle" "$(awk "BEGIN{print $rss_used/1024}")" "$cpu_used"
echo "target: <= 20 MB idle RSS (issue #2)"

mkdir -p bench/results
out="bench/results/root-idle-$(date -u +%Y%m%dT%H%M%SZ).json"
cat > "$out" <<JSON
{"benchmark": "root-idle", "commit": "$(git rev-parse HEAD)", "machine": "$(uname -srm), $(nproc) cores",
 "samples": {"fresh": {"rss_kb": $rss_fresh, "cpu_percent": $cpu_fresh},
             "after_requests": {"rss_kb": $rss_used, "cpu_percent": $cpu_used}},
 "target_rss_mb": 20}
JSON
echo "wrote $out" >&2
