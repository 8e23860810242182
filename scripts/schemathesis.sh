#!/usr/bin/env bash
# Fuzzes the running API against its own OpenAPI document with schemathesis (PyPI), every check
# on (`--checks all`, positive and negative data, authentication): any failure fails the script.
#
# It installs schemathesis into target/schemathesis-venv if missing (pinned below), builds the
# binary, starts `bdjobs all` on a free loopback port against a throwaway database, broker
# namespace and asset folder, creates an API key for each of two tenants, runs schemathesis, and
# removes everything it made, whatever happens. Needs Postgres and RabbitMQ on loopback (as
# `.ci/run` provides) and python3. Extra arguments go to `schemathesis run` (e.g. --max-examples 5).
set -euo pipefail
cd "$(dirname "$0")/.."

SCHEMATHESIS_VERSION=${SCHEMATHESIS_VERSION:-4.32.5}
VENV=target/schemathesis-venv
log() { printf '==> %s\n' "$*"; }

if ! "$VENV/bin/schemathesis" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
  log "installing schemathesis $SCHEMATHESIS_VERSION into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi

cargo build --locked --quiet --bin bdjobs
BIN=target/debug/bdjobs

RUN_ID="st_$(date +%s)_$$"
WORK=$(mktemp -d)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export DATABASE_URL="postgres://postgres@127.0.0.1:5432/bdjobs_${RUN_ID}"
export AMQP_URL="amqp://guest:guest@127.0.0.1:5672/%2f"
export BDJOBS_NAMESPACE="bdjobs_${RUN_ID}"
export BDJOBS_LISTEN="127.0.0.1:${PORT}"
export BDJOBS_ASSETS="fs://${WORK}/assets"
# The fuzzer sends far more than one client should: lift the per-key rate limit for it (429 is
# documented and exercised by the integration tests).
export BDJOBS_RATE_LIMIT_PER_SEC=100000 BDJOBS_RATE_LIMIT_BURST=100000
# An event stream lasts until its job ends; should a job stall (the broker restarting under the
# run), close streams after a while so the fuzzer never waits on one forever.
export BDJOBS_EVENT_STREAM_MAX_SECS=20
export RUST_LOG=${RUST_LOG:-warn}
unset BDJOBS_API_KEY

SERVER_PID=
cleanup() {
  if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
  for q in jobs projector dead; do
    rabbitmqctl -q delete_queue "${BDJOBS_NAMESPACE}.$q" >/dev/null 2>&1 || true
  done
  psql -q -h 127.0.0.1 -U postgres -d postgres \
    -c "DROP DATABASE IF EXISTS \"bdjobs_${RUN_ID}\" WITH (FORCE)" >/dev/null 2>&1 || true
  cp "$WORK/server.log" target/schemathesis-server.log 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

"$BIN" migrate 2>/dev/null
KEY=$("$BIN" keys create --tenant schemathesis 2>/dev/null | tail -n1)
"$BIN" all 2>"$WORK/server.log" &
SERVER_PID=$!
BASE="http://127.0.0.1:${PORT}"
for _ in $(seq 100); do
  curl -fsS --noproxy '*' "$BASE/readyz" >/dev/null 2>&1 && break
  sleep 0.2
done
curl -fsS --noproxy '*' "$BASE/readyz" >/dev/null || { cat "$WORK/server.log"; exit 1; }

log "schemathesis $("$VENV/bin/schemathesis" --version | awk '{print $NF}') against $BASE/api/v1/openapi.json"
status=0
# A hard bound on the whole run, whatever happens to the services underneath.
NO_PROXY='*' timeout "${SCHEMATHESIS_TIMEOUT_SECS:-1200}" "$VENV/bin/schemathesis" --config-file scripts/schemathesis.toml run "$BASE/api/v1/openapi.json" \
  --url "$BASE" \
  --checks all \
  --mode all \
  --header "Authorization: Bearer ${KEY}" \
  --request-timeout 30 \
  --seed "${SCHEMATHESIS_SEED:-1}" \
  --generation-database none \
  --no-color \
  "$@" || status=$?
if [ "$status" -ne 0 ]; then
  log "schemathesis failed ($status); the server's errors (whole log: target/schemathesis-server.log):"
  grep -E "ERROR|panicked" "$WORK/server.log" | tail -n 20 || true
fi
exit "$status"
