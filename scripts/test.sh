#!/usr/bin/env bash
# The one test command (see README.md): installs what the tests need beyond the Rust
# toolchain, then runs the workspace's tests. Safe to run again; installs are skipped when
# already present.
set -euo pipefail
cd "$(dirname "$0")/.."

# librdkafka (built from source by the rdkafka crate) needs a C compiler, make and zlib
# headers; curl and the others are not used.
need_apt=()
command -v cc >/dev/null || need_apt+=(gcc)
command -v make >/dev/null || need_apt+=(make)
[ -e /usr/include/zlib.h ] || need_apt+=(zlib1g-dev)
command -v pkg-config >/dev/null || need_apt+=(pkg-config)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq "${need_apt[@]}"
  else
    sudo apt-get update -qq && sudo apt-get install -y -qq "${need_apt[@]}"
  fi
fi

# Integration tests start several brokers and clients at once; two test binaries at a time is
# what a 2-core machine handles without timing out group rebalances.
cargo test --workspace --locked -- --test-threads=4 "$@"
