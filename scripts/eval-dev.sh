#!/usr/bin/env bash
# Every dev-set metric the README quotes, with the committed models, one line per data set:
# `scripts/eval-dev.sh` for f32, `CONCORD_DTYPE=q8 scripts/eval-dev.sh` for the int8 linear
# layers (every `concord eval` reads CONCORD_DTYPE). About 2.5 minutes on the 2-core machine.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
data="${CONCORD_SHARED_DIR:-../shared}/data"
build_concord
echo "dtype: ${CONCORD_DTYPE:-f32}"
# run TASK FILE METRIC...: prints the file's name and the named fields of the JSON report.
run() {
  local task="$1" file="$2"
  shift 2
  "$bin" eval "$task" --data "$data/$file" --format json |
    python3 -c "import json,sys; r=json.load(sys.stdin); print('$file', ' '.join(f'{k}={r[k]:.4f}' for k in sys.argv[1:]))" "$@"
}
run moderation toxic_spans/dev.jsonl span_f1
run moderation olid/dev.jsonl flag_macro_f1 flag_accuracy flag_auc clean_with_spans
run moderation davidson_hate_offensive/dev.jsonl flag_macro_f1 flag_auc clean_with_spans
run nli sick/dev.jsonl accuracy macro_f1
run nli rte/dev.jsonl accuracy
run factcheck climate_fever/dev.jsonl macro_f1 claim_accuracy
run intent iterater_human/dev.jsonl macro_f1 accuracy
run intent iterater_human/doc_dev.jsonl edits_found
run merge merge/dev.jsonl exact_match_top1 exact_match_top3 mean_similarity clean_rate clean_and_exact
run merge merge/dev_clean.jsonl exact_match_top1 exact_match_top3 mean_similarity clean_rate clean_and_exact
