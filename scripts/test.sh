#!/usr/bin/env bash
# The whole test suite, from a fresh clone: fetch the default encoder (cached outside the clone),
# then build and run every test. The build is cached in ~/.cache/concord/target.
set -euo pipefail
cd "$(dirname "$0")/.."
home="${HOME:-/root}"
command -v cargo >/dev/null || export PATH="$home/.cargo/bin:$PATH"
export CONCORD_HOME="${CONCORD_HOME:-$home/.cache/concord}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CONCORD_HOME/target}"
./scripts/fetch-models.sh
cargo test --release --locked --no-fail-fast "$@"
