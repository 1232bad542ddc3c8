// `epserve run`: generate from a checkpoint (offline), or print its memory plan (--plan).
#include <chrono>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>

#include <omp.h>

#include <cstring>
#include <thread>

#include "base/error.h"
#include "dist/expert_parallel_runner.h"
#include "dist/mpi_comm.h"
#include "cli/command.h"
#include "cli/parse.h"
#include "model/generation.h"
#include "model/weights.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace epserve::cli {
namespace {

using nlohmann::json;

struct RunArgs {
  std::string model_dir, tokens, prompt, batch_file, placement, numerics = "deepseek", attention = "auto", dump_logits;
  int max_tokens = 16;
  double temperature = 0, top_p = 1;
  uint64_t seed = 0;
  bool json_output = false, plan = false, ignore_eos = false, chat = false;
  int ranks = 1, redundant = 0;
};

// Memory per rank: attention, dense layers, shared experts and embeddings replicated (DP); routed
// experts (plus redundant replicas) split over the ranks (EP).
int print_plan(const RunArgs& a) {
  const auto c = model::ModelConfig::load(a.model_dir);
  EPS_REQUIRE(a.ranks >= 1, "--ranks must be >= 1");
  EPS_REQUIRE(a.redundant >= 0, "--redundant must be >= 0");
  const int slots = c.n_routed_experts + a.redundant;
  const double per_rank = double(slots) / a.ranks;
  const double replicated = model::weight_bytes(c, 0);
  const double routed = model::weight_bytes(c, per_rank) - replicated;
  const double kv_per_token = double(c.num_hidden_layers) * (c.kv_lora_rank + c.qk_rope_head_dim) * 2;
  json j = {{"model", a.model_dir},
            {"ranks", a.ranks},
            {"expert_slots_per_layer", slots},
            {"routed_experts_per_rank", per_rank},
            {"replicated_bytes_per_rank", replicated},
            {"routed_expert_bytes_per_rank", routed},
            {"weight_bytes_per_rank", replicated + routed},
            {"kv_cache_bytes_per_token", kv_per_token},
            {"total_weight_bytes", model::weight_bytes(c, c.n_routed_experts)}};
  if (a.json_output) {
    std::printf("%s\n", j.dump(2).c_str());
  } else {
    std::printf("plan for %s over %d rank(s): %d expert slots per MoE layer, %.2f per rank\n", a.model_dir.c_str(),
                a.ranks, slots, per_rank);
    std::printf("  replicated (attention, dense MLPs, shared experts, gates, embeddings): %10.2f GB\n", replicated / 1e9);
    std::printf("  routed experts held by each rank:                                    %10.2f GB\n", routed / 1e9);
    std::printf("  weights per rank:                                                    %10.2f GB\n", (replicated + routed) / 1e9);
    std::printf("  MLA cache per token (BF16, all layers):                              %10.0f B\n", kv_per_token);
  }
  return 0;
}

// Text prompts: plain text gets the BOS token first (as HF's tokenizer for V3 adds it); with --chat
// the text is one user message rendered by the checkpoint's chat template, which writes the BOS.
std::vector<int> encode_prompt(const RunArgs& a, const std::string& text, const model::ModelConfig& c) {
  const auto tok = tokenizer::Tokenizer::load(a.model_dir);
  if (a.chat) {
    const auto tmpl = tokenizer::ChatTemplate::load(a.model_dir);
    return tok.encode(tmpl.render({{"user", text}}, /*add_generation_prompt=*/true));
  }
  std::vector<int> ids{c.bos_token_id};
  tok.encode_append(text, ids);
  return ids;
}

std::vector<std::vector<int>> read_prompts(const RunArgs& a, const model::ModelConfig& c) {
  std::vector<std::vector<int>> prompts;
  if (!a.tokens.empty()) prompts.push_back(parse_token_list(a.tokens, "--tokens"));
  if (!a.prompt.empty()) prompts.push_back(encode_prompt(a, a.prompt, c));
  if (!a.batch_file.empty()) {
    std::ifstream in(a.batch_file);
    EPS_REQUIRE(in, a.batch_file + ": cannot open");
    std::string line;
    int number = 0;
    while (std::getline(in, line)) {
      ++number;
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      const std::string where = a.batch_file + ":" + std::to_string(number);
      if (line.front() == '"') {  // a JSON string: text
        std::string text;
        try {
          text = json::parse(line).get<std::string>();
        } catch (const std::exception&) {
          throw Error(where + ": a line starting with '\"' must be one JSON string");
        }
        prompts.push_back(encode_prompt(a, text, c));
      } else {
        prompts.push_back(parse_token_list(line, where));
      }
    }
  }
  EPS_REQUIRE(!prompts.empty(), "nothing to run: give --tokens, --prompt or --batch-file");
  return prompts;
}

int run(const RunArgs& a) {
  if (a.plan) return print_plan(a);
  EPS_REQUIRE(a.max_tokens >= 0, "--max-tokens must be >= 0");
  EPS_REQUIRE(a.temperature >= 0, "--temperature must be >= 0");
  EPS_REQUIRE(a.top_p > 0 && a.top_p <= 1, "--top-p must be in (0, 1]");
  model::ForwardOptions options;
  options.numerics = parse_numerics(a.numerics);
  options.attention = parse_attention_path(a.attention);
  const auto config = model::ModelConfig::load(a.model_dir);
  const auto all_prompts = read_prompts(a, config);

  // Under mpirun: this process is one rank of an expert-parallel unit. Prompts are spread over the
  // ranks (data parallel attention), routed experts over their slots (expert parallel).
  std::unique_ptr<dist::MpiComm> comm;
  if (dist::launched_by_mpirun()) {
    comm = std::make_unique<dist::MpiComm>();
    const int cores = int(std::max(1u, std::thread::hardware_concurrency()));
    omp_set_num_threads(std::max(1, cores / comm->local_size()));
  }
  const int rank = comm ? comm->rank() : 0, ranks = comm ? comm->size() : 1;
  std::optional<dist::ExpertPlacement> placement;
  if (comm || !a.placement.empty() || a.redundant > 0)
    placement = a.placement.empty() ? dist::ExpertPlacement::even(config, ranks, a.redundant)
                                    : dist::ExpertPlacement::load(a.placement, config, ranks);
  model::LoadOptions load_options;
  load_options.progress = rank == 0;
  if (placement) load_options.owns_expert = [&](int l, int e) { return placement->rank_owns(rank, l, e); };

  const auto t0 = std::chrono::steady_clock::now();
  model::Model m(model::ModelWeights::load(a.model_dir, load_options));
  const double load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  dist::ExpertParallelRunner* ep_runner = nullptr;
  if (comm) {
    auto runner = std::make_unique<dist::ExpertParallelRunner>(*comm, *placement);
    ep_runner = runner.get();
    m.set_expert_runner(std::move(runner));
  }
  std::vector<size_t> mine;  // indices of the prompts this rank serves
  for (size_t i = 0; i < all_prompts.size(); ++i)
    if (int(i % ranks) == rank) mine.push_back(i);
  std::vector<model::GenerationRequest> requests;
  for (size_t i : mine) {
    model::GenerationRequest r;
    r.prompt = all_prompts[i];
    r.max_tokens = a.max_tokens;
    r.sampling = {a.temperature, a.top_p};
    r.seed = a.seed + i;
    r.stop_at_eos = !a.ignore_eos;
    requests.push_back(std::move(r));
  }
  model::GenerationTimings timings;
  model::LiveSync sync;
  if (comm) sync = [&](bool live) { return comm->allreduce_max(live ? 1 : 0) > 0; };
  auto local = model::generate(m, requests, options, !a.dump_logits.empty(), &timings, sync);

  // Rank 0 collects every rank's results, in prompt order.
  std::vector<model::GenerationResult> results(all_prompts.size());
  json ep_stats = nullptr;
  if (!comm) {
    results = std::move(local);
  } else {
    dist::Bytes blob;
    auto put = [&](const void* p, size_t n) { blob.insert(blob.end(), (const uint8_t*)p, (const uint8_t*)p + n); };
    const auto& st = ep_runner->stats();
    put(&st, sizeof st);
    for (size_t j = 0; j < mine.size(); ++j) {
      const uint64_t index = mine[j], nt = local[j].tokens.size(), nl = local[j].logits.size();
      put(&index, 8), put(&nt, 8), put(local[j].tokens.data(), 4 * nt), put(&nl, 8), put(local[j].logits.data(), 4 * nl);
    }
    const auto gathered = comm->gather_to_root(std::move(blob));
    if (rank != 0) return 0;
    ep_stats = json::array();
    for (const auto& b : gathered) {
      size_t at = 0;
      auto get = [&](void* p, size_t n) { std::memcpy(p, b.data() + at, n); at += n; };
      dist::ExchangeStats rs;
      get(&rs, sizeof rs);
      ep_stats.push_back({{"dispatch_bytes", rs.dispatch_bytes}, {"combine_bytes", rs.combine_bytes},
                          {"dispatch_s", rs.dispatch_s}, {"combine_s", rs.combine_s}, {"experts_s", rs.experts_s},
                          {"moe_layer_calls", rs.layers}});
      while (at < b.size()) {
        uint64_t index, nt, nl;
        get(&index, 8);
        get(&nt, 8);
        results[index].tokens.resize(nt);
        get(results[index].tokens.data(), 4 * nt);
        get(&nl, 8);
        results[index].logits.resize(nl);
        get(results[index].logits.data(), 4 * nl);
      }
    }
  }
  if (!a.dump_logits.empty()) {
    std::ofstream out(a.dump_logits, std::ios::binary);
    EPS_REQUIRE(out, a.dump_logits + ": cannot create");
    for (const auto& r : results)
      out.write(reinterpret_cast<const char*>(r.logits.data()), std::streamsize(r.logits.size() * sizeof(float)));
  }
  json t = {{"load_s", load_s},
            {"prefill_s", timings.prefill_s},
            {"decode_s", timings.decode_s},
            {"prefill_tokens", timings.prefill_tokens},
            {"decode_tokens", timings.decode_tokens},
            {"prefill_tokens_per_s", timings.prefill_s > 0 ? timings.prefill_tokens / timings.prefill_s : 0.0},
            {"decode_tokens_per_s", timings.decode_s > 0 ? timings.decode_tokens / timings.decode_s : 0.0},
            {"decode_step_s", timings.decode_step_s},
            {"ranks", ranks}};
  if (!ep_stats.is_null()) t["expert_parallel"] = ep_stats;
  // Text of the generated tokens where the checkpoint has a tokenizer (special tokens dropped).
  std::vector<json> texts(results.size(), nullptr);
  if (std::filesystem::exists(std::filesystem::path(a.model_dir) / "tokenizer.json")) {
    const auto tok = tokenizer::Tokenizer::load(a.model_dir);
    for (size_t i = 0; i < results.size(); ++i) {
      // The embedding has padding rows past the tokenizer's ids (129,280 vs 128,815 in V3); a
      // random checkpoint may pick them, and they have no text.
      std::vector<int> known;
      for (int id : results[i].tokens)
        if (tok.is_known(id)) known.push_back(id);
      texts[i] = tok.decode(known, /*skip_special_tokens=*/true);
    }
  }
  if (a.json_output) {
    json j;
    if (results.size() == 1) {
      j = {{"tokens", results[0].tokens}, {"text", texts[0]}};
    } else {
      j["sequences"] = json::array();
      for (size_t i = 0; i < results.size(); ++i) j["sequences"].push_back({{"tokens", results[i].tokens}, {"text", texts[i]}});
    }
    j["timings"] = t;
    std::printf("%s\n", j.dump().c_str());
  } else {
    for (size_t s = 0; s < results.size(); ++s) {
      const auto& r = results[s];
      for (size_t i = 0; i < r.tokens.size(); ++i) std::printf("%s%d", i ? "," : "", r.tokens[i]);
      std::printf("\n");
      if (texts[s].is_string()) std::printf("%s\n", texts[s].get<std::string>().c_str());
    }
    std::fprintf(stderr, "prefill %ld tokens in %.3f s, decode %ld tokens in %.3f s (%.1f tokens/s)\n",
                 timings.prefill_tokens, timings.prefill_s, timings.decode_tokens, timings.decode_s,
                 t["decode_tokens_per_s"].get<double>());
  }
  return 0;
}

const CommandRegistration registration(
    "run", "Generate from a checkpoint (token ids or text; under mpirun, expert-parallel), or --plan its memory per rank",
    [](CLI::App& app) {
      auto a = std::make_shared<RunArgs>();
      app.add_option("--model", a->model_dir, "checkpoint directory")->required();
      app.add_option("--tokens", a->tokens, "prompt token ids, comma-separated");
      app.add_option("--prompt", a->prompt, "prompt text (tokenized with the checkpoint's tokenizer.json)");
      app.add_flag("--chat", a->chat, "render --prompt as a user message with the chat template");
      app.add_option("--batch-file", a->batch_file,
                     "one prompt per line (comma-separated ids, or a JSON string of text), run as one batch");
      app.add_option("--max-tokens", a->max_tokens, "tokens to generate per prompt")->capture_default_str();
      app.add_option("--temperature", a->temperature, "0 = greedy")->capture_default_str();
      app.add_option("--top-p", a->top_p, "nucleus sampling mass")->capture_default_str();
      app.add_option("--seed", a->seed, "sampling seed (prompt i uses seed + i)");
      app.add_flag("--ignore-eos", a->ignore_eos, "keep generating after the end-of-sequence token");
      app.add_option("--numerics", a->numerics, "deepseek (FP8 activations, BF16) or exact (FP32)")->capture_default_str();
      app.add_option("--attention", a->attention, "auto (naive prefill, absorbed decode), naive or absorbed")
          ->capture_default_str();
      app.add_option("--dump-logits", a->dump_logits,
                     "write float32 LE logits rows: last prompt position, then each generated position");
      app.add_flag("--json", a->json_output, "print {tokens, text, timings} as JSON");
      app.add_flag("--plan", a->plan, "print the memory each rank needs (reads only config.json)");
      app.add_option("--ranks", a->ranks, "ranks for --plan")->capture_default_str();
      app.add_option("--redundant", a->redundant, "redundant expert slots per layer (replicas of experts 0, 1, ...)")
          ->capture_default_str();
      app.add_option("--placement", a->placement,
                     "expert placement JSON: {\"layers\": {\"<layer>\": [expert of each slot]}} (default: even split)");
      return [a] {
        try {
          return run(*a);
        } catch (const Error& e) {
          // One rank failing would leave the others waiting in a collective: end the whole job.
          dist::abort_job_if_running(e.what());
          throw;
        }
      };
    });

}  // namespace
}  // namespace epserve::cli
