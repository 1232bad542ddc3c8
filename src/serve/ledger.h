// The ledger: what each request used and what it is worth. Prices per million tokens (cache-hit
// input, cache-miss input, output) and the cost of a rank-hour come from a JSON file whose defaults
// are DeepSeek-R1's published prices and DeepSeek's $2 per GPU-hour. One JSON line per request and
// one per minute of running totals go to the ledger file, for the report and the simulator.
#pragma once
#include <cstdint>
#include <deque>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace epserve::serve {

struct Prices {
  double input_cache_hit_per_million = 0.14;
  double input_cache_miss_per_million = 0.55;
  double output_per_million = 2.19;
  double cost_per_rank_hour = 2.0;
  std::string currency = "USD";
  // Fields absent from the file keep their defaults; unknown fields and bad values are errors.
  static Prices load(const std::filesystem::path& file);
  nlohmann::json to_json() const;
};

struct LedgerRecord {
  std::string id, endpoint, finish_reason;
  int status = 200;
  int prompt_tokens = 0, cached_tokens = 0, completion_tokens = 0;
  double ttft_s = 0, tpot_s = 0, output_tokens_per_s = 0, kv_tokens_per_output_token = 0;
  double rank_seconds = 0, duration_s = 0, queue_s = 0;
  double revenue = 0, cost = 0;
  nlohmann::json to_json() const;
};

struct LedgerTotals {
  uint64_t requests = 0, failed = 0, prompt_tokens = 0, cached_tokens = 0, completion_tokens = 0;
  double rank_seconds = 0, revenue = 0, cost = 0, ttft_sum_s = 0, tpot_sum_s = 0, kv_tokens_sum = 0;
  uint64_t ttft_count = 0, tpot_count = 0;
  nlohmann::json to_json() const;
};

class Ledger {
 public:
  Ledger(Prices prices, std::filesystem::path file);  // file may be empty: no JSON lines
  // Fills revenue and cost from the prices, adds to the totals, writes the request's line.
  LedgerRecord record(LedgerRecord r);
  // Writes a line of totals (called once a minute, and at shutdown).
  void write_totals(const std::string& why);
  LedgerTotals totals() const;
  const Prices& prices() const { return prices_; }
  // Quantile q of the last 2,048 time-to-first-token / time-per-output-token figures (0 when none).
  double ttft_quantile(double q) const;
  double tpot_quantile(double q) const;

 private:
  void write_line(const nlohmann::json& j);
  Prices prices_;
  std::filesystem::path path_;
  std::ofstream out_;
  mutable std::mutex mu_;
  LedgerTotals totals_;
  std::deque<double> ttft_, tpot_;
};

}  // namespace epserve::serve
