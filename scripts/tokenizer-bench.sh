#!/usr/bin/env bash
# Tokenizer speed on one core: builds a ~1.5 MB mixed text (English licence prose, this repo's C++
# sources, and seeded pseudo-sentences in Chinese, Japanese, Korean, Russian with digits and
# emoji) and runs `epserve tokenize --bench` on it. usage: scripts/tokenizer-bench.sh [BUILD_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
out=$build/tokenizer-bench.txt
{
  cat /usr/share/common-licenses/{GPL-3,LGPL-3,Apache-2.0,GFDL-1.3,MPL-2.0,Artistic}
  find src tests -name '*.cpp' -o -name '*.h' | sort | xargs cat
  python3 - <<'PY'
import random
rng = random.Random(42)
pools = ["的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年得就那要下以生会自着去之过家学对可她里后小么心多天而能好都然没日于起还发成事只作当想看文无开手十用主行方又如前所本见经头面公同三已老从动两长知民样现分将外但身些与高意进把法此实回二理美点月明",
         "あいうえおかきくけこさしすせそたちつてとなにぬねのはひふへほまみむめもやゆよらりるれろわをんアイウエオカキクケコ日本語東京学校先生",
         "가나다라마바사아자차카타파하한국어서울사람시간학교말씀",
         "абвгдеёжзийклмнопрстуфхцчшщыэюя"]
out = []
while sum(map(len, out)) < 350000:
    p = rng.choice(pools)
    words = ["".join(rng.choice(p) for _ in range(rng.randint(1, 6))) for _ in range(rng.randint(4, 20))]
    sep = " " if p in (pools[2], pools[3]) else ""
    s = sep.join(words) + rng.choice(["。", "！", "？", ".", "，", " 2024年", " 123456", " 👍🏽", "\n"])
    out.append(s)
print("".join(out))
PY
} > "$out"
echo "$(date -u +%Y-%m-%d) $(lscpu | sed -n 's/^Model name: *//p')"
echo "$build/epserve tokenize --bench $out"
"$build/epserve" tokenize --bench "$out"
