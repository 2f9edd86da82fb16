#!/usr/bin/env bash
# Interoperability tests: kcat, confluent-kafka, kafka-python, kafkajs, sarama and kafka-go
# against a real `runnel`, and an aioquic client over its QUIC listener (tests/interop). Installs what it needs itself (Debian packages, a
# Python venv with the pinned clients from tests/interop/requirements.txt, kafkajs from npm),
# builds the Go client programs and runnel, runs pytest.
# Safe to run again: installs already done are skipped. Extra arguments go to pytest,
# e.g. `./scripts/interop.sh -k kcat -x`.
#
# Environment: RUNNEL_INTEROP_VENV  where the venv lives (default: a cache directory keyed
#                                   by the requirements and the Python version)
#              RUNNEL_BIN           set here to the freshly built binary for the tests
#              RUNNEL_INTEROP_GO_BIN  set here to the directory of the built Go client programs
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
start=$SECONDS

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

# --- system packages ------------------------------------------------------------------------
need_apt=()
command -v kcat >/dev/null || need_apt+=(kcat)
command -v openssl >/dev/null || need_apt+=(openssl)
command -v python3 >/dev/null || need_apt+=(python3)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need_apt+=(python3-venv)
# Building runnel compiles librdkafka (rdkafka crate): C compiler, make, zlib, pkg-config.
command -v cc >/dev/null || need_apt+=(gcc)
command -v make >/dev/null || need_apt+=(make)
[ -e /usr/include/zlib.h ] || need_apt+=(zlib1g-dev)
[ -e /usr/include/openssl/ssl.h ] || need_apt+=(libssl-dev)
command -v pkg-config >/dev/null || need_apt+=(pkg-config)
# OAUTHBEARER's OIDC token fetching in librdkafka (the runnel client commands' login test).
pkg-config --exists libcurl 2>/dev/null || need_apt+=(libcurl4-openssl-dev)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "interop: installing ${need_apt[*]}"
  as_root apt-get update -qq
  as_root apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

# --- Python clients ---------------------------------------------------------------------------
req=tests/interop/requirements.txt
key=$( { python3 -c 'import sys; print(sys.version)'; cat "$req"; } | sha256sum | cut -c1-16)
venv=${RUNNEL_INTEROP_VENV:-${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/runnel-interop/venv-$key}
if [ "$(cat "$venv/.runnel-installed" 2>/dev/null)" != "$key" ]; then
  echo "interop: creating $venv"
  if [ -d "$venv" ] && [ -n "$(ls -A "$venv")" ] && [ ! -e "$venv/pyvenv.cfg" ]; then
    echo "interop: $venv exists and is not a venv; not touching it" >&2
    exit 1
  fi
  python3 -m venv --clear "$venv"
  # PIP_FIND_LINKS (local wheels), when set, is honoured by pip itself.
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --prefer-binary -r "$req"
  echo "$key" > "$venv/.runnel-installed"
fi
"$venv/bin/python" - <<'EOF'
import confluent_kafka, kafka
print(f"interop: confluent-kafka {confluent_kafka.__version__} "
      f"(librdkafka {confluent_kafka.libversion()[0]}), kafka-python {kafka.__version__}")
EOF
{ kcat -V 2>&1 | grep -m1 "^Version" || true; } | sed "s/^/interop: kcat /"

# --- kafkajs (Node.js) ------------------------------------------------------------------------
KAFKAJS_VERSION=2.2.4
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "interop: installing nodejs npm"
  as_root apt-get update -qq
  as_root apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi
KAFKAJS_DIR=${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/runnel-interop/kafkajs-$KAFKAJS_VERSION
if [ ! -e "$KAFKAJS_DIR/node_modules/kafkajs/package.json" ]; then
  echo "interop: installing kafkajs $KAFKAJS_VERSION"
  mkdir -p "$KAFKAJS_DIR"
  npm install --silent --no-audit --no-fund --prefix "$KAFKAJS_DIR" "kafkajs@$KAFKAJS_VERSION" >/dev/null
fi
export KAFKAJS_DIR
echo "interop: kafkajs $KAFKAJS_VERSION, node $(node --version)"

# --- Go clients: sarama and segmentio/kafka-go, from Debian -----------------------------------
# Debian's Go library packages put their sources under /usr/share/gocode/src, so the programs
# in tests/interop/go build offline in GOPATH mode (no module proxy). CGO off: sarama then has
# no zstd (its C binding), which the tests do not use.
go_debs=(golang-go golang-github-shopify-sarama-dev golang-github-segmentio-kafka-go-dev)
need_go=()
for p in "${go_debs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || need_go+=("$p")
done
if [ ${#need_go[@]} -gt 0 ]; then
  echo "interop: installing ${need_go[*]}"
  as_root apt-get update -qq
  as_root apt-get install -y -qq --no-install-recommends "${need_go[@]}" >/dev/null
fi
go_cache=${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/runnel-interop
RUNNEL_INTEROP_GO_BIN=$go_cache/go-bin
mkdir -p "$RUNNEL_INTEROP_GO_BIN"
for prog in sarama_roundtrip kafkago_roundtrip; do
  # Built every run (Go's build cache makes a rebuild take about a second); a failure stops
  # the script here.
  (cd "tests/interop/go/$prog" &&
    GO111MODULE=off GOPATH=/usr/share/gocode GOFLAGS= GOPROXY=off CGO_ENABLED=0 \
      GOCACHE="$go_cache/go-build" go build -o "$RUNNEL_INTEROP_GO_BIN/$prog" .)
done
export RUNNEL_INTEROP_GO_BIN
echo "interop: $(go version | cut -d' ' -f3), $(dpkg-query -W -f='sarama ${Version}, kafka-go ' \
  golang-github-shopify-sarama-dev)$(dpkg-query -W -f='${Version}' golang-github-segmentio-kafka-go-dev)"

# --- the broker -------------------------------------------------------------------------------
cargo build -p runnel --locked
target_dir=${CARGO_TARGET_DIR:-target}
RUNNEL_BIN=$(cd "$target_dir/debug" && pwd)/runnel
export RUNNEL_BIN

# --- the tests --------------------------------------------------------------------------------
echo "interop: set-up took $((SECONDS - start))s; running tests against $RUNNEL_BIN"
# Put the venv first on PATH so that `python3` is its interpreter. pytest's summary line
# is the last thing printed; its exit status is the script's.
PATH="$venv/bin:$PATH" exec python3 -m pytest tests/interop -q "$@"
