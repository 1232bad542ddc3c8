// `epserve unit`: one rank of a serving unit, started by the router (serve --unit-ranks R) as
// `mpirun -n R epserve unit ... --router ENDPOINT`. Each rank loads the replicated weights and its
// share of the routed experts, runs the scheduler (serve::EngineWorker) over the requests the router
// gives it, and steps in lockstep with the other ranks (an all-reduce per step; an empty forward when
// it has nothing to do, since every MoE layer is a collective exchange). The main thread talks to
// the router over ZeroMQ (serve/unit_protocol.h); the scheduler thread alone calls MPI.
#include <arpa/inet.h>
#include <netdb.h>
#include <omp.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <deque>
#include <map>
#include <set>
#include <thread>
#include <zmq.hpp>
#include <zmq_addon.hpp>

#include "base/error.h"
#include "cli/command.h"
#include "cli/parse.h"
#include "dist/expert_parallel_runner.h"
#include "dist/mpi_comm.h"
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
  std::string model_dir, router, numerics = "deepseek", placement, kv_disk_dir, role = "mixed";
  int unit_id = 0, kv_blocks = 256, step_tokens = 256, max_running = 64, max_queue = 256, max_context = 0, redundant = 0;
  double kv_disk_gb = 10, router_timeout_s = 20;
  bool no_kv_disk = false;
};

// The local address this host uses to reach the router's host (a UDP "connect" sends nothing; it
// only picks the route), so that a socket bound there is reachable from where the router is.
std::string local_address_towards(const std::string& endpoint) {
  // endpoint: tcp://HOST:PORT
  const auto host_begin = endpoint.find("://") + 3, colon = endpoint.rfind(':');
  const std::string host = endpoint.substr(host_begin, colon - host_begin), port = endpoint.substr(colon + 1);
  addrinfo hints{}, *res = nullptr;
  hints.ai_family = AF_INET;
  hints.ai_socktype = SOCK_DGRAM;
  EPS_REQUIRE(::getaddrinfo(host.c_str(), port.c_str(), &hints, &res) == 0 && res, "cannot resolve the router's host " + host);
  const int fd = ::socket(AF_INET, SOCK_DGRAM, 0);
  sockaddr_in local{};
  socklen_t len = sizeof local;
  const bool ok = fd >= 0 && ::connect(fd, res->ai_addr, res->ai_addrlen) == 0 &&
                  ::getsockname(fd, reinterpret_cast<sockaddr*>(&local), &len) == 0;
  ::freeaddrinfo(res);
  if (fd >= 0) ::close(fd);
  EPS_REQUIRE(ok, "no route to the router's host " + host);
  char text[INET_ADDRSTRLEN] = {};
  ::inet_ntop(AF_INET, &local.sin_addr, text, sizeof text);
  return text;
}

// Ids seen lately (bounded): a decode rank remembers cancels for requests still in hand-off.
class RecentIds {
 public:
  void add(uint64_t id) {
    if (set_.insert(id).second) order_.push_back(id);
    if (order_.size() > 4096) {
      set_.erase(order_.front());
      order_.pop_front();
    }
  }
  bool take(uint64_t id) { return set_.erase(id) > 0; }

 private:
  std::set<uint64_t> set_;
  std::deque<uint64_t> order_;
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
  auto runner = std::make_unique<dist::ExpertParallelRunner>(comm, placement);
  const dist::ExpertParallelRunner* exchange = runner.get();
  model.set_expert_runner(std::move(runner));
  const auto tok = tokenizer::Tokenizer::load(a.model_dir);

  serve::EngineWorkerOptions wo = serve::model_worker_options(a.model_dir, numerics, tok, config.vocab_size);
  wo.kv_blocks = a.kv_blocks;
  wo.step_tokens = a.step_tokens;
  wo.max_running = a.max_running;
  wo.max_waiting = a.max_queue;
  wo.max_context = a.max_context;
  wo.disk = !a.no_kv_disk && !a.kv_disk_dir.empty();
  // Each rank keeps its own disk tier (its own LRU and files); a shared directory is the next step.
  if (wo.disk) wo.disk_dir = fs::path(a.kv_disk_dir) / ("rank" + std::to_string(rank) + "of" + std::to_string(ranks));
  wo.disk_capacity_bytes = uint64_t(a.kv_disk_gb * 1e9 / ranks);
  wo.lockstep = [&comm](long local) { return comm.allreduce_max(local); };
  wo.hand_off = a.role == "prefill";
  wo.add_stats = [exchange](serve::WorkerStats& w) {  // the scheduler thread, which also runs the exchange
    const auto& x = exchange->stats();
    w.dispatch_bytes = uint64_t(x.dispatch_bytes);
    w.combine_bytes = uint64_t(x.combine_bytes);
    w.dispatch_s = x.dispatch_s;
    w.combine_s = x.combine_s;
    w.moe_layers = uint64_t(x.layers);
  };
  auto worker = std::make_unique<serve::EngineWorker>(model, wo);

  zmq::context_t ctx{1};
  zmq::socket_t sock{ctx, zmq::socket_type::dealer};
  sock.set(zmq::sockopt::routing_id, serve::unit_protocol::rank_identity(a.unit_id, rank));
  sock.set(zmq::sockopt::linger, 1000);
  sock.connect(a.router);
  auto send = [&](const json& j) { sock.send(zmq::buffer(j.dump()), zmq::send_flags::none); };

  // Disaggregation. A decode rank binds a socket for KV hand-offs on the address it reaches the
  // router from (so prefill ranks on other hosts can reach it too); a prefill rank connects one
  // socket per decode rank it hands requests to.
  const bool prefill = a.role == "prefill", decode = a.role == "decode";
  zmq::socket_t kv_in{ctx, zmq::socket_type::router};
  std::string kv_endpoint;
  if (decode) {
    kv_in.set(zmq::sockopt::linger, 0);
    kv_in.bind("tcp://" + local_address_towards(a.router) + ":*");
    kv_endpoint = kv_in.get(zmq::sockopt::last_endpoint);
  }
  std::map<std::string, zmq::socket_t> kv_out;  // decode endpoint → socket
  struct Target {
    std::string endpoint;
    json request;
  };
  std::map<uint64_t, Target> targets;  // prefill: where each request goes on
  RecentIds cancelled_early;           // decode: cancels that came before their hand-off

  send({{"type", "register"}, {"rank", rank}, {"ranks", ranks}, {"role", a.role}, {"kv_endpoint", kv_endpoint},
        {"limits", serve::unit_protocol::to_json(worker->limits())}});
  serve::log_info("unit_rank_ready", {{"rank", rank}, {"ranks", ranks}, {"role", a.role}, {"kv_blocks", wo.kv_blocks}});

  std::map<uint64_t, std::shared_ptr<serve::EventStream>> streams;
  auto finish_with_error = [&](uint64_t id, const std::string& why) {
    serve::TokenEvent e;
    e.kind = serve::TokenEvent::Kind::kFinished;
    e.finish = serve::FinishReason::kError;
    e.error = why;
    send({{"type", "events"}, {"id", id}, {"events", json::array({serve::unit_protocol::to_json(e)})}});
  };
  auto submit = [&](serve::GenerateRequest req) {
    const uint64_t id = req.id;
    auto stream = std::make_shared<serve::EventStream>();
    const auto r = worker->submit(std::move(req), stream);
    if (r != serve::SubmitResult::kAccepted)
      finish_with_error(id, r == serve::SubmitResult::kQueueFull ? "the unit's queue is full" : "the unit is shutting down");
    else
      streams[id] = std::move(stream);
  };
  // Sends a finished prefill's KV and request to its decode rank: false when the socket refuses.
  auto hand_off = [&](uint64_t id, const serve::KvHandOff& h) {
    auto t = targets.find(id);
    if (t == targets.end()) return false;
    auto [it, fresh] = kv_out.try_emplace(t->second.endpoint, ctx, zmq::socket_type::dealer);
    if (fresh) {
      it->second.set(zmq::sockopt::linger, 0);
      it->second.set(zmq::sockopt::sndtimeo, 5000);  // a decode rank that takes nothing is a failure, not a hang
      it->second.connect(t->second.endpoint);
    }
    const json header = serve::unit_protocol::handoff_header(id, t->second.request, h);
    try {
      if (!it->second.send(zmq::buffer(header.dump()), h.blocks.empty() ? zmq::send_flags::none : zmq::send_flags::sndmore))
        return false;
      for (size_t b = 0; b < h.blocks.size(); ++b)
        if (!it->second.send(zmq::buffer(h.blocks[b]), b + 1 < h.blocks.size() ? zmq::send_flags::sndmore : zmq::send_flags::none))
          return false;
    } catch (const zmq::error_t& e) {
      serve::log_warn("kv_handoff_send_failed", {{"id", id}, {"error", e.what()}});
      return false;
    }
    targets.erase(t);
    return true;
  };
  auto receive_handoff = [&](std::vector<zmq::message_t>& parts) {
    // [sender identity, header, block...]
    if (parts.size() < 2) return;
    const json header = json::parse(parts[1].to_string_view(), nullptr, false);
    if (!header.is_object()) return;
    const uint64_t id = header.value("id", uint64_t(0));
    try {
      auto h = std::make_shared<serve::KvHandOff>(serve::unit_protocol::handoff_from_json(header));
      EPS_REQUIRE(h->hashes.size() == parts.size() - 2, "the hand-off's block count does not match its header");
      for (size_t b = 2; b < parts.size(); ++b)
        h->blocks.emplace_back(parts[b].data<uint8_t>(), parts[b].data<uint8_t>() + parts[b].size());
      auto req = serve::unit_protocol::request_from_json(header.at("request"));
      req.id = id;
      req.continues = std::move(h);
      if (cancelled_early.take(id)) {
        serve::TokenEvent e;
        e.kind = serve::TokenEvent::Kind::kFinished;
        e.finish = serve::FinishReason::kCancelled;
        send({{"type", "events"}, {"id", id}, {"events", json::array({serve::unit_protocol::to_json(e)})}});
        return;
      }
      submit(std::move(req));
    } catch (const std::exception& e) {
      finish_with_error(id, std::string("bad KV hand-off: ") + e.what());
    }
  };

  auto last_heard = clock_type::now(), last_stats = clock_type::time_point{};
  std::string exit_reason;
  for (;;) {
    zmq::pollitem_t items[] = {{sock.handle(), 0, ZMQ_POLLIN, 0}, {kv_in.handle(), 0, ZMQ_POLLIN, 0}};
    zmq::poll(items, decode ? 2 : 1, std::chrono::milliseconds(2));
    bool stop = false;
    for (;;) {
      zmq::message_t msg;
      if (!sock.recv(msg, zmq::recv_flags::dontwait)) break;
      last_heard = clock_type::now();
      const json m = json::parse(msg.to_string_view(), nullptr, false);
      if (!m.is_object()) continue;
      const std::string type = m.value("type", "");
      if (type == "submit") {
        auto req = serve::unit_protocol::request_from_json(m.at("request"));
        req.id = m.at("id");
        if (prefill) targets[req.id] = {m.at("decode").at("endpoint"), m.at("request")};
        submit(std::move(req));
      } else if (type == "cancel") {
        const uint64_t id = m.at("id");
        if (auto it = streams.find(id); it != streams.end()) it->second->cancel();
        else if (decode) cancelled_early.add(id);
      } else if (type == "stop") {
        stop = true;
      }
    }
    while (decode) {
      std::vector<zmq::message_t> parts;
      if (!zmq::recv_multipart(kv_in, std::back_inserter(parts), zmq::recv_flags::dontwait)) break;
      receive_handoff(parts);
    }
    for (auto it = streams.begin(); it != streams.end();) {
      auto events = it->second->pop_all(std::chrono::milliseconds(0));
      bool finished = false;
      if (!events.empty()) {
        json list = json::array();
        for (auto& e : events) {
          finished |= e.kind == serve::TokenEvent::Kind::kFinished;
          if (e.finish == serve::FinishReason::kHandedOff && !hand_off(it->first, *e.handoff)) {
            e.finish = serve::FinishReason::kError;
            e.error = "the KV hand-off to the decode unit failed";
          }
          list.push_back(serve::unit_protocol::to_json(e));
        }
        send({{"type", "events"}, {"id", it->first}, {"events", std::move(list)}});
      }
      if (finished) targets.erase(it->first);
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
    kv_in.close();
    kv_out.clear();
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
  EPS_REQUIRE(dist::launched_by_mpirun(), "epserve unit runs under mpirun (serve --unit-ranks / --deployment starts it)");
  EPS_REQUIRE(a.role == "mixed" || a.role == "prefill" || a.role == "decode",
              "--role must be mixed, prefill or decode, not '" + a.role + "'");
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
      app.add_option("--unit-id", a->unit_id, "this unit's index in the deployment")->capture_default_str();
      app.add_option("--role", a->role, "mixed, prefill (requests end after their first token, KV handed to a decode "
                                       "rank) or decode (takes hand-offs)")->capture_default_str();
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
