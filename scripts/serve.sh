#!/usr/bin/env bash
# Run the server on the default model, from a fresh clone: fetch the default encoder for offline
# use (cached outside the clone), build, serve on 127.0.0.1:8080. Extra arguments go to
# `concord serve` (see `concord serve --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
home="${HOME:-/root}"
command -v cargo >/dev/null || export PATH="$home/.cargo/bin:$PATH"
export CONCORD_HOME="${CONCORD_HOME:-$home/.cache/concord}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CONCORD_HOME/target}"
./scripts/fetch-models.sh
exec cargo run --release --locked --bin concord -- serve "$@"
