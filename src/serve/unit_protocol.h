// The messages between the router (serve::DeploymentWorker) and the ranks of its units (`epserve
// unit`), over ZeroMQ: the router binds one ROUTER socket, each rank connects a DEALER whose routing
// id is "u<unit>r<rank>". Every message is one frame of JSON {"type": ..., ...}.
//   rank → router: register {rank, ranks, role, kv_endpoint, limits}; events {id, events: [TokenEvent...]};
//                  stats {stats} (every 250 ms, doubles as the heartbeat)
//   router → rank: submit {id, request[, decode: {endpoint}]}; cancel {id}; heartbeat; stop
// Prefill rank → decode rank (the decode rank's own ROUTER socket, its kv_endpoint): one multipart
// message per request, [handoff header (JSON), block payload...] (see handoff_header).
// Request ids on the wire are the router's own (unique per deployment).
#pragma once
#include <nlohmann/json.hpp>

#include "serve/worker.h"

namespace epserve::serve::unit_protocol {

using nlohmann::json;

inline std::string rank_identity(int unit, int rank) { return "u" + std::to_string(unit) + "r" + std::to_string(rank); }

inline json to_json(const GenerateRequest& r) {
  return {{"prompt", r.prompt},
          {"max_tokens", r.max_tokens},
          {"temperature", r.sampling.temperature},
          {"top_p", r.sampling.top_p},
          {"seed", r.seed},
          {"stop_at_eos", r.stop_at_eos},
          {"top_logprobs", r.top_logprobs},
          {"timeout_s", r.timeout_s}};
}

inline GenerateRequest request_from_json(const json& j) {
  GenerateRequest r;
  r.prompt = j.at("prompt").get<std::vector<int>>();
  r.max_tokens = j.at("max_tokens").get<int>();
  r.sampling.temperature = j.at("temperature").get<double>();
  r.sampling.top_p = j.at("top_p").get<double>();
  r.seed = j.at("seed").get<uint64_t>();
  r.stop_at_eos = j.at("stop_at_eos").get<bool>();
  r.top_logprobs = j.at("top_logprobs").get<int>();
  r.timeout_s = j.at("timeout_s").get<double>();
  return r;
}

inline json to_json(const RequestStats& s) {
  return json::array({s.prompt_tokens, s.cached_tokens, s.disk_cached_tokens, s.completion_tokens, s.queue_s, s.ttft_s,
                      s.decode_s, s.rank_seconds, s.kv_tokens_sum, s.preemptions});
}

inline RequestStats request_stats_from_json(const json& j) {
  RequestStats s;
  s.prompt_tokens = j[0];
  s.cached_tokens = j[1];
  s.disk_cached_tokens = j[2];
  s.completion_tokens = j[3];
  s.queue_s = j[4];
  s.ttft_s = j[5];
  s.decode_s = j[6];
  s.rank_seconds = j[7];
  s.kv_tokens_sum = j[8];
  s.preemptions = j[9];
  return s;
}

inline json to_json(const TokenEvent& e) {
  json j = {{"token", e.token}, {"eos", e.is_eos}, {"logprob", e.logprob}};
  if (!e.top.empty()) j["top"] = e.top;
  if (e.kind == TokenEvent::Kind::kFinished) {
    j["finish"] = int(e.finish);
    j["error"] = e.error;
    j["stats"] = to_json(e.stats);
  }
  return j;
}

inline TokenEvent event_from_json(const json& j) {
  TokenEvent e;
  e.token = j.at("token");
  e.is_eos = j.at("eos");
  e.logprob = j.at("logprob");
  if (j.contains("top")) e.top = j["top"].get<std::vector<std::pair<int, float>>>();
  if (j.contains("finish")) {
    e.kind = TokenEvent::Kind::kFinished;
    e.finish = FinishReason(j["finish"].get<int>());
    e.error = j["error"];
    e.stats = request_stats_from_json(j["stats"]);
  }
  return e;
}

inline json to_json(const WorkerStats& w) {
  return json::array({w.running, w.waiting, w.kv_blocks_used, w.kv_blocks_total, w.prefix_blocks, w.steps, w.step_tokens,
                      w.preemptions, w.ram_hit_tokens, w.disk_hit_tokens, w.busy_s, w.disk_hits, w.disk_misses,
                      w.disk_corrupt, w.disk_writes, w.disk_write_errors, w.disk_files, w.disk_bytes, w.disk_enabled,
                      w.dispatch_bytes, w.combine_bytes, w.moe_layers, w.dispatch_s, w.combine_s,
                      w.kv_handoff_blocks_sent, w.kv_handoff_blocks_received, w.kv_handoff_bytes});
}

inline WorkerStats worker_stats_from_json(const json& j) {
  WorkerStats w;
  w.running = j[0];
  w.waiting = j[1];
  w.kv_blocks_used = j[2];
  w.kv_blocks_total = j[3];
  w.prefix_blocks = j[4];
  w.steps = j[5];
  w.step_tokens = j[6];
  w.preemptions = j[7];
  w.ram_hit_tokens = j[8];
  w.disk_hit_tokens = j[9];
  w.busy_s = j[10];
  w.disk_hits = j[11];
  w.disk_misses = j[12];
  w.disk_corrupt = j[13];
  w.disk_writes = j[14];
  w.disk_write_errors = j[15];
  w.disk_files = j[16];
  w.disk_bytes = j[17];
  w.disk_enabled = j[18];
  w.dispatch_bytes = j[19];
  w.combine_bytes = j[20];
  w.moe_layers = j[21];
  w.dispatch_s = j[22];
  w.combine_s = j[23];
  w.kv_handoff_blocks_sent = j[24];
  w.kv_handoff_blocks_received = j[25];
  w.kv_handoff_bytes = j[26];
  return w;
}

// The first frame of a hand-off: the request as the router sent it, the tokens generated so far, the
// sampler's state and one hash per block frame that follows.
inline json handoff_header(uint64_t id, const json& request, const KvHandOff& h) {
  return {{"type", "handoff"}, {"id", id}, {"request", request}, {"generated", h.generated},
          {"sampler", h.sampler_state}, {"hashes", h.hashes}};
}

// The KvHandOff of a header, without its blocks (they are the message's other frames).
inline KvHandOff handoff_from_json(const json& j) {
  KvHandOff h;
  h.generated = j.at("generated").get<std::vector<int>>();
  h.sampler_state = j.at("sampler").get<std::string>();
  h.hashes = j.at("hashes").get<std::vector<uint64_t>>();
  return h;
}

inline json to_json(const WorkerLimits& l) {
  return {{"max_context", l.max_context}, {"vocab_size", l.vocab_size}, {"eos_token_id", l.eos_token_id}};
}

inline WorkerLimits limits_from_json(const json& j) {
  return {j.at("max_context").get<int>(), j.at("vocab_size").get<int>(), j.at("eos_token_id").get<int>()};
}

}  // namespace epserve::serve::unit_protocol
