#!/usr/bin/env bash
# HTTP load test: N concurrent clients, one sentence per request, against the server with dynamic
# batching on (the defaults) and off (--max-batch-size 1), side by side in one run.
# Prints sentences/s and p50/p95/p99 latency for each. Installs wrk (Debian) when missing.
#
# Usage: scripts/bench-http.sh [--connections 32] [--duration 20] [--sentences FILE] [--sweep]
#   --sweep also measures other batch windows and sizes (used to choose the defaults).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
connections=32; duration=20; sweep=0
sentences="${CONCORD_SHARED_DIR:-../shared}/bench/peers/workload/sentences.txt"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --connections) connections=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    --sentences) sentences=$2; shift 2 ;;
    --sweep) sweep=1; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
[[ -f $sentences ]] || { echo "no sentence file at $sentences" >&2; exit 1; }
if ! command -v wrk >/dev/null; then
  apt-get update -qq && apt-get install -y -qq wrk >/dev/null
fi
build_concord

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

run_case() {
  local name=$1; shift
  local port; port=$(free_port)
  "$bin" serve --host 127.0.0.1 --port "$port" "$@" 2>/dev/null &
  local pid=$!
  trap 'kill $pid 2>/dev/null || true' RETURN
  for _ in $(seq 100); do
    curl -fs "http://127.0.0.1:$port/health" >/dev/null 2>&1 && break
    sleep 0.1
  done
  # Warm-up, then the measured run.
  wrk -t1 -c"$connections" -d3s -s scripts/bench/embed.lua "http://127.0.0.1:$port" -- "$sentences" >/dev/null
  local result
  result=$(wrk -t1 -c"$connections" -d"${duration}s" -s scripts/bench/embed.lua "http://127.0.0.1:$port" -- "$sentences" | tail -n 1)
  echo "{\"case\":\"$name\",\"connections\":$connections,${result#\{}"
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

echo "# $(date -u +%Y-%m-%dT%H:%MZ) $(nproc) cores, load1 $(cut -d' ' -f1 /proc/loadavg)"
run_case batching
run_case no-batching --max-batch-size 1
if [[ $sweep == 1 ]]; then
  for wait in 0 5; do run_case "wait-${wait}ms" --max-batch-wait-ms "$wait"; done
  for size in 8 16 32; do run_case "size-$size" --max-batch-size "$size"; done
fi
