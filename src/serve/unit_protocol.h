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

// Stats travel as arrays in for_each_*_stat order.
template <class Stats, class Visit>
json stats_to_json(const Stats& s, Visit visit) {
  json a = json::array();
  visit([&](const auto& v) { a.push_back(v); }, s);
  return a;
}

template <class Stats, class Visit>
Stats stats_from_json(const json& j, Visit visit) {
  Stats s;
  size_t i = 0;
  visit([&](auto& v) { v = j.at(i++).get<std::decay_t<decltype(v)>>(); }, s);
  return s;
}

inline json to_json(const RequestStats& s) {
  return stats_to_json(s, [](auto&& f, auto&... x) { for_each_request_stat(f, x...); });
}

inline RequestStats request_stats_from_json(const json& j) {
  return stats_from_json<RequestStats>(j, [](auto&& f, auto&... x) { for_each_request_stat(f, x...); });
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
  return stats_to_json(w, [](auto&& f, auto&... x) { for_each_worker_stat(f, x...); });
}

inline WorkerStats worker_stats_from_json(const json& j) {
  return stats_from_json<WorkerStats>(j, [](auto&& f, auto&... x) { for_each_worker_stat(f, x...); });
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
