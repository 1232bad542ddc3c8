// `epserve gen-model`: write a random DeepSeek-V3-layout checkpoint (or only its config: --dry-run).
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>

#include "base/error.h"
#include "cli/command.h"
#include "model/checkpoint_layout.h"
#include "model/generate.h"
#include "model/weights.h"
#include "tokenizer/tokenizer.h"

namespace epserve::cli {
namespace {

struct GenModelArgs {
  std::string preset, out, tokenizer_dir;
  std::vector<std::string> sets;
  uint64_t seed = 0;
  double expert_skew = 0;
  int shard_mb = 512;
  bool single_file = false, no_mtp = false, dry_run = false, no_tokenizer = false;
};

int run_gen_model(const GenModelArgs& a) {
  model::GenerateOptions o;
  o.config = model::ModelConfig::preset(a.preset);
  for (const auto& kv : a.sets) {
    const auto eq = kv.find('=');
    EPS_REQUIRE(eq != std::string::npos, "--set expects key=value, got \"" + kv + "\"");
    o.config.set_field(kv.substr(0, eq), kv.substr(eq + 1));
  }
  EPS_REQUIRE(a.expert_skew >= 0, "--expert-skew must be >= 0");
  EPS_REQUIRE(a.shard_mb > 0, "--shard-mb must be positive");
  o.seed = a.seed;
  o.expert_skew = a.expert_skew;
  o.shard_bytes = size_t(a.shard_mb) << 20;
  o.single_file = a.single_file;
  o.include_mtp = !a.no_mtp;
  if (!a.no_tokenizer) o.tokenizer_dir = a.tokenizer_dir.empty() ? tokenizer::default_tokenizer_dir() : std::filesystem::path(a.tokenizer_dir);
  const double bytes = model::weight_bytes(o.config, o.config.n_routed_experts);
  if (a.dry_run) {
    if (!a.out.empty()) {
      std::filesystem::create_directories(a.out);
      std::ofstream(std::filesystem::path(a.out) / "config.json") << o.config.to_json().dump(2) << "\n";
    }
    std::printf("{\"preset\": \"%s\", \"weight_bytes\": %.0f, \"wrote\": \"%s\"}\n", a.preset.c_str(), bytes,
                a.out.empty() ? "nothing" : "config.json only");
    return 0;
  }
  EPS_REQUIRE(!a.out.empty(), "--out DIR is required (or --dry-run)");
  EPS_REQUIRE(bytes < 64e9, "this config needs " + std::to_string(bytes / 1e9) +
                                " GB of weights; use --dry-run to write only its config.json");
  model::generate_checkpoint(o, a.out);
  std::fprintf(stderr, "gen-model: wrote %s (%.1f MB of weights)\n", a.out.c_str(), bytes / 1e6);
  return 0;
}

const CommandRegistration registration(
    "gen-model", "Write a random checkpoint in DeepSeek-V3's HuggingFace layout (FP8 + block scales)",
    [](CLI::App& app) {
      auto a = std::make_shared<GenModelArgs>();
      app.add_option("--preset", a->preset, "tiny (tests), bench (benchmarks) or v3-671b (planning)")->required();
      app.add_option("--out", a->out, "output checkpoint directory");
      app.add_option("--seed", a->seed, "random seed (the output is a function of it)");
      app.add_option("--set", a->sets, "override a config.json field: key=value (repeatable)");
      app.add_option("--expert-skew", a->expert_skew, "Zipf exponent of expert popularity (0: none)");
      app.add_option("--shard-mb", a->shard_mb, "largest shard in MiB")->capture_default_str();
      app.add_flag("--single-file", a->single_file, "one model.safetensors, no index");
      app.add_flag("--no-mtp", a->no_mtp, "omit the MTP block (layer num_hidden_layers)");
      app.add_option("--tokenizer-dir", a->tokenizer_dir, "where tokenizer.json and tokenizer_config.json are");
      app.add_flag("--no-tokenizer", a->no_tokenizer, "do not copy the tokenizer files");
      app.add_flag("--dry-run", a->dry_run, "write no weights (config.json only, if --out is given)");
      return [a] { return run_gen_model(*a); };
    });

}  // namespace
}  // namespace epserve::cli
