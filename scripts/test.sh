#!/usr/bin/env bash
# The one test command (see README.md): installs what the tests need beyond the Rust
# toolchain, then runs the workspace's tests. Safe to run again; installs are skipped when
# already present.
set -euo pipefail
cd "$(dirname "$0")/.."

# librdkafka (built from source by the rdkafka crate) needs a C compiler, make, and the zlib,
# OpenSSL and libcurl headers (TLS, SASL SCRAM, and OAUTHBEARER's OIDC token fetching for
# federation links and the client commands; without libcurl's headers librdkafka builds
# without OIDC).
need_apt=()
command -v cc >/dev/null || need_apt+=(gcc)
command -v make >/dev/null || need_apt+=(make)
[ -e /usr/include/zlib.h ] || need_apt+=(zlib1g-dev)
[ -e /usr/include/openssl/ssl.h ] || need_apt+=(libssl-dev)
pkg-config --exists libcurl 2>/dev/null || need_apt+=(libcurl4-openssl-dev)
command -v pkg-config >/dev/null || need_apt+=(pkg-config)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq "${need_apt[@]}"
  else
    sudo apt-get update -qq && sudo apt-get install -y -qq "${need_apt[@]}"
  fi
fi

# The plugin tests (broker/tests/plugins.rs) build plugins/ for wasm32-wasip2. RUSTUP_AUTO_INSTALL
# may be off, so the target is added explicitly (a no-op when installed).
if command -v rustup >/dev/null; then
  rustup target add wasm32-wasip2 >/dev/null
fi

# The guest side (sdk/plugin and the example plugins) is its own workspace: test the SDK's frame
# reader and each plugin's logic on the host.
cargo test --manifest-path plugins/Cargo.toml --locked --workspace
cargo test --manifest-path plugins/Cargo.toml --locked -p runnel-plugin

# Integration tests start several brokers and clients at once; two test binaries at a time is
# what a 2-core machine handles without timing out group rebalances.
cargo test --workspace --locked -- --test-threads=4 "$@"
