#include <sstream>

#include "serve/router.h"

namespace epserve::serve {

std::string render_metrics(const std::string& model, const LedgerTotals& t, const Ledger& ledger, const WorkerStats& w,
                           const std::vector<UnitStatus>& units, const std::map<int, uint64_t>& http, int in_flight,
                           bool draining) {
  std::ostringstream o;
  o.precision(10);
  const std::string lbl = "{model=\"" + model + "\"}";
  auto metric = [&](const char* name, const char* type, const char* help, double value) {
    o << "# HELP " << name << ' ' << help << "\n# TYPE " << name << ' ' << type << '\n' << name << lbl << ' ' << value << '\n';
  };
  metric("epserve_requests_total", "counter", "Generation requests finished (any status).", double(t.requests));
  metric("epserve_requests_failed_total", "counter", "Generation requests that ended in an error.", double(t.failed));
  metric("epserve_prompt_tokens_total", "counter", "Input tokens.", double(t.prompt_tokens));
  metric("epserve_prompt_cache_hit_tokens_total", "counter", "Input tokens served from the KV cache (RAM or disk).",
         double(t.cached_tokens));
  metric("epserve_prompt_cache_miss_tokens_total", "counter", "Input tokens computed.", double(t.prompt_tokens - t.cached_tokens));
  metric("epserve_completion_tokens_total", "counter", "Output tokens.", double(t.completion_tokens));
  metric("epserve_rank_seconds_total", "counter", "Rank-seconds spent in model steps, attributed to requests.", t.rank_seconds);
  metric("epserve_revenue_total", "counter", "Revenue at the configured prices.", t.revenue);
  metric("epserve_cost_total", "counter", "Cost of the rank-seconds at the configured price per rank-hour.", t.cost);
  metric("epserve_kv_tokens_per_output_token", "gauge", "Mean KV length attended per output token.",
         t.completion_tokens ? t.kv_tokens_sum / double(t.completion_tokens) : 0.0);
  // A summary over the ledger's last 2048 requests: p50 / p90 / p99, sum and count.
  auto summary = [&](const char* name, const char* help, auto quantile, double sum, uint64_t count) {
    o << "# HELP " << name << ' ' << help << "\n# TYPE " << name << " summary\n";
    for (double q : {0.5, 0.9, 0.99})
      o << name << "{model=\"" << model << "\",quantile=\"" << q << "\"} " << quantile(q) << '\n';
    o << name << "_sum" << lbl << ' ' << sum << '\n' << name << "_count" << lbl << ' ' << count << '\n';
  };
  summary("epserve_time_to_first_token_seconds", "Time to first token over the last 2048 requests.",
          [&](double q) { return ledger.ttft_quantile(q); }, t.ttft_sum_s, t.ttft_count);
  summary("epserve_time_per_output_token_seconds", "Time per output token after the first, last 2048 requests.",
          [&](double q) { return ledger.tpot_quantile(q); }, t.tpot_sum_s, t.tpot_count);
  metric("epserve_running_requests", "gauge", "Requests in the running batch.", w.running);
  metric("epserve_waiting_requests", "gauge", "Requests waiting for admission.", w.waiting);
  metric("epserve_http_in_flight", "gauge", "Generation requests being answered.", in_flight);
  metric("epserve_draining", "gauge", "1 while shutting down.", draining ? 1 : 0);
  metric("epserve_kv_blocks_used", "gauge", "KV pool blocks in use (sequences and prefix cache).", w.kv_blocks_used);
  metric("epserve_kv_blocks_total", "gauge", "KV pool capacity in 64-token blocks.", w.kv_blocks_total);
  metric("epserve_prefix_cache_blocks", "gauge", "Blocks named in the RAM prefix index.", w.prefix_blocks);
  metric("epserve_steps_total", "counter", "Model steps.", double(w.steps));
  metric("epserve_step_tokens_total", "counter", "Tokens run through model steps.", double(w.step_tokens));
  metric("epserve_busy_seconds_total", "counter", "Seconds spent in model steps.", w.busy_s);
  metric("epserve_preemptions_total", "counter", "Requests preempted for KV room.", double(w.preemptions));
  metric("epserve_cache_ram_hit_tokens_total", "counter", "Prompt tokens found in the RAM prefix cache.", double(w.ram_hit_tokens));
  metric("epserve_cache_disk_hit_tokens_total", "counter", "Prompt tokens loaded from the disk tier.", double(w.disk_hit_tokens));
  metric("epserve_kv_disk_enabled", "gauge", "1 while the disk tier is on.", w.disk_enabled ? 1 : 0);
  metric("epserve_kv_disk_hits_total", "counter", "Blocks loaded from disk.", double(w.disk_hits));
  metric("epserve_kv_disk_corrupt_total", "counter", "Disk block files that failed a check (removed).", double(w.disk_corrupt));
  metric("epserve_kv_disk_writes_total", "counter", "Blocks written to disk.", double(w.disk_writes));
  metric("epserve_kv_disk_write_errors_total", "counter", "Failed block writes.", double(w.disk_write_errors));
  metric("epserve_kv_disk_files", "gauge", "Block files on disk.", double(w.disk_files));
  metric("epserve_kv_disk_bytes", "gauge", "Bytes of block files on disk.", double(w.disk_bytes));
  metric("epserve_dispatch_bytes_total", "counter", "Bytes the ranks sent in MoE dispatch (FP8 rows, scales, routing).",
         double(w.dispatch_bytes));
  metric("epserve_combine_bytes_total", "counter", "Bytes the ranks sent in MoE combine (BF16 rows).", double(w.combine_bytes));
  metric("epserve_dispatch_seconds_total", "counter", "Rank-seconds in MoE dispatch.", w.dispatch_s);
  metric("epserve_combine_seconds_total", "counter", "Rank-seconds in MoE combine.", w.combine_s);
  metric("epserve_moe_layer_passes_total", "counter", "MoE layer passes over all ranks (the exchanges' denominator).",
         double(w.moe_layers));
  metric("epserve_kv_handoff_blocks_sent_total", "counter", "KV blocks prefill ranks sent to decode ranks.",
         double(w.kv_handoff_blocks_sent));
  metric("epserve_kv_handoff_blocks_received_total", "counter", "KV blocks decode ranks took from hand-offs.",
         double(w.kv_handoff_blocks_received));
  metric("epserve_kv_handoff_bytes_total", "counter", "Bytes of KV handed from prefill to decode ranks.", double(w.kv_handoff_bytes));
  // One sample per unit of a deployment, labelled by unit and role.
  auto per_unit = [&](const char* name, const char* type, const char* help, auto value) {
    if (units.empty()) return;
    o << "# HELP " << name << ' ' << help << "\n# TYPE " << name << ' ' << type << '\n';
    for (const auto& u : units)
      o << name << "{unit=\"" << u.name << "\",role=\"" << u.role << "\"} " << value(u) << '\n';
  };
  per_unit("epserve_unit_up", "gauge", "1 while the unit serves.", [](const UnitStatus& u) { return u.state == "up" ? 1 : 0; });
  per_unit("epserve_unit_in_flight", "gauge", "Requests a unit holds.", [](const UnitStatus& u) { return u.in_flight; });
  per_unit("epserve_unit_retried_total", "counter", "Requests moved from a failed unit to another.",
           [](const UnitStatus& u) { return u.retried; });
  per_unit("epserve_unit_restarts_total", "counter", "Times a failed unit was launched again.",
           [](const UnitStatus& u) { return u.restarts; });
  o << "# HELP epserve_http_responses_total HTTP responses by status.\n# TYPE epserve_http_responses_total counter\n";
  for (const auto& [code, n] : http) o << "epserve_http_responses_total{code=\"" << code << "\"} " << n << '\n';
  return o.str();
}

}  // namespace epserve::serve
