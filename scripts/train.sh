#!/usr/bin/env bash
# Reproduce one of Concord's trained models from ../shared/data on 2 CPU cores (moderation about
# 30 minutes, nli about 100, intent about 5): `scripts/train.sh moderation` writes models/moderation,
# `scripts/train.sh nli` models/nli (its cross-encoder, then its pair head), `scripts/train.sh
# intent` models/intent; `scripts/train.sh nli-pair` refits only the NLI pair head over the
# cross-encoder already in the folder. Extra arguments go to `concord train TASK` (e.g. --out
# /tmp/x to leave the committed model alone); for nli only --out reaches the pair head's step.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
data="${CONCORD_SHARED_DIR:-../shared}/data"
task="${1:-}"
shift || true
nli_data=(
  --data "$data/sick/train.jsonl"
  --data "$data/rte/train.jsonl"
  --data "$data/climate_fever/train.jsonl"
  --dev "$data/sick/dev.jsonl"
  --dev "$data/rte/dev.jsonl"
  --dev "$data/climate_fever/dev.jsonl"
)
case "$task" in
  moderation)
    args=(
      --data "$data/olid/train.jsonl"
      --data "$data/toxic_spans/train.jsonl"
      --data "$data/davidson_hate_offensive/train.jsonl@4000"
      --dev "$data/olid/dev.jsonl"
      --dev "$data/toxic_spans/dev.jsonl"
      --dev "$data/davidson_hate_offensive/dev.jsonl"
      --layers 2 --epochs 3 --span-dice 0.5 --seed 13
    ) ;;
  nli)
    args=(
      "${nli_data[@]}"
      --layers 6 --lora-rank 16 --learning-rate 5e-4 --balance climate_fever --epochs 4 --seed 13
    ) ;;
  nli-pair) args=("${nli_data[@]}" --seed 13) ;;
  intent)
    args=(
      --data "$data/iterater_human/train.jsonl"
      --dev "$data/iterater_human/dev.jsonl"
      --seed 13
    ) ;;
  *) echo "usage: scripts/train.sh moderation|nli|nli-pair|intent [concord train flags]" >&2; exit 2 ;;
esac
./scripts/fetch-models.sh
cargo build --release --locked --bin concord
# Flags given to this script come last and win over the defaults above (e.g. --layers 3).
folder="models/${task%-pair}"
args+=(--out "$folder")
concord="$CARGO_TARGET_DIR/release/concord"
if [ "$task" != nli ]; then
  exec "$concord" train "$task" "${args[@]}" "$@"
fi
"$concord" train nli "${args[@]}" "$@"
out="$folder"
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out="$2"; shift 2 ;;
    --out=*) out="${1#--out=}"; shift ;;
    *) shift ;;
  esac
done
exec "$0" nli-pair --out "$out"
