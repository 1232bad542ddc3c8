#include "serve/ledger.h"

#include <algorithm>
#include <chrono>
#include <cmath>

#include "base/error.h"

namespace epserve::serve {

using nlohmann::json;

Prices Prices::load(const std::filesystem::path& file) {
  std::ifstream in(file);
  EPS_REQUIRE(in, file.string() + ": cannot open the prices file");
  json j;
  try {
    j = json::parse(in);
  } catch (const std::exception& e) {
    throw Error(file.string() + ": not valid JSON: " + e.what());
  }
  EPS_REQUIRE(j.is_object(), file.string() + ": must be a JSON object");
  Prices p;
  for (auto& [key, v] : j.items()) {
    double* field = key == "input_cache_hit_per_million"    ? &p.input_cache_hit_per_million
                    : key == "input_cache_miss_per_million" ? &p.input_cache_miss_per_million
                    : key == "output_per_million"           ? &p.output_per_million
                    : key == "cost_per_rank_hour"           ? &p.cost_per_rank_hour
                                                            : nullptr;
    if (key == "currency") {
      EPS_REQUIRE(v.is_string(), file.string() + ": 'currency' must be a string");
      p.currency = v.get<std::string>();
      continue;
    }
    EPS_REQUIRE(field, file.string() + ": unknown field '" + key +
                           "' (known: input_cache_hit_per_million, input_cache_miss_per_million, output_per_million, "
                           "cost_per_rank_hour, currency)");
    EPS_REQUIRE(v.is_number() && v.get<double>() >= 0 && std::isfinite(v.get<double>()),
                file.string() + ": '" + key + "' must be a number >= 0");
    *field = v.get<double>();
  }
  return p;
}

json Prices::to_json() const {
  return {{"input_cache_hit_per_million", input_cache_hit_per_million},
          {"input_cache_miss_per_million", input_cache_miss_per_million},
          {"output_per_million", output_per_million},
          {"cost_per_rank_hour", cost_per_rank_hour},
          {"currency", currency}};
}

json LedgerRecord::to_json() const {
  return {{"type", "request"},
          {"id", id},
          {"endpoint", endpoint},
          {"status", status},
          {"finish_reason", finish_reason},
          {"prompt_tokens", prompt_tokens},
          {"prompt_cache_hit_tokens", cached_tokens},
          {"prompt_cache_miss_tokens", prompt_tokens - cached_tokens},
          {"completion_tokens", completion_tokens},
          {"queue_s", queue_s},
          {"ttft_s", ttft_s},
          {"tpot_s", tpot_s},
          {"output_tokens_per_s", output_tokens_per_s},
          {"kv_tokens_per_output_token", kv_tokens_per_output_token},
          {"rank_seconds", rank_seconds},
          {"duration_s", duration_s},
          {"revenue", revenue},
          {"cost", cost}};
}

json LedgerTotals::to_json() const {
  return {{"requests", requests},
          {"failed", failed},
          {"prompt_tokens", prompt_tokens},
          {"prompt_cache_hit_tokens", cached_tokens},
          {"prompt_cache_miss_tokens", prompt_tokens - cached_tokens},
          {"completion_tokens", completion_tokens},
          {"rank_seconds", rank_seconds},
          {"revenue", revenue},
          {"cost", cost},
          {"margin", cost > 0 ? (revenue - cost) / cost : 0.0},
          {"mean_ttft_s", ttft_count ? ttft_sum_s / double(ttft_count) : 0.0},
          {"mean_tpot_s", tpot_count ? tpot_sum_s / double(tpot_count) : 0.0},
          {"kv_tokens_per_output_token", completion_tokens ? kv_tokens_sum / double(completion_tokens) : 0.0}};
}

Ledger::Ledger(Prices prices, std::filesystem::path file) : prices_(std::move(prices)), path_(std::move(file)) {
  if (!path_.empty()) {
    if (path_.has_parent_path()) std::filesystem::create_directories(path_.parent_path());
    out_.open(path_, std::ios::app);
    EPS_REQUIRE(out_, path_.string() + ": cannot open the ledger file for appending");
  }
}

void Ledger::write_line(const json& j) {
  if (!out_.is_open()) return;
  json line = j;
  line["ts"] = std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  out_ << line.dump(-1, ' ', false, json::error_handler_t::replace) << '\n';
  out_.flush();
}

LedgerRecord Ledger::record(LedgerRecord r) {
  const double m = 1e6;
  r.revenue = r.cached_tokens * prices_.input_cache_hit_per_million / m +
              (r.prompt_tokens - r.cached_tokens) * prices_.input_cache_miss_per_million / m +
              r.completion_tokens * prices_.output_per_million / m;
  if (r.status != 200) r.revenue = 0;
  r.cost = r.rank_seconds / 3600 * prices_.cost_per_rank_hour;
  std::lock_guard lk(mu_);
  auto& t = totals_;
  ++t.requests;
  if (r.status != 200) ++t.failed;
  t.prompt_tokens += uint64_t(r.prompt_tokens);
  t.cached_tokens += uint64_t(r.cached_tokens);
  t.completion_tokens += uint64_t(r.completion_tokens);
  t.rank_seconds += r.rank_seconds;
  t.revenue += r.revenue;
  t.cost += r.cost;
  t.kv_tokens_sum += r.kv_tokens_per_output_token * r.completion_tokens;
  if (r.completion_tokens > 0) {
    t.ttft_sum_s += r.ttft_s;
    ++t.ttft_count;
    ttft_.push_back(r.ttft_s);
    if (ttft_.size() > 2048) ttft_.pop_front();
  }
  if (r.completion_tokens > 1) {
    t.tpot_sum_s += r.tpot_s;
    ++t.tpot_count;
    tpot_.push_back(r.tpot_s);
    if (tpot_.size() > 2048) tpot_.pop_front();
  }
  write_line(r.to_json());
  return r;
}

void Ledger::write_totals(const std::string& why) {
  std::lock_guard lk(mu_);
  json j = totals_.to_json();
  j["type"] = "totals";
  j["why"] = why;
  write_line(j);
}

LedgerTotals Ledger::totals() const {
  std::lock_guard lk(mu_);
  return totals_;
}

namespace {
double quantile(std::deque<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t i = std::min(v.size() - 1, size_t(q * double(v.size())));
  return v[i];
}
}  // namespace

double Ledger::ttft_quantile(double q) const {
  std::lock_guard lk(mu_);
  return quantile(ttft_, q);
}

double Ledger::tpot_quantile(double q) const {
  std::lock_guard lk(mu_);
  return quantile(tpot_, q);
}

}  // namespace epserve::serve
