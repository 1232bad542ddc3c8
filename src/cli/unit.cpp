// `epserve unit`: one rank of a serving unit, started by the router (serve --unit-ranks R) as
// `mpirun -n R epserve unit ... --router ENDPOINT`. Each rank loads the replicated weights and its
// share of the routed experts, runs the scheduler (serve::EngineWorker) over the requests the router
// gives it, and steps in lockstep with the other ranks (an all-reduce per step; an empty forward when
// it has nothing to do, since every MoE layer is a collective exchange). The main thread talks to
// the router over ZeroMQ (serve/unit_protocol.h); the scheduler thread alone calls MPI.
#include <omp.h>
#include <sys/prctl.h>
#include <signal.h>

#include <chrono>
#include <map>
#include <thread>
#include <zmq.hpp>

#include "base/error.h"
#include "cli/command.h"
#include "cli/parse.h"
#include "dist/expert_parallel_runner.h"
#include "dist/mpi_comm.h"
#include "kvcache/block_hash.h"
#include "model/weights.h"
#include "serve/engine_worker.h"
#include "serve/log.h"
#include "serve/unit_protocol.h"
#include "tokenizer/tokenizer.h"

namespace epserve::cli {
namespace {

namespace fs = std::filesystem;
using clock_type = std::chrono::steady_clock;
using nlohmann::json;

struct UnitArgs {
  std::string model_dir, router, numerics = "deepseek", placement, kv_disk_dir;
  int kv_blocks = 256, step_tokens = 256, max_running = 64, max_queue = 256, max_context = 0, redundant = 0;
  double kv_disk_gb = 10, router_timeout_s = 20;
  bool no_kv_disk = false;
};

int serve_rank(const UnitArgs& a, dist::MpiComm& comm) {
  const int rank = comm.rank(), ranks = comm.size();
  const int cores = int(std::max(1u, std::thread::hardware_concurrency()));
  omp_set_num_threads(std::max(1, cores / comm.local_size()));
  const auto numerics = parse_numerics(a.numerics);
  const auto config = model::ModelConfig::load(a.model_dir);
  const auto placement = a.placement.empty() ? dist::ExpertPlacement::even(config, ranks, a.redundant)
                                             : dist::ExpertPlacement::load(a.placement, config, ranks);
  model::LoadOptions load_options;
  load_options.owns_expert = [&](int l, int e) { return placement.rank_owns(rank, l, e); };
  model::Model model(model::ModelWeights::load(a.model_dir, load_options));
  model.set_expert_runner(std::make_unique<dist::ExpertParallelRunner>(comm, placement));
  const auto tok = tokenizer::Tokenizer::load(a.model_dir);

  serve::EngineWorkerOptions wo;
  wo.numerics = numerics;
  const std::string dtype = numerics == kernels::Numerics::kExact ? "f32" : "bf16";
  wo.kv_blocks = a.kv_blocks;
  wo.step_tokens = a.step_tokens;
  wo.max_running = a.max_running;
  wo.max_waiting = a.max_queue;
  wo.max_context = a.max_context;
  wo.allowed.assign(size_t(config.vocab_size), false);
  for (int id = 0; id < config.vocab_size; ++id) wo.allowed[size_t(id)] = tok.is_known(id);
  wo.model_id = kvcache::model_identity(a.model_dir, dtype);
  wo.disk = !a.no_kv_disk && !a.kv_disk_dir.empty();
  // Each rank keeps its own disk tier (its own LRU and files); a shared directory is the next step.
  if (wo.disk) wo.disk_dir = fs::path(a.kv_disk_dir) / ("rank" + std::to_string(rank) + "of" + std::to_string(ranks));
  wo.disk_capacity_bytes = uint64_t(a.kv_disk_gb * 1e9 / ranks);
  wo.lockstep = [&comm](long local) { return comm.allreduce_max(local); };
  auto worker = std::make_unique<serve::EngineWorker>(model, wo);

  zmq::context_t ctx{1};
  zmq::socket_t sock{ctx, zmq::socket_type::dealer};
  sock.set(zmq::sockopt::routing_id, "rank" + std::to_string(rank));
  sock.set(zmq::sockopt::linger, 1000);
  sock.connect(a.router);
  auto send = [&](const json& j) { sock.send(zmq::buffer(j.dump()), zmq::send_flags::none); };
  send({{"type", "register"}, {"rank", rank}, {"ranks", ranks}, {"limits", serve::unit_protocol::to_json(worker->limits())}});
  serve::log_info("unit_rank_ready", {{"rank", rank}, {"ranks", ranks}, {"kv_blocks", wo.kv_blocks}});

  std::map<uint64_t, std::shared_ptr<serve::EventStream>> streams;
  auto last_heard = clock_type::now(), last_stats = clock_type::time_point{};
  std::string exit_reason;
  for (;;) {
    zmq::pollitem_t items[] = {{sock.handle(), 0, ZMQ_POLLIN, 0}};
    zmq::poll(items, 1, std::chrono::milliseconds(2));
    bool stop = false;
    for (;;) {
      zmq::message_t msg;
      if (!sock.recv(msg, zmq::recv_flags::dontwait)) break;
      last_heard = clock_type::now();
      const json m = json::parse(msg.to_string_view(), nullptr, false);
      if (!m.is_object()) continue;
      const std::string type = m.value("type", "");
      if (type == "submit") {
        const uint64_t id = m.at("id");
        auto req = serve::unit_protocol::request_from_json(m.at("request"));
        req.id = id;
        auto stream = std::make_shared<serve::EventStream>();
        const auto r = worker->submit(std::move(req), stream);
        if (r != serve::SubmitResult::kAccepted) {
          serve::TokenEvent e;
          e.kind = serve::TokenEvent::Kind::kFinished;
          e.finish = serve::FinishReason::kError;
          e.error = r == serve::SubmitResult::kQueueFull ? "the unit's queue is full" : "the unit is shutting down";
          send({{"type", "events"}, {"id", id}, {"events", json::array({serve::unit_protocol::to_json(e)})}});
        } else {
          streams[id] = std::move(stream);
        }
      } else if (type == "cancel") {
        if (auto it = streams.find(m.at("id").get<uint64_t>()); it != streams.end()) it->second->cancel();
      } else if (type == "stop") {
        stop = true;
      }
    }
    for (auto it = streams.begin(); it != streams.end();) {
      auto events = it->second->pop_all(std::chrono::milliseconds(0));
      bool finished = false;
      if (!events.empty()) {
        json list = json::array();
        for (const auto& e : events) {
          finished |= e.kind == serve::TokenEvent::Kind::kFinished;
          list.push_back(serve::unit_protocol::to_json(e));
        }
        send({{"type", "events"}, {"id", it->first}, {"events", std::move(list)}});
      }
      it = finished ? streams.erase(it) : std::next(it);
    }
    const auto now = clock_type::now();
    if (now - last_stats > std::chrono::milliseconds(250)) {
      last_stats = now;
      send({{"type", "stats"}, {"stats", serve::unit_protocol::to_json(worker->stats())}});
    }
    if (stop) break;
    if (const auto f = worker->fatal_error(); !f.empty()) {
      exit_reason = f;
      break;
    }
    if (std::chrono::duration<double>(now - last_heard).count() > a.router_timeout_s) {
      exit_reason = "no word from the router for " + std::to_string(int(a.router_timeout_s)) + " s";
      break;
    }
  }
  if (!exit_reason.empty()) {
    serve::log_warn("unit_rank_exit", {{"rank", rank}, {"reason", exit_reason}});
    sock.close();
    ctx.close();
    dist::abort_job_if_running(exit_reason);  // ends every rank: none may wait on this one
    return 1;
  }
  worker.reset();  // every rank stops in the same lockstep iteration
  serve::log_info("unit_rank_stopped", {{"rank", rank}});
  return 0;
}

int unit(const UnitArgs& a) {
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);  // mpirun gone: so is this rank
  EPS_REQUIRE(dist::launched_by_mpirun(), "epserve unit runs under mpirun (serve --unit-ranks starts it)");
  dist::MpiComm comm;
  try {
    return serve_rank(a, comm);
  } catch (const std::exception& e) {
    dist::abort_job_if_running(e.what());  // a rank that cannot go on ends the unit (mpirun exits, the router sees it)
    throw;
  }
}

const CommandRegistration registration(
    "unit", "one rank of a serving unit (started by `serve --unit-ranks R` under mpirun; not for direct use)",
    [](CLI::App& app) {
      auto a = std::make_shared<UnitArgs>();
      app.add_option("--model", a->model_dir, "checkpoint directory")->required();
      app.add_option("--router", a->router, "the router's ZeroMQ endpoint (tcp://host:port)")->required();
      app.add_option("--numerics", a->numerics, "deepseek or exact")->capture_default_str();
      app.add_option("--placement", a->placement, "expert placement JSON (default: the even split)");
      app.add_option("--redundant", a->redundant, "redundant expert slots per MoE layer")->capture_default_str();
      app.add_option("--kv-blocks", a->kv_blocks, "KV pool size per rank, in 64-token blocks")->capture_default_str();
      app.add_option("--kv-disk-dir", a->kv_disk_dir, "disk tier directory (each rank uses a subdirectory)");
      app.add_option("--kv-disk-gb", a->kv_disk_gb, "disk tier capacity of the whole unit")->capture_default_str();
      app.add_flag("--no-kv-disk", a->no_kv_disk, "keep the KV cache in RAM only");
      app.add_option("--step-tokens", a->step_tokens, "tokens per step per rank")->capture_default_str();
      app.add_option("--max-running", a->max_running, "requests decoding together per rank")->capture_default_str();
      app.add_option("--max-queue", a->max_queue, "requests waiting per rank")->capture_default_str();
      app.add_option("--max-context", a->max_context, "prompt + output tokens per request");
      app.add_option("--router-timeout", a->router_timeout_s, "seconds without a message from the router before the unit ends")
          ->capture_default_str();
      return [a] { return unit(*a); };
    });

}  // namespace
}  // namespace epserve::cli
