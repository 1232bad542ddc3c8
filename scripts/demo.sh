#!/usr/bin/env bash
# The main job on a fresh machine: build, generate the `bench`-preset checkpoint, generate from it,
# and benchmark it against this machine's ceilings.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
bash scripts/fetch-node-deps.sh
bash scripts/build.sh >/dev/null
model=${EPSERVE_CACHE:-$HOME/.cache/epserve}/models/bench
[ -f "$model/config.json" ] || ./build/epserve gen-model --preset bench --seed 1 --expert-skew 1.0 --out "$model"
./build/epserve run --model "$model" --prompt "The expert-parallel deployment of DeepSeek-V3" --max-tokens 16 --json
./build/epserve bench --model "$model"
