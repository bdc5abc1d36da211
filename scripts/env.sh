# Sourced by the other scripts: finds cargo and keeps builds and models in Concord's cache
# outside the clone (~/.cache/concord unless CONCORD_HOME says otherwise).
home="${HOME:-/root}"
command -v cargo >/dev/null || export PATH="$home/.cargo/bin:$PATH"
export CONCORD_HOME="${CONCORD_HOME:-$home/.cache/concord}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CONCORD_HOME/target}"
# Clones share that target folder; naming this one makes cargo rebuild binaries built in another
# clone, whose compiled-in models path points there (build.rs).
export CONCORD_SOURCE_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# The shared data sets live in ../shared beside the repository. A clone made elsewhere from a
# local checkout (as CI may do) finds them beside the repository it was cloned from.
if [[ -z "${CONCORD_SHARED_DIR:-}" && ! -d ../shared ]]; then
  origin="$(git config --get remote.origin.url 2>/dev/null || true)"
  if [[ -n "$origin" && -d "$origin/../shared" ]]; then
    export CONCORD_SHARED_DIR="$(cd "$origin/../shared" && pwd)"
  fi
fi
# Fetches the default encoder and builds the release binary, quietly; `bin` names the binary.
build_concord() {
  ./scripts/fetch-models.sh >/dev/null
  cargo build --release --locked --bin concord 2>/dev/null
  bin="$CARGO_TARGET_DIR/release/concord"
}
