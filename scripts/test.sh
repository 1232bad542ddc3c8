#!/usr/bin/env bash
# The whole test suite from a fresh machine: dependencies, build, every test (ctest).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
bash scripts/fetch-node-deps.sh
bash scripts/build.sh
cd build
ctest --output-on-failure -j 2 --timeout 900
