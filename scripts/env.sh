# Sourced by the other scripts: finds cargo and keeps builds and models in Concord's cache
# outside the clone (~/.cache/concord unless CONCORD_HOME says otherwise).
home="${HOME:-/root}"
command -v cargo >/dev/null || export PATH="$home/.cargo/bin:$PATH"
export CONCORD_HOME="${CONCORD_HOME:-$home/.cache/concord}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CONCORD_HOME/target}"
