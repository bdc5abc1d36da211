#!/usr/bin/env bash
# The whole test suite, from a fresh clone: fetch the default encoder (cached outside the clone),
# then build and run every test. The build is cached in ~/.cache/concord/target.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
./scripts/fetch-models.sh
cargo test --release --locked --no-fail-fast "$@"
