#!/usr/bin/env bash
# Property-based fuzz of the root's REST API: schemathesis reads /api/openapi.json of a real root
# (no clusters, temporary data dir, loopback ports), sends generated valid and invalid requests
# as Admin, and fails on any 5xx or any status the document does not list for the operation.
# Bounded: about FUZZ_MAX_TIME seconds of fuzzing (default 120), then the verdict. Called by
# scripts/test.sh; needs python3-venv and PyPI the first time (schemathesis goes to $VENV).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=/var/tmp/oakestra-venv
ST_VERSION=4.32.5
MAX_TIME=${FUZZ_MAX_TIME:-120}
BIN="${CARGO_TARGET_DIR:-target}/debug/oakestra"

if ! "$VENV/bin/st" --version 2>/dev/null | grep -q "$ST_VERSION"; then
  echo "fuzz-api: installing schemathesis $ST_VERSION into $VENV" >&2
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$ST_VERSION"
fi
cargo build --locked -p oakestra --quiet

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
API_PORT=$(free_port)
CLUSTER_PORT=$(free_port)
WORK=$(mktemp -d /tmp/oakestra-fuzz.XXXXXX)
PASSWORD="fuzz-$(python3 -c 'import secrets; print(secrets.token_hex(8))')"
ROOT_PID=""
cleanup() {
  if [ -n "$ROOT_PID" ]; then kill "$ROOT_PID" 2>/dev/null || true; wait "$ROOT_PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

"$BIN" root --api-addr 127.0.0.1 --api-port "$API_PORT" --cluster-port "$CLUSTER_PORT" \
  --data-dir "$WORK/root" --admin-password "$PASSWORD" >"$WORK/root.log" 2>&1 &
ROOT_PID=$!
BASE="http://127.0.0.1:$API_PORT"
for _ in $(seq 1 100); do
  curl -sf "$BASE/api/health" >/dev/null && break
  kill -0 "$ROOT_PID" 2>/dev/null || { cat "$WORK/root.log" >&2; echo "fuzz-api: FAILED, the root did not start" >&2; exit 1; }
  sleep 0.1
done
TOKEN=$(curl -sf -H 'content-type: application/json' \
  -d "{\"username\":\"Admin\",\"password\":\"$PASSWORD\"}" "$BASE/api/auth/login" |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["token"])')

echo "fuzz-api: schemathesis $ST_VERSION against $BASE/api/openapi.json for at most ${MAX_TIME} s" >&2
status=0
# From the work dir: schemathesis keeps a cache directory where it runs.
(cd "$WORK" && "$VENV/bin/st" run "$BASE/api/openapi.json" \
  --checks not_a_server_error,status_code_conformance \
  --header "Authorization: Bearer $TOKEN" \
  --phases "${FUZZ_PHASES:-examples,coverage,fuzzing,stateful}" --suppress-health-check too_slow \
  --max-examples 50 --max-time "$MAX_TIME" --workers 2 --request-timeout 10 \
  --no-color --warnings off) || status=$?

if ! kill -0 "$ROOT_PID" 2>/dev/null; then
  tail -n 50 "$WORK/root.log" >&2
  echo "fuzz-api: FAILED, the root died during the run" >&2
  exit 1
fi
if [ "$status" -ne 0 ]; then
  grep -E "ERROR|panicked" "$WORK/root.log" | tail -n 20 >&2 || true
  echo "fuzz-api: FAILED, schemathesis found 5xx answers or undocumented statuses (above)" >&2
  exit "$status"
fi
echo "fuzz-api: passed, no 5xx and no undocumented status" >&2
