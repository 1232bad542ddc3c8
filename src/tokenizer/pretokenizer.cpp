#include "tokenizer/pretokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>

#include <nlohmann/json.hpp>

#include "base/error.h"
#include "tokenizer/unicode_extra.h"

namespace epserve::tokenizer {

class Regex {
 public:
  Regex(const std::string& pattern, bool literal, const std::string& where) {
    int err = 0;
    PCRE2_SIZE err_offset = 0;
    const uint32_t options = PCRE2_UTF | PCRE2_UCP | PCRE2_NO_UTF_CHECK | (literal ? PCRE2_LITERAL : 0);
    code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(), options, &err,
                          &err_offset, nullptr);
    if (!code_) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(err, msg, sizeof msg);
      throw Error(where + ": cannot compile pre-tokenizer regex /" + pattern + "/ at offset " +
                  std::to_string(err_offset) + ": " + reinterpret_cast<const char*>(msg));
    }
    jit_ = pcre2_jit_compile(code_, PCRE2_JIT_COMPLETE) == 0;
  }
  ~Regex() { pcre2_code_free(code_); }
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // First match in subject[start..] (the whole subject is visible to lookarounds).
  bool find(std::string_view subject, size_t start, pcre2_match_data* md, size_t& mbegin, size_t& mend) const {
    const auto* s = reinterpret_cast<PCRE2_SPTR>(subject.data());
    // Input was validated once up front; PCRE2 must not re-check it for every piece.
    const int rc = jit_ ? pcre2_jit_match(code_, s, subject.size(), start, PCRE2_NO_UTF_CHECK, md, nullptr)
                        : pcre2_match(code_, s, subject.size(), start, PCRE2_NO_UTF_CHECK, md, nullptr);
    if (rc == PCRE2_ERROR_NOMATCH) return false;
    if (rc < 0) throw Error("pre-tokenizer regex failed with PCRE2 error " + std::to_string(rc));
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
    mbegin = ov[0];
    mend = ov[1];
    return true;
  }

 private:
  pcre2_code* code_ = nullptr;
  bool jit_ = false;
};

namespace {

SplitBehavior parse_behavior(const std::string& s, const std::string& where) {
  if (s == "Removed") return SplitBehavior::Removed;
  if (s == "Isolated") return SplitBehavior::Isolated;
  if (s == "MergedWithPrevious") return SplitBehavior::MergedWithPrevious;
  if (s == "MergedWithNext") return SplitBehavior::MergedWithNext;
  if (s == "Contiguous") return SplitBehavior::Contiguous;
  throw Error(where + ": pre_tokenizer Split: unknown behavior \"" + s + "\"");
}

// GPT-2's word pattern, which ByteLevel applies when its use_regex is true.
constexpr const char* kByteLevelPattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

struct Span {
  uint32_t begin, end;
  bool match;
};

}  // namespace

std::string regex_from_onig(std::string_view p) {
  std::string out;
  out.reserve(p.size() + 16);
  int class_depth = 0;
  for (size_t i = 0; i < p.size(); ++i) {
    const char c = p[i];
    if (c == '\\' && i + 1 < p.size()) {
      const char n = p[i + 1];
      if (n == 's') {
        out += class_depth ? "\\s\\x{85}" : "[\\s\\x{85}]";
      } else if (n == 'S') {
        out += class_depth ? "\\S" : "[^\\s\\x{85}]";
      } else if ((n == 'p' || n == 'P') && i + 4 < p.size() && p[i + 2] == '{' &&
                 p[i + 4] == '}' && !unicode_extra_ranges(p[i + 3]).empty()) {
        // \p{X} for a one-letter category: add what PCRE2's older Unicode does not know yet.
        const std::string cls = "\\p{" + std::string(1, p[i + 3]) + "}" + std::string(unicode_extra_ranges(p[i + 3]));
        if (class_depth && n == 'p') out += cls;
        else if (!class_depth) out += (n == 'p' ? "[" : "[^") + cls + "]";
        else out.append(p.substr(i, 5));  // \P{X} inside a class: left as PCRE2 has it
        i += 4;
        continue;
      } else {
        out.append(p.substr(i, 2));
      }
      ++i;
      continue;
    }
    if (c == '[') {
      ++class_depth;
      out += c;
      // A ']' right after '[' or '[^' is a literal in both dialects.
      if (i + 1 < p.size() && p[i + 1] == '^') out += p[++i];
      if (i + 1 < p.size() && p[i + 1] == ']') out += p[++i];
      continue;
    }
    if (c == ']' && class_depth > 0) --class_depth;
    out += c;
  }
  return out;
}

PreTokenizer::PreTokenizer() = default;
PreTokenizer::~PreTokenizer() = default;
PreTokenizer::PreTokenizer(PreTokenizer&&) noexcept = default;
PreTokenizer& PreTokenizer::operator=(PreTokenizer&&) noexcept = default;

PreTokenizer PreTokenizer::from_json(const nlohmann::json& j, const std::string& where) {
  PreTokenizer p;
  if (!j.is_null()) p.add_steps(j, where);
  return p;
}

void PreTokenizer::add_steps(const nlohmann::json& j, const std::string& where) {
  if (!j.is_object() || !j.contains("type") || !j["type"].is_string())
    throw Error(where + ": pre_tokenizer: expected an object with a \"type\"");
  const std::string type = j["type"];
  if (type == "Sequence") {
    if (!j.contains("pretokenizers") || !j["pretokenizers"].is_array())
      throw Error(where + ": pre_tokenizer Sequence: missing \"pretokenizers\" array");
    for (const auto& sub : j["pretokenizers"]) add_steps(sub, where);
  } else if (type == "Split") {
    const auto& pat = j.value("pattern", nlohmann::json());
    Step s;
    if (pat.contains("Regex") && pat["Regex"].is_string())
      s.regex = std::make_shared<Regex>(regex_from_onig(pat["Regex"].get<std::string>()), false, where);
    else if (pat.contains("String") && pat["String"].is_string())
      s.regex = std::make_shared<Regex>(pat["String"].get<std::string>(), true, where);
    else
      throw Error(where + ": pre_tokenizer Split: \"pattern\" needs a \"Regex\" or \"String\"");
    s.behavior = parse_behavior(j.value("behavior", std::string("Isolated")), where);
    s.invert = j.value("invert", false);
    steps_.push_back(std::move(s));
  } else if (type == "Digits") {
    // Every numeric character is a match; without individual_digits runs of them stay together.
    Step s;
    s.regex = std::make_shared<Regex>(regex_from_onig("\\p{N}"), false, where);
    s.behavior = j.value("individual_digits", false) ? SplitBehavior::Isolated : SplitBehavior::Contiguous;
    steps_.push_back(std::move(s));
  } else if (type == "ByteLevel") {
    // The byte mapping itself happens in BPE (words stay text until then); what is left here is
    // the optional prefix space and GPT-2's word regex.
    Step s;
    s.add_prefix_space = j.value("add_prefix_space", false);
    if (j.value("use_regex", true)) s.regex = std::make_shared<Regex>(regex_from_onig(kByteLevelPattern), false, where);
    if (s.add_prefix_space || s.regex) steps_.push_back(std::move(s));
  } else {
    throw Error(where + ": pre_tokenizer type \"" + type + "\" is not supported");
  }
}

void PreTokenizer::split(std::string_view text, std::vector<Piece>& out) const {
  if (text.empty()) return;
  std::vector<Piece> cur{{0, static_cast<uint32_t>(text.size()), false}}, next;
  std::vector<Span> spans, words;
  pcre2_match_data* md = pcre2_match_data_create(1, nullptr);
  struct Free {
    pcre2_match_data* m;
    ~Free() { pcre2_match_data_free(m); }
  } free_md{md};

  for (const Step& step : steps_) {
    next.clear();
    for (const Piece& piece : cur) {
      const bool prefix = piece.prefix_space ||
                          (step.add_prefix_space && text[piece.begin] != ' ');
      if (!step.regex) {
        next.push_back({piece.begin, piece.end, prefix});
        continue;
      }
      // A prefix space is part of the word the regex sees. It only arises from ByteLevel, which
      // comes last in practice, so such words are matched through a temporary copy.
      std::string with_space;
      std::string_view subject = text.substr(piece.begin, piece.end - piece.begin);
      if (prefix) {
        with_space = " " + std::string(subject);
        subject = with_space;
      }
      // Matches and the gaps between them, in order (HF's find_matches).
      spans.clear();
      size_t pos = 0, search = 0;
      size_t mb, me;
      while (search <= subject.size() && step.regex->find(subject, search, md, mb, me)) {
        if (mb != pos) spans.push_back({uint32_t(pos), uint32_t(mb), false});
        spans.push_back({uint32_t(mb), uint32_t(me), true});
        pos = me;
        if (me == mb) {  // an empty match: step over one character, as Oniguruma's iterator does
          if (me >= subject.size()) break;
          size_t k = me + 1;
          while (k < subject.size() && (static_cast<unsigned char>(subject[k]) & 0xC0) == 0x80) ++k;
          search = k;
        } else {
          search = me;
        }
      }
      if (pos != subject.size()) spans.push_back({uint32_t(pos), uint32_t(subject.size()), false});
      if (step.invert)
        for (auto& s : spans) s.match = !s.match;

      // Apply the behavior: which spans become words of their own.
      words.clear();
      switch (step.behavior) {
        case SplitBehavior::Removed:
          for (const auto& s : spans)
            if (!s.match) words.push_back(s);
          break;
        case SplitBehavior::Isolated:
          words.assign(spans.begin(), spans.end());
          break;
        case SplitBehavior::MergedWithPrevious: {
          bool prev_match = false;
          for (const auto& s : spans) {
            if (s.match && !prev_match && !words.empty()) words.back().end = s.end;
            else words.push_back(s);
            prev_match = s.match;
          }
          break;
        }
        case SplitBehavior::MergedWithNext: {
          bool prev_match = false;
          for (size_t k = spans.size(); k-- > 0;) {
            const auto& s = spans[k];
            if (s.match && !prev_match && !words.empty()) words.back().begin = s.begin;
            else words.push_back(s);
            prev_match = s.match;
          }
          std::reverse(words.begin(), words.end());
          break;
        }
        case SplitBehavior::Contiguous: {
          bool prev_match = false;
          for (const auto& s : spans) {
            if (s.match == prev_match && !words.empty()) words.back().end = s.end;
            else words.push_back(s);
            prev_match = s.match;
          }
          break;
        }
      }
      for (const auto& w : words) {
        if (w.begin == w.end) continue;
        if (!prefix) {
          next.push_back({piece.begin + w.begin, piece.begin + w.end, false});
        } else if (w.begin == 0) {
          next.push_back({piece.begin, piece.begin + w.end - 1, true});
        } else {
          next.push_back({piece.begin + w.begin - 1, piece.begin + w.end - 1, false});
        }
      }
    }
    std::swap(cur, next);
  }
  out.insert(out.end(), cur.begin(), cur.end());
}

}  // namespace epserve::tokenizer
