#!/usr/bin/env bash
# Runs `runnel bench` against a fresh release broker on this machine, RUNS times (default 3),
# and appends one table row per run to BENCHMARKS.md (or the file in $OUT).
# Point the same load at another broker with: runnel bench --bootstrap HOST:PORT
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
OUT=${OUT:-BENCHMARKS.md}
cargo build --release -p runnel --locked
data=$(mktemp -d)
trap 'kill $broker 2>/dev/null || true; rm -rf "$data"' EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
RUST_LOG=warn RUNNEL_BROKER__DATA_DIR="$data" RUNNEL_LISTENERS__KAFKA__ADDRESS="127.0.0.1:$port" \
  RUNNEL_LISTENERS__QUIC__ENABLED=false RUNNEL_LISTENERS__ADMIN__ENABLED=false \
  ./target/release/runnel serve &
broker=$!
for _ in $(seq 50); do (echo > /dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
for _ in $(seq "$RUNS"); do
  ./target/release/runnel bench --bootstrap "127.0.0.1:$port" --markdown "$OUT" "$@"
done
