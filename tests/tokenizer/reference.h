// Shared by the tokenizer tests: where DeepSeek-V3's tokenizer files are, calling HuggingFace's
// implementations (hf_reference.mjs under node) and a generator of varied test strings.
#pragma once
#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "support/paths.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/utf8.h"

namespace epserve::testing {

inline std::filesystem::path epserve_cache() {
  if (const char* c = std::getenv("EPSERVE_CACHE"); c && *c) return c;
  return std::filesystem::path(std::getenv("HOME") ? std::getenv("HOME") : ".") / ".cache" / "epserve";
}

// The cached DeepSeek-V3 tokenizer directory, fetched (once, under a lock) when missing.
inline std::filesystem::path deepseek_tokenizer_dir() {
  const auto dir = tokenizer::default_tokenizer_dir();
  const auto node_modules = epserve_cache() / "node" / "node_modules";
  if (std::filesystem::exists(dir / "tokenizer.json") && std::filesystem::exists(node_modules / "tokenizers")) return dir;
  std::filesystem::create_directories(epserve_cache());
  const int lock = ::open((epserve_cache() / "fetch-node-deps.lock").c_str(), O_CREAT | O_RDWR, 0644);
  ::flock(lock, LOCK_EX);
  const auto r = run_command("bash " + (source_dir() / "scripts" / "fetch-node-deps.sh").string());
  ::flock(lock, LOCK_UN);
  ::close(lock);
  if (r.exit_code != 0) throw std::runtime_error("scripts/fetch-node-deps.sh failed: " + r.output);
  return dir;
}

// Runs hf_reference.mjs on a request (see that file) and returns its response.
inline nlohmann::json hf_reference(nlohmann::json request, const std::string& name) {
  request["tokenizer_dir"] = deepseek_tokenizer_dir().string();
  const auto dir = scratch_dir("hf-" + name);
  {
    std::ofstream(dir / "request.json") << request.dump();
  }
  const std::string cmd = "(NODE_PATH='" + (epserve_cache() / "node" / "node_modules").string() + "' node '" +
                          (source_dir() / "tests" / "tokenizer" / "hf_reference.mjs").string() + "' '" +
                          (dir / "request.json").string() + "' > '" + (dir / "response.json").string() + "' 2> '" +
                          (dir / "stderr.txt").string() + "')";
  const auto r = run_command(cmd);
  if (r.exit_code != 0) {
    std::ifstream err(dir / "stderr.txt");
    std::stringstream es;
    es << err.rdbuf();
    throw std::runtime_error("hf_reference.mjs failed: " + r.output + es.str());
  }
  std::ifstream in(dir / "response.json");
  std::stringstream ss;
  ss << in.rdbuf();
  return nlohmann::json::parse(ss.str());
}

// The seed of this run's random strings: fresh each run (printed, so a failure can be replayed
// with EPSERVE_TEST_SEED=...).
inline uint64_t test_seed() {
  static const uint64_t seed = [] {
    if (const char* s = std::getenv("EPSERVE_TEST_SEED")) return uint64_t(std::strtoull(s, nullptr, 10));
    return uint64_t(std::random_device{}()) << 32 | uint64_t(std::random_device{}());
  }();
  return seed;
}

inline std::string utf8_of(std::initializer_list<uint32_t> cps) {
  std::string s;
  for (uint32_t cp : cps) tokenizer::append_utf8(s, cp);
  return s;
}

// Hand-picked strings covering what the pre-tokenizer regexes and the added tokens care about.
inline std::vector<std::string> fixed_corpus() {
  std::vector<std::string> c = {
      "",
      " ",
      "Hello world",
      "Hello, world! How's it going? I'm fine; they'll see, we've done it, you'd know.",
      "  leading and trailing spaces  ",
      "The quick brown fox jumps over the lazy dog. THE QUICK BROWN FOX!!!",
      "don't DON'T can't It's O'Neil's",
      "e-mail: someone@example.com, url: https://example.com/a?b=c&d=e#f",
      "$100.50 + 20% = ?? ... !!! ??? (parenthesised) [bracketed] {braced} <angled>",
      "我们今天去公园散步，天气非常好。人工智能正在改变世界！",
      "深度求索（DeepSeek）发布了新模型：DeepSeek-V3。",
      "日本語のテキストです。カタカナとひらがなと漢字が混ざっています。ｶﾀｶﾅ",
      "한국어 텍스트입니다. 안녕하세요! 반갑습니다.",
      "中文English混合123测试abc你好",
      "def f(x):\n\treturn x * 2\n\nclass A:\n    pass\n",
      "int main() {\r\n\tprintf(\"%d\\n\", 42);\r\n\treturn 0;\r\n}\r\n",
      "for (int i = 0; i < n; ++i) { a[i] += b[i] * c; }",
      "<html><body><p class=\"x\">text</p></body></html>",
      "{\"key\": [1, 2, 3], \"nested\": {\"a\": null, \"b\": true}}",
      "SELECT * FROM users WHERE id = 42 AND name LIKE '%bob%';",
      "1", "12", "123", "1234", "12345", "123456", "1234567", "12345678901234567890",
      "3.14159265358979323846", "1,000,000", "-42", "+7 (495) 123-45-67", "2024-01-15T10:30:00Z",
      "٣٤٥ ١٢٣٤٥ ۱۲۳ ١٢٣٤", "１２３４５ ①②③ ²³ ⅫⅣ 〇一二三",
      "👍 👍🏽 👍🏿 👨‍👩‍👧‍👦 🏳️‍🌈 🧑🏽‍💻 ❤️ 🇯🇵🇺🇸 😀😃😄",
      "e\u0301 a\u0300\u0301\u0302 Z\u0351\u0352\u0353alg\u0354o n\u0303",
      "नमस्ते दुनिया ภาษาไทย مرحبا بالعالم שלום עולם Ελληνικά Русский текст",
      "\n", "\n\n", "\n\n\n\n", "\r\n", "\r\n\r\n", "\t", "\t\t\t", "    ", "  \n  \n  ", " \t \n \r ",
      "a\u00a0b\u3000c\u2028d\u2029e\u0085f\u000bg\u000ch",
      "word\n\n\nword", "word   word", "x  \n  y", "trailing space \n", "tab\tseparated\tvalues",
      "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>hello<｜Assistant｜>hi<｜end▁of▁sentence｜>",
      "text<｜begin▁of▁sentence｜>text", "<｜User｜<｜User｜>>", "<｜User", "｜User｜>", "<<｜Assistant｜>>",
      "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather",
      "a<｜tool▁output▁begin｜>b<｜tool▁output▁end｜>c",
      "<｜fim▁hole｜><｜fim▁begin｜><｜fim▁end｜>",
      "!!!abc ...def ?Ghi #tag @user $var %pct ^caret &amp *star _under `tick` ~tilde |pipe",
      "'s 's 't 're 've 'm 'll 'd",
      "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
      "ab ab ab ab ab ab ab ab ab ab ab ab ab",
      std::string(300, ' ') + "x",
      std::string(1000, 'x'),
      utf8_of({0x10000, 0x1F600, 0xE000, 0xFFFD, 0xFEFF, 0x200B, 0x200D, 0x2060, 0x1D400, 0x20000, 0x10FFFF}),
      std::string("nul\0byte", 8),
      // Assigned after Unicode 14 (PCRE2's), known to HF's Oniguruma: see unicode_extra.h.
      "x " + utf8_of({0x1F775}) + " " + utf8_of({0x31350, 0x31351}) + "a" + utf8_of({0x1E4D0, 0x11F00, 0x11F03}) +
          " " + utf8_of({0x1CCF0, 0x1CCF1, 0x1CCF2, 0x1CCF3}) + " !" + utf8_of({0x10D6E}),
      "\x01\x02\x1f\x7f control",
  };
  for (int n = 1; n <= 40; ++n) {
    std::string d;
    for (int k = 0; k < n; ++k) d += char('0' + (k * 7 + n) % 10);
    c.push_back(d);
    c.push_back("x" + d + "y");
    c.push_back("价格" + d + "元");
  }
  return c;
}

// Random strings: each a mix of fragments drawn from pools that exercise the pre-tokenizer's
// classes, plus strings of uniformly random code points.
inline std::vector<std::string> random_corpus(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  auto pick = [&](size_t k) { return size_t(rng() % k); };
  const std::vector<std::string> words = {
      "the", "of", "and", "Tokenizer", "DeepSeek", "model", "serving", "expert", "parallel", "GPU", "hello",
      "naïve", "café", "Straße", "über", "résumé", "日本", "中国", "人工智能", "東京", "カタカナ", "ひらがな",
      "한국", "서울", "москва", "λόγος", "عربى", "עברית", "हिन्दी", "ไทย", "x", "foo_bar", "fooBar", "i++",
      "0x1F", "3.14", "1e-9", "42", "007", "2024", "１２", "٣", "½", "Ⅻ", "👍🏽", "👨‍👩‍👧", "🏳️‍🌈", "e\u0301",
      "\u0915\u094d\u0937", "<｜User｜>", "<｜Assistant｜>", "<｜end▁of▁sentence｜>", "<｜tool▁sep｜>", "<｜", "｜>",
      "...", "!?", "--", "->", "=>", "::", "();", "{}", "[]", "\"", "'", "`", "#", "@", "$", "%", "&", "*", "/",
      "\\", "|", "~", "^", "'s", "'ll", "n't",
  };
  const std::vector<std::string> spaces = {" ", " ", " ", "  ", "\t", "\n", "\n\n", "\r\n", " \n", "\u00a0", "\u3000", "\u0085", ""};
  // Code point pools: ASCII, Latin-1, CJK, kana, hangul, combining marks, emoji, modifiers, digits
  // of several scripts, general punctuation and spaces.
  const std::vector<std::pair<uint32_t, uint32_t>> ranges = {
      {0x20, 0x7E}, {0x20, 0x7E}, {0xA0, 0xFF}, {0x4E00, 0x9FA5}, {0x3040, 0x30FF}, {0xAC00, 0xD7A3},
      {0x300, 0x36F}, {0x1F300, 0x1F64F}, {0x1F3FB, 0x1F3FF}, {0x660, 0x669}, {0xFF10, 0xFF19},
      {0x2000, 0x206F}, {0x9, 0xD}, {0x3000, 0x303F}, {0x900, 0x97F}, {0xE00, 0xE7F}, {0xFF00, 0xFFEF}};
  std::vector<std::string> out;
  out.reserve(n);
  for (size_t s = 0; s < n; ++s) {
    std::string str;
    const int kind = int(s % 4);
    const size_t len = 1 + pick(kind == 3 ? 12 : 30);
    for (size_t k = 0; k < len; ++k) {
      if (kind == 0) {  // words and spaces
        str += words[pick(words.size())];
        str += spaces[pick(spaces.size())];
      } else if (kind == 1 || kind == 2) {  // characters from the pools
        const auto& [lo, hi] = ranges[pick(ranges.size())];
        const uint32_t cp = lo + uint32_t(pick(hi - lo + 1));
        tokenizer::append_utf8(str, cp);
        if (pick(8) == 0) str += spaces[pick(spaces.size())];
      } else {  // any code point at all (not surrogates)
        uint32_t cp;
        do cp = uint32_t(pick(0x110000)); while (cp >= 0xD800 && cp <= 0xDFFF);
        if (pick(2)) cp &= 0xFFFF;  // favour the BMP, where most assigned characters are
        if (cp >= 0xD800 && cp <= 0xDFFF) cp = 0x20;
        tokenizer::append_utf8(str, cp);
      }
    }
    out.push_back(std::move(str));
  }
  return out;
}

}  // namespace epserve::testing
