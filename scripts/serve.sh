#!/usr/bin/env bash
# Run the server on the default model, from a fresh clone: fetch the default encoder for offline
# use (cached outside the clone), build, serve on 127.0.0.1:8080. Extra arguments go to
# `concord serve` (see `concord serve --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
./scripts/fetch-models.sh
exec cargo run --release --locked --bin concord -- serve "$@"
