// `epserve serve`: the OpenAI-compatible server over one checkpoint: router + single-rank worker in
// this process, or router + the units of a deployment (--deployment FILE; --unit-ranks R for one
// mixed unit of R MPI ranks) reached over ZeroMQ.
#include <pthread.h>
#include <signal.h>

#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <thread>

#include "base/error.h"
#include "cli/command.h"
#include "cli/parse.h"
#include "kvcache/block_hash.h"
#include "model/weights.h"
#include "serve/engine_worker.h"
#include "serve/deployment.h"
#include "serve/deployment_worker.h"
#include "serve/log.h"
#include "serve/router.h"

namespace epserve::cli {
namespace {

namespace fs = std::filesystem;

struct ServeArgs {
  std::string model_dir, host = "127.0.0.1", model_name, api_key, numerics = "deepseek", kv_disk_dir, prices, ledger,
                         port_file;
  int port = 8000, step_tokens = 256, max_running = 64, max_queue = 256, max_context = 0, default_max_tokens = 256,
      http_threads = 160, kv_blocks = 0;
  double kv_memory_gb = 2, kv_disk_gb = 10, request_timeout_s = 600, drain_timeout_s = 30;
  size_t max_body_bytes = 4 << 20;
  bool no_kv_disk = false;
  int unit_ranks = 0, redundant = 0;
  std::string placement, mpirun_args, deployment;
};

fs::path cache_root() {
  if (const char* c = std::getenv("EPSERVE_CACHE"); c && *c) return c;
  const char* home = std::getenv("HOME");
  return fs::path(home && *home ? home : "/tmp") / ".cache" / "epserve";
}

int serve(const ServeArgs& a) {
  // Signals go to one thread (sigwait below), never to a worker or an HTTP thread; a client that
  // hangs up must not kill the server through SIGPIPE.
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGTERM);
  sigaddset(&sigs, SIGINT);
  pthread_sigmask(SIG_BLOCK, &sigs, nullptr);
  signal(SIGPIPE, SIG_IGN);

  EPS_REQUIRE(a.step_tokens >= 1, "--step-tokens must be >= 1");
  EPS_REQUIRE(a.max_running >= 1, "--max-running must be >= 1");
  EPS_REQUIRE(a.max_queue >= 1, "--max-queue must be >= 1");
  EPS_REQUIRE(a.kv_memory_gb > 0 || a.kv_blocks > 0, "--kv-memory-gb must be > 0");
  EPS_REQUIRE(a.default_max_tokens >= 1, "--default-max-tokens must be >= 1");
  const auto numerics = parse_numerics(a.numerics);
  const std::string model_name = a.model_name.empty() ? fs::path(a.model_dir).lexically_normal().filename().string() : a.model_name;
  std::string api_key = a.api_key;
  if (api_key.empty())
    if (const char* k = std::getenv("EPSERVE_API_KEY")) api_key = k;
  const auto prices = a.prices.empty() ? serve::Prices{} : serve::Prices::load(a.prices);

  EPS_REQUIRE(a.unit_ranks >= 0, "--unit-ranks must be >= 0");
  EPS_REQUIRE(a.unit_ranks == 0 || a.deployment.empty(), "--unit-ranks and --deployment: choose one");
  const auto t0 = std::chrono::steady_clock::now();
  // In-process (the default): the model lives here. Otherwise it lives in the units' ranks.
  std::optional<serve::Deployment> deployment;
  if (!a.deployment.empty()) {
    deployment = serve::Deployment::load(a.deployment);
  } else if (a.unit_ranks > 0) {
    deployment = serve::Deployment::single_mixed(a.unit_ranks);
    auto& unit = deployment->units[0];
    unit.redundant = a.redundant;
    unit.placement = a.placement;
    std::istringstream extra(a.mpirun_args);
    for (std::string w; extra >> w;) unit.mpirun_args.push_back(w);
  }
  std::unique_ptr<model::Model> model;
  if (!deployment) model = std::make_unique<model::Model>(model::ModelWeights::load(a.model_dir));
  const auto c = model ? model->config() : model::ModelConfig::load(a.model_dir);
  const auto tok = tokenizer::Tokenizer::load(a.model_dir);
  std::optional<tokenizer::ChatTemplate> chat;
  try {
    chat = tokenizer::ChatTemplate::load(a.model_dir);
  } catch (const Error& e) {
    serve::log_warn("no_chat_template", {{"detail", e.what()}});
  }

  serve::EngineWorkerOptions wo = serve::model_worker_options(a.model_dir, numerics, tok, c.vocab_size);
  const double block_bytes = double(model::kKvBlockTokens) * (c.kv_lora_rank + c.qk_rope_head_dim) *
                             c.num_hidden_layers * (numerics == kernels::Numerics::kExact ? 4 : 2);
  wo.kv_blocks = a.kv_blocks > 0 ? a.kv_blocks : std::max(4, int(std::min(1e6, a.kv_memory_gb * 1e9 / block_bytes)));
  wo.step_tokens = a.step_tokens;
  wo.max_running = a.max_running;
  wo.max_waiting = a.max_queue;
  wo.max_context = a.max_context;
  wo.disk = !a.no_kv_disk;
  wo.disk_dir = a.kv_disk_dir.empty() ? cache_root() / "kv" / kvcache::hash_hex(wo.model_id) : fs::path(a.kv_disk_dir);
  wo.disk_capacity_bytes = uint64_t(a.kv_disk_gb * 1e9);
  std::unique_ptr<serve::Worker> worker_ptr;
  if (model) {
    worker_ptr = std::make_unique<serve::EngineWorker>(*model, wo);
  } else {
    // Each unit is `mpirun -n R epserve unit ...`; its ranks get the pool and limits above unless the
    // deployment file sets them for the unit, and each unit its own disk tier directory.
    serve::DeploymentWorkerOptions uo;
    uo.deployment = *deployment;
    uo.max_per_rank = a.max_running + a.max_queue;
    uo.model_id = wo.model_id;
    const std::string binary = fs::read_symlink("/proc/self/exe").string();
    uo.rank_command = [&, binary](const serve::UnitSpec& u) {
      std::vector<std::string> argv = {
          binary, "unit", "--model", a.model_dir, "--numerics", a.numerics,
          "--kv-blocks", std::to_string(u.kv_blocks > 0 ? u.kv_blocks : wo.kv_blocks),
          "--step-tokens", std::to_string(u.step_tokens > 0 ? u.step_tokens : a.step_tokens),
          "--max-running", std::to_string(u.max_running > 0 ? u.max_running : a.max_running),
          "--max-queue", std::to_string(a.max_queue), "--max-context", std::to_string(a.max_context),
          "--redundant", std::to_string(u.redundant), "--kv-disk-gb", std::to_string(a.kv_disk_gb)};
      if (wo.disk) argv.insert(argv.end(), {"--kv-disk-dir", (wo.disk_dir / u.name).string()});
      if (!u.placement.empty()) argv.insert(argv.end(), {"--placement", u.placement});
      return argv;
    };
    serve::log_info("deployment", {{"units", deployment->summary()}});
    worker_ptr = std::make_unique<serve::DeploymentWorker>(std::move(uo));
  }
  serve::Worker& worker = *worker_ptr;

  serve::Ledger ledger(prices, a.ledger.empty() ? cache_root() / "ledger" / (model_name + ".jsonl") : fs::path(a.ledger));
  serve::RouterOptions ro;
  ro.host = a.host;
  ro.port = a.port;
  ro.model_name = model_name;
  ro.api_key = api_key;
  ro.max_body_bytes = a.max_body_bytes;
  ro.default_max_tokens = a.default_max_tokens;
  ro.request_timeout_s = a.request_timeout_s;
  ro.http_threads = a.http_threads;
  ro.bos_token_id = c.bos_token_id;
  serve::Router router(worker, tok, chat ? &*chat : nullptr, ledger, ro);
  const int port = router.bind();
  EPS_REQUIRE(port > 0, "cannot listen on " + a.host + " (no free port)");
  if (!a.port_file.empty()) {
    const std::string tmp = a.port_file + ".tmp";
    std::ofstream(tmp) << port << "\n";
    fs::rename(tmp, a.port_file);
  }
  serve::log_info("listening", {{"host", a.host},
                                {"port", port},
                                {"model", model_name},
                                {"load_s", std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count()},
                                {"kv_blocks", wo.kv_blocks},
                                {"units", deployment ? deployment->summary() : "in process"},
                                {"max_context", worker.limits().max_context},
                                {"kv_disk_dir", wo.disk ? wo.disk_dir.string() : ""},
                                {"auth", !api_key.empty()},
                                {"prices", prices.to_json()}});

  std::thread http([&] {
    if (!router.serve()) serve::log_warn("listen_failed", {});
  });
  // Totals once a minute, for the reporting side.
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  std::thread minute([&] {
    std::unique_lock lk(mu);
    while (!cv.wait_for(lk, std::chrono::minutes(1), [&] { return done; })) ledger.write_totals("minute");
  });

  int sig = 0;
  sigwait(&sigs, &sig);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(a.drain_timeout_s);
  serve::log_info("draining", {{"signal", sig == SIGTERM ? "SIGTERM" : "SIGINT"}, {"in_flight", router.in_flight()}});
  router.begin_drain();
  worker.drain(std::chrono::time_point_cast<std::chrono::steady_clock::duration>(deadline));
  // Let the HTTP threads write the ends of their responses.
  for (int i = 0; i < 100 && router.in_flight() > 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  ledger.write_totals("shutdown");
  {
    std::lock_guard lk(mu);
    done = true;
  }
  cv.notify_all();
  minute.join();
  router.stop();
  http.join();
  worker_ptr.reset();  // a unit's ranks stop here
  serve::log_info("stopped", ledger.totals().to_json());
  return 0;
}

const CommandRegistration registration(
    "serve", "OpenAI-compatible HTTP server (chat and completions, streaming) with a paged, disk-backed KV cache",
    [](CLI::App& app) {
      auto a = std::make_shared<ServeArgs>();
      app.add_option("--model", a->model_dir, "checkpoint directory (config.json, safetensors, tokenizer files)")->required();
      app.add_option("--host", a->host, "address to listen on")->capture_default_str();
      app.add_option("--port", a->port, "port (0: any free port; see --port-file)")->capture_default_str();
      app.add_option("--port-file", a->port_file, "write the port listened on to this file once ready");
      app.add_option("--served-model-name", a->model_name, "the model id clients ask for (default: the directory's name)");
      app.add_option("--api-key", a->api_key, "require 'Authorization: Bearer KEY' on /v1/ (default: $EPSERVE_API_KEY, else none)");
      app.add_option("--numerics", a->numerics, "deepseek (FP8 activations, BF16 cache) or exact (FP32)")->capture_default_str();
      app.add_option("--kv-memory-gb", a->kv_memory_gb, "RAM for the KV block pool")->capture_default_str();
      app.add_option("--kv-blocks", a->kv_blocks, "KV pool size in 64-token blocks (overrides --kv-memory-gb)");
      app.add_option("--kv-disk-dir", a->kv_disk_dir, "disk tier directory (default: $EPSERVE_CACHE/kv/<model id>)");
      app.add_option("--kv-disk-gb", a->kv_disk_gb, "disk tier capacity (least recently used blocks go first)")->capture_default_str();
      app.add_flag("--no-kv-disk", a->no_kv_disk, "keep the KV cache in RAM only");
      app.add_option("--step-tokens", a->step_tokens, "tokens per model step: running decodes plus prefill chunks")->capture_default_str();
      app.add_option("--max-running", a->max_running, "requests decoding together")->capture_default_str();
      app.add_option("--max-queue", a->max_queue, "requests waiting for admission; more get 429")->capture_default_str();
      app.add_option("--max-context", a->max_context, "prompt + output tokens per request (default: the model's)");
      app.add_option("--default-max-tokens", a->default_max_tokens, "output tokens when a request sets no max_tokens")->capture_default_str();
      app.add_option("--request-timeout", a->request_timeout_s, "seconds a request may take in all, queue included; then it ends with finish_reason \"length\" and finish_details {type: \"timeout\"}")->capture_default_str();
      app.add_option("--drain-timeout", a->drain_timeout_s, "seconds SIGTERM waits for requests in flight")->capture_default_str();
      app.add_option("--max-body-bytes", a->max_body_bytes, "larger request bodies get 413")->capture_default_str();
      app.add_option("--http-threads", a->http_threads, "HTTP worker threads (one per open request)")->capture_default_str();
      app.add_option("--unit-ranks", a->unit_ranks,
                     "run the model in one unit of R MPI ranks (mpirun -n R --oversubscribe epserve unit ...), expert "
                     "parallel, requests spread over the ranks round robin; 0: in this process")
          ->capture_default_str();
      app.add_option("--deployment", a->deployment,
                     "TOML file of units (role mixed / prefill / decode, ranks, hosts, placement, ...), each started "
                     "with mpirun; see docs/ARCHITECTURE.md, Serving");
      app.add_option("--redundant", a->redundant, "with --unit-ranks: redundant expert slots per MoE layer")->capture_default_str();
      app.add_option("--placement", a->placement, "with --unit-ranks: expert placement JSON (default: the even split)");
      app.add_option("--mpirun-args", a->mpirun_args, "with --unit-ranks: more mpirun flags (e.g. '--hostfile FILE')");
      app.add_option("--prices", a->prices,
                     "JSON prices: input_cache_hit_per_million, input_cache_miss_per_million, output_per_million, "
                     "cost_per_rank_hour (defaults: DeepSeek-R1's 0.14 / 0.55 / 2.19 and $2)");
      app.add_option("--ledger", a->ledger, "JSON lines, one per request and one per minute (default: $EPSERVE_CACHE/ledger/<model>.jsonl)");
      return [a] { return serve(*a); };
    });

}  // namespace
}  // namespace epserve::cli
