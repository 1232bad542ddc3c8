#!/usr/bin/env bash
# Serving benchmark (docs/PERFORMANCE.md, "Serving"): starts `epserve serve` on the bench-preset
# checkpoint on a free loopback port and drives it with bench/serve_load.cjs: output tokens/s, TTFT
# and TPOT (p50/p99) at concurrency 1, 8, 32; then TTFT of a ~2,000-token prompt with a cold cache,
# a RAM hit, and (after a restart) a disk hit.
# usage: scripts/bench-serve.sh [MODEL_DIR] [BUILD_DIR]   (MODEL_DIR made with gen-model if missing)
# env: SERVE_ARGS (more `serve` flags, e.g. "--deployment deploy/demo-pd.toml"), LEVELS (default
# 1,8,32), REQUESTS, MAX_TOKENS, PROMPT_WORDS, PREFIX=0 to skip the long-prompt part.
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-${EPSERVE_CACHE:-$HOME/.cache/epserve}/models/bench}
bin=${2:-build}/epserve
[ -f "$model/config.json" ] || "$bin" gen-model --preset bench --seed 7 --out "$model" >&2
work=$(mktemp -d)
trap 'kill $pid 2>/dev/null || true; rm -rf "$work"' EXIT
start() {
  rm -f "$work/port"
  "$bin" serve --model "$model" --served-model-name bench --port 0 --port-file "$work/port" \
    --kv-disk-dir "$work/kv" --ledger "$work/ledger.jsonl" ${SERVE_ARGS:-} "$@" 2>>"$work/server.log" &
  pid=$!
  for _ in $(seq 3000); do [ -f "$work/port" ] && break; kill -0 $pid 2>/dev/null || { cat "$work/server.log" >&2; exit 1; }; sleep 0.1; done
  url=http://127.0.0.1:$(cat "$work/port")
}
stop() { kill -TERM $pid; wait $pid; }
start
node bench/serve_load.cjs "$url" load ${LEVELS:-1,8,32} ${REQUESTS:-32} ${MAX_TOKENS:-64} ${PROMPT_WORDS:-200}
if [ "${PREFIX:-1}" = 0 ]; then stop; exit 0; fi
node bench/serve_load.cjs "$url" prefix 1000 cold
node bench/serve_load.cjs "$url" prefix 1000 ram_hit
stop
start
node bench/serve_load.cjs "$url" prefix 1000 disk_hit
stop
