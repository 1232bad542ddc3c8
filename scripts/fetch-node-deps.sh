#!/usr/bin/env bash
# Fetches node packages into ${EPSERVE_CACHE:-~/.cache/epserve}/node (npm registry): nothing yet.
set -euo pipefail
