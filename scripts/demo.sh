#!/usr/bin/env bash
# The main job on a fresh machine: build, generate the `bench`-preset checkpoint (FP8, DeepSeek-V3
# layout, real tokenizer), generate from it offline, serve it over the OpenAI API the way DeepSeek
# does, disaggregated (deploy/demo-pd.toml: the router, a prefill unit of 2 MPI ranks and a decode
# unit of 2 MPI ranks, experts split over each unit's ranks; the prompt's KV goes from a prefill rank
# straight to a decode rank): a chat request twice (the second hits the prefix cache), a streamed
# completion, 16 requests at concurrency 8, /health and /metrics; then benchmark the engine against
# this machine's measured ceilings.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
bash scripts/fetch-node-deps.sh
bash scripts/build.sh >/dev/null
cache=${EPSERVE_CACHE:-$HOME/.cache/epserve}
model=$cache/models/bench
epserve=./build/epserve
[ -f "$model/config.json" ] || $epserve gen-model --preset bench --seed 1 --expert-skew 1.0 --out "$model"

echo "== offline: epserve run --prompt ... --chat"
$epserve run --model "$model" --prompt "Explain expert parallelism in one sentence." --chat --max-tokens 16 --json

echo "== serving: epserve serve --deployment deploy/demo-pd.toml (router + prefill unit + decode unit, 2 MPI ranks each)"
work=$(mktemp -d)
$epserve serve --model "$model" --deployment deploy/demo-pd.toml --kv-memory-gb 1 --port 0 --port-file "$work/port" \
  --kv-disk-dir "$work/kv" --ledger "$work/ledger.jsonl" 2> "$work/server.log" &
server=$!
trap 'kill $server 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 1 600); do
  [ -s "$work/port" ] && break
  kill -0 $server 2>/dev/null || { cat "$work/server.log" >&2; exit 1; }
  sleep 0.5
done
port=$(cat "$work/port")
base=http://127.0.0.1:$port
for _ in $(seq 1 120); do curl -sf "$base/health" >/dev/null && break; sleep 0.5; done
long="The DeepSeek-V3 inference system serves prefill and decode in separate units. $(printf 'Routed experts are spread over many ranks. %.0s' $(seq 1 40))"
body=$(printf '{"model": "bench", "messages": [{"role": "user", "content": "%s"}], "max_tokens": 12, "temperature": 0}' "$long")
for attempt in first second; do
  echo "-- chat completion ($attempt time; the second reuses the cached prefix):"
  curl -s "$base/v1/chat/completions" -H 'Content-Type: application/json' -d "$body" |
    node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>{const r=JSON.parse(s);console.log(JSON.stringify({content:r.choices[0].message.content,usage:r.usage}))})'
done
echo "-- streamed completion:"
curl -sN "$base/v1/completions" -H 'Content-Type: application/json' \
  -d '{"model": "bench", "prompt": "Once upon a time", "max_tokens": 4, "stream": true, "stream_options": {"include_usage": true}}'
echo
echo "-- 16 streamed requests at concurrency 8 (bench/serve_load.cjs):"
node bench/serve_load.cjs "$base" load 8 16 32 100
echo "-- /health:"
curl -s "$base/health"; echo
echo "-- /metrics (excerpt):"
curl -s "$base/metrics" | grep -E '^epserve_(requests|prompt|completion|cache_ram|kv_handoff|dispatch_bytes|combine_bytes|unit_up)' || true
kill -TERM $server; wait $server || true
trap 'rm -rf "$work"' EXIT

echo "== engine benchmark: epserve bench"
$epserve bench --model "$model"
