#!/usr/bin/env bash
# Task throughput on this machine, with the committed models: moderation on 2,000 texts (OLID dev
# plus Toxic Spans trial), NLI on SICK dev, edit intent on IteraTeR dev, and fact-check latency
# (cargo bench --bench factcheck). Run on an otherwise idle machine; figures go to
# benches/RESULTS.md by hand, with the date. `CONCORD_DTYPE=q8 scripts/bench-tasks.sh` measures the
# int8 linear layers instead (every command here reads CONCORD_DTYPE).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
data="${CONCORD_SHARED_DIR:-../shared}/data"
build_concord
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
cat "$data/olid/dev.jsonl" "$data/toxic_spans/dev.jsonl" | head -n 2000 > "$scratch/moderation.jsonl"
metric() { python3 -c "import json,sys; r=json.load(sys.stdin); print(f\"$1: {r['$2']:.1f} ($3)\")"; }
"$bin" eval moderation --data "$scratch/moderation.jsonl" --format json 2>/dev/null | metric "moderation" texts_per_s "texts/s, 2,000 texts"
"$bin" eval nli --data "$data/sick/dev.jsonl" --format json 2>/dev/null | metric "nli" pairs_per_s "pairs/s, SICK dev"
"$bin" eval intent --data "$data/iterater_human/dev.jsonl" --format json 2>/dev/null | metric "intent" edits_per_s "edits/s, IteraTeR dev"
cargo bench --locked --bench factcheck 2>/dev/null | grep -v '^$'
