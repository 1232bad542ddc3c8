#!/usr/bin/env bash
# Installs what epserve needs on a fresh Debian 12 machine: Debian packages (only those missing).
# Node packages (the DeepSeek-V3 tokenizer files and the test-only reference implementations) are
# fetched by scripts/fetch-node-deps.sh.
set -euo pipefail
packages=(build-essential cmake pkg-config libgtest-dev libbenchmark-dev nlohmann-json3-dev libopenmpi-dev openmpi-bin
  libcli11-dev libpcre2-dev libfmt-dev libcpp-httplib-dev libzmq3-dev cppzmq-dev libtomlplusplus-dev curl nodejs npm)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# nodejs/npm may come from elsewhere than Debian (as on these machines): accept working binaries.
if command -v node >/dev/null && command -v npm >/dev/null; then
  missing=("${missing[@]/nodejs}"); missing=("${missing[@]/npm}")
fi
missing=($(printf '%s\n' "${missing[@]}" | grep -v '^$' || true))
if [ ${#missing[@]} -gt 0 ]; then
  echo "deps: installing ${missing[*]}" >&2
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi
