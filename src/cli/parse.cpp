#include "cli/parse.h"

#include <charconv>

#include "base/error.h"

namespace epserve::cli {

std::vector<int> parse_token_list(const std::string& text, const std::string& what) {
  std::vector<int> out;
  size_t start = 0;
  while (start <= text.size()) {
    size_t end = text.find(',', start);
    if (end == std::string::npos) end = text.size();
    std::string item = text.substr(start, end - start);
    while (!item.empty() && item.front() == ' ') item.erase(item.begin());
    while (!item.empty() && (item.back() == ' ' || item.back() == '\r')) item.pop_back();
    int value = 0;
    auto [ptr, ec] = std::from_chars(item.data(), item.data() + item.size(), value);
    EPS_REQUIRE(!item.empty() && ec == std::errc() && ptr == item.data() + item.size() && value >= 0,
                what + ": \"" + item + "\" is not a token id (expected comma-separated non-negative integers)");
    out.push_back(value);
    start = end + 1;
  }
  return out;
}

kernels::Numerics parse_numerics(const std::string& text) {
  if (text == "deepseek") return kernels::Numerics::kDeepSeek;
  if (text == "exact") return kernels::Numerics::kExact;
  throw Error("--numerics must be exact or deepseek, got \"" + text + "\"");
}

model::AttentionPath parse_attention_path(const std::string& text) {
  if (text == "auto") return model::AttentionPath::kAuto;
  if (text == "naive") return model::AttentionPath::kNaive;
  if (text == "absorbed") return model::AttentionPath::kAbsorbed;
  throw Error("--attention must be auto, naive or absorbed, got \"" + text + "\"");
}

}  // namespace epserve::cli
