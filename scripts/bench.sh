#!/usr/bin/env bash
# Runs `runnel bench` against a fresh release broker on this machine, RUNS times (default 3),
# and appends one table row per run to BENCHMARKS.md (or the file in $OUT).
# Point the same load at another broker with: runnel bench --bootstrap HOST:PORT
#
# `./scripts/bench.sh devices [ARGS]` runs the device benchmark instead (`runnel bench devices`,
# which starts its own broker as a child process to measure its memory): 1,000 QUIC devices by
# default; add --tcp for the same load from librdkafka producers over Kafka TCP.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
OUT=${OUT:-BENCHMARKS.md}
bin="${CARGO_TARGET_DIR:-target}/release/runnel"
cargo build --release -p runnel --locked
if [ "${1:-}" = devices ]; then
  shift
  for _ in $(seq "$RUNS"); do
    uptime
    "$bin" bench devices --markdown "$OUT" "$@"
  done
  exit 0
fi
data=$(mktemp -d)
trap 'kill $broker 2>/dev/null || true; rm -rf "$data"' EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
RUST_LOG=warn RUNNEL_BROKER__DATA_DIR="$data" RUNNEL_LISTENERS__KAFKA__ADDRESS="127.0.0.1:$port" \
  RUNNEL_LISTENERS__QUIC__ENABLED=false RUNNEL_LISTENERS__ADMIN__ENABLED=false \
  "$bin" serve &
broker=$!
for _ in $(seq 50); do (echo > /dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
for _ in $(seq "$RUNS"); do
  "$bin" bench --bootstrap "127.0.0.1:$port" --markdown "$OUT" "$@"
done
