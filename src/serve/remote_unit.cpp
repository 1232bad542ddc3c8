#include "serve/remote_unit.h"

#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <condition_variable>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <thread>
#include <zmq.hpp>
#include <zmq_addon.hpp>

#include "base/error.h"
#include "serve/log.h"
#include "serve/unit_protocol.h"

extern char** environ;

namespace epserve::serve {

namespace {
using clock_type = std::chrono::steady_clock;
using nlohmann::json;

struct Pending {
  std::shared_ptr<EventStream> events;
  int rank = 0;
  bool cancel_sent = false;
};
}  // namespace

struct RemoteUnit::Impl {
  RemoteUnitOptions o;
  zmq::context_t ctx{1};
  zmq::socket_t sock{ctx, zmq::socket_type::router};
  std::string endpoint;
  pid_t pid = -1;

  mutable std::mutex mu;
  std::condition_variable cv;
  std::vector<bool> registered;
  int registered_count = 0;
  WorkerLimits lim;
  std::vector<WorkerStats> rank_stats;
  std::vector<clock_type::time_point> last_heard;
  std::map<uint64_t, Pending> pending;
  std::vector<int> in_flight;
  std::deque<std::pair<int, std::string>> outbox;
  uint64_t next_id = 1;
  int next_rank = 0;
  bool draining = false, stopping = false, exited = false;
  int exit_status = 0;
  std::string failed;
  clock_type::time_point kill_at{};  // SIGKILL mpirun's group then, if it is still there
  bool quit = false;
  std::thread io;

  explicit Impl(RemoteUnitOptions opt) : o(std::move(opt)) {
    EPS_REQUIRE(o.ranks >= 1, "a unit needs at least one rank");
    registered.assign(size_t(o.ranks), false);
    rank_stats.resize(size_t(o.ranks));
    last_heard.assign(size_t(o.ranks), clock_type::now());
    in_flight.assign(size_t(o.ranks), 0);
    sock.set(zmq::sockopt::linger, 0);
    sock.bind("tcp://127.0.0.1:*");
    endpoint = sock.get(zmq::sockopt::last_endpoint);
    launch();
    io = std::thread([this] { run(); });
  }

  ~Impl() { shutdown(); }

  void launch() {
    std::vector<std::string> args = {"mpirun", "--oversubscribe", "-n", std::to_string(o.ranks)};
    args.insert(args.end(), o.mpirun_args.begin(), o.mpirun_args.end());
    args.insert(args.end(), o.rank_command.begin(), o.rank_command.end());
    args.push_back("--router");
    args.push_back(endpoint);
    std::vector<std::string> env;
    for (char** e = environ; *e; ++e) env.emplace_back(*e);
    if (::geteuid() == 0) {  // OpenMPI refuses root unless told (CI runs as root)
      env.emplace_back("OMPI_ALLOW_RUN_AS_ROOT=1");
      env.emplace_back("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1");
    }
    std::vector<char*> argv, envp;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    for (auto& e : env) envp.push_back(e.data());
    envp.push_back(nullptr);
    log_info("unit_launch", {{"ranks", o.ranks}, {"router", endpoint}});  // the ranks carry the endpoint in argv
    pid = ::fork();
    EPS_REQUIRE(pid >= 0, std::string("fork failed: ") + std::strerror(errno));
    if (pid == 0) {
      ::setpgid(0, 0);                       // mpirun and its ranks: one group to end together
      ::prctl(PR_SET_PDEATHSIG, SIGTERM);    // the router gone: the unit goes too
      sigset_t none;
      sigemptyset(&none);
      ::sigprocmask(SIG_SETMASK, &none, nullptr);  // serve blocks SIGTERM for its sigwait thread
      ::signal(SIGPIPE, SIG_DFL);
      ::execvpe("mpirun", argv.data(), envp.data());
      ::_exit(127);
    }
    ::setpgid(pid, pid);
    log_info("unit_started", {{"mpirun_pid", pid}});
  }

  void send_to(int rank, const std::string& text) {
    const std::string id = "rank" + std::to_string(rank);
    try {
      sock.send(zmq::buffer(id), zmq::send_flags::sndmore | zmq::send_flags::dontwait);
      sock.send(zmq::buffer(text), zmq::send_flags::dontwait);
    } catch (const zmq::error_t& e) {
      log_warn("unit_send_failed", {{"rank", rank}, {"error", e.what()}});
    }
  }

  // Under mu. Ends every request in flight and ends the job.
  void fail(const std::string& why) {
    if (!failed.empty()) return;
    failed = why;
    log_warn("unit_failed", {{"reason", why}, {"in_flight", pending.size()}});
    for (auto& [id, p] : pending) {
      TokenEvent e;
      e.kind = TokenEvent::Kind::kFinished;
      e.finish = FinishReason::kError;
      e.error = "unit failed: " + why;
      p.events->push(std::move(e));
    }
    pending.clear();
    std::fill(in_flight.begin(), in_flight.end(), 0);
    if (!exited) {
      ::kill(-pid, SIGTERM);
      kill_at = clock_type::now() + std::chrono::seconds(3);
    }
    cv.notify_all();
  }

  void handle(const std::string& who, const json& m) {
    if (who.rfind("rank", 0) != 0) return;
    const int rank = std::atoi(who.c_str() + 4);
    if (rank < 0 || rank >= o.ranks) return;
    std::lock_guard lk(mu);
    last_heard[size_t(rank)] = clock_type::now();
    const std::string type = m.at("type");
    if (type == "register") {
      if (!registered[size_t(rank)]) ++registered_count;
      registered[size_t(rank)] = true;
      lim = unit_protocol::limits_from_json(m.at("limits"));
      EPS_REQUIRE(m.at("ranks").get<int>() == o.ranks, "a rank of another unit registered");
      cv.notify_all();
    } else if (type == "stats") {
      rank_stats[size_t(rank)] = unit_protocol::worker_stats_from_json(m.at("stats"));
    } else if (type == "events") {
      auto it = pending.find(m.at("id").get<uint64_t>());
      if (it == pending.end()) return;
      bool finished = false;
      for (const auto& j : m.at("events")) {
        auto e = unit_protocol::event_from_json(j);
        finished |= e.kind == TokenEvent::Kind::kFinished;
        it->second.events->push(std::move(e));
      }
      if (finished) {
        --in_flight[size_t(it->second.rank)];
        pending.erase(it);
        cv.notify_all();
      }
    }
  }

  void check_health() {
    std::lock_guard lk(mu);
    int status = 0;
    if (!exited && ::waitpid(pid, &status, WNOHANG) == pid) {
      exited = true;
      exit_status = status;
      ::kill(-pid, SIGKILL);  // ranks left behind, if any
      const std::string how = WIFEXITED(status) ? "exited with status " + std::to_string(WEXITSTATUS(status))
                                                : "was killed by signal " + std::to_string(WTERMSIG(status));
      if (!stopping) fail("mpirun " + how);
      cv.notify_all();
    }
    const auto now = clock_type::now();
    if (!exited && kill_at != clock_type::time_point{} && now > kill_at) {
      ::kill(-pid, SIGKILL);
      kill_at = {};
    }
    if (registered_count == o.ranks && failed.empty() && !stopping)
      for (int r = 0; r < o.ranks; ++r)
        if (std::chrono::duration<double>(now - last_heard[size_t(r)]).count() > o.heartbeat_timeout_s) {
          fail("rank " + std::to_string(r) + " silent for " + std::to_string(int(o.heartbeat_timeout_s)) + " s");
          break;
        }
  }

  void run() {
    auto last_beat = clock_type::now();
    for (;;) {
      {
        std::lock_guard lk(mu);
        if (quit) break;
      }
      zmq::pollitem_t items[] = {{sock.handle(), 0, ZMQ_POLLIN, 0}};
      try {
        zmq::poll(items, 1, std::chrono::milliseconds(2));
        for (;;) {
          std::vector<zmq::message_t> parts;
          if (!zmq::recv_multipart(sock, std::back_inserter(parts), zmq::recv_flags::dontwait)) break;
          if (parts.size() != 2) continue;
          try {
            handle(parts[0].to_string(), json::parse(parts[1].to_string_view()));
          } catch (const std::exception& e) {
            log_warn("unit_bad_message", {{"error", e.what()}});
          }
        }
      } catch (const zmq::error_t& e) {
        log_warn("unit_socket", {{"error", e.what()}});
      }
      std::deque<std::pair<int, std::string>> out;
      {
        std::lock_guard lk(mu);
        out.swap(outbox);
        for (auto& [id, p] : pending)
          if (!p.cancel_sent && p.events->cancelled()) {
            p.cancel_sent = true;
            out.emplace_back(p.rank, json{{"type", "cancel"}, {"id", id}}.dump());
          }
      }
      for (auto& [rank, text] : out) send_to(rank, text);
      if (clock_type::now() - last_beat > std::chrono::milliseconds(500)) {
        last_beat = clock_type::now();
        for (int r = 0; r < o.ranks; ++r) send_to(r, R"({"type":"heartbeat"})");
      }
      check_health();
    }
  }

  void wait_registered() {
    std::unique_lock lk(mu);
    const auto deadline = clock_type::now() + std::chrono::duration<double>(o.start_timeout_s);
    cv.wait_until(lk, deadline, [&] { return registered_count == o.ranks || !failed.empty() || exited; });
    if (registered_count == o.ranks && failed.empty()) return;
    const std::string why = !failed.empty() ? failed : exited ? "mpirun exited" : "the ranks did not register in time";
    lk.unlock();
    throw Error("the unit did not start: " + why + " (see its output above)");
  }

  void shutdown() {
    std::unique_lock lk(mu);
    stopping = true;
    if (!exited) {
      for (int r = 0; r < o.ranks; ++r) outbox.emplace_back(r, R"({"type":"stop"})");
      if (!cv.wait_for(lk, std::chrono::seconds(20), [&] { return exited; })) {
        log_warn("unit_stop_timeout", {});
        ::kill(-pid, SIGTERM);
        if (!cv.wait_for(lk, std::chrono::seconds(3), [&] { return exited; })) {
          ::kill(-pid, SIGKILL);
          cv.wait_for(lk, std::chrono::seconds(3), [&] { return exited; });
        }
      }
    }
    quit = true;
    lk.unlock();
    if (io.joinable()) io.join();
    if (!exited && pid > 0) ::waitpid(pid, nullptr, 0);
    log_info("unit_stopped", {{"status", WIFEXITED(exit_status) ? WEXITSTATUS(exit_status) : -1}});
  }
};

RemoteUnit::RemoteUnit(RemoteUnitOptions options) : impl_(std::make_unique<Impl>(std::move(options))) {
  impl_->wait_registered();
}

RemoteUnit::~RemoteUnit() = default;

SubmitResult RemoteUnit::submit(GenerateRequest request, std::shared_ptr<EventStream> events) {
  auto& m = *impl_;
  std::lock_guard lk(m.mu);
  if (!m.failed.empty() || m.draining || m.stopping) return SubmitResult::kShuttingDown;
  int rank = -1;
  for (int i = 0; i < m.o.ranks && rank < 0; ++i) {
    const int r = (m.next_rank + i) % m.o.ranks;
    if (m.in_flight[size_t(r)] < m.o.max_per_rank) rank = r;
  }
  if (rank < 0) return SubmitResult::kQueueFull;
  m.next_rank = (rank + 1) % m.o.ranks;
  const uint64_t id = m.next_id++;
  m.outbox.emplace_back(rank, json{{"type", "submit"}, {"id", id}, {"request", unit_protocol::to_json(request)}}.dump());
  m.pending[id] = Pending{std::move(events), rank, false};
  ++m.in_flight[size_t(rank)];
  return SubmitResult::kAccepted;
}

WorkerLimits RemoteUnit::limits() const {
  std::lock_guard lk(impl_->mu);
  return impl_->lim;
}

WorkerStats RemoteUnit::stats() const {
  std::lock_guard lk(impl_->mu);
  WorkerStats t;
  for (const auto& w : impl_->rank_stats) {
    t.running += w.running;
    t.waiting += w.waiting;
    t.kv_blocks_used += w.kv_blocks_used;
    t.kv_blocks_total += w.kv_blocks_total;
    t.prefix_blocks += w.prefix_blocks;
    t.steps += w.steps;
    t.step_tokens += w.step_tokens;
    t.preemptions += w.preemptions;
    t.ram_hit_tokens += w.ram_hit_tokens;
    t.disk_hit_tokens += w.disk_hit_tokens;
    t.busy_s += w.busy_s;
    t.disk_hits += w.disk_hits;
    t.disk_misses += w.disk_misses;
    t.disk_corrupt += w.disk_corrupt;
    t.disk_writes += w.disk_writes;
    t.disk_write_errors += w.disk_write_errors;
    t.disk_files += w.disk_files;
    t.disk_bytes += w.disk_bytes;
    t.disk_enabled = t.disk_enabled || w.disk_enabled;
  }
  return t;
}

void RemoteUnit::drain(std::chrono::steady_clock::time_point deadline) {
  auto& m = *impl_;
  std::unique_lock lk(m.mu);
  m.draining = true;
  m.cv.wait_until(lk, deadline, [&] { return m.pending.empty() || !m.failed.empty(); });
  if (m.pending.empty()) return;
  for (auto& [id, p] : m.pending) p.events->cancel();  // the I/O thread sends the cancels
  m.cv.wait_for(lk, std::chrono::seconds(3), [&] { return m.pending.empty(); });
  for (auto& [id, p] : m.pending) {
    TokenEvent e;
    e.kind = TokenEvent::Kind::kFinished;
    e.finish = FinishReason::kCancelled;
    p.events->push(std::move(e));
  }
  m.pending.clear();
}

std::string RemoteUnit::failure() const {
  std::lock_guard lk(impl_->mu);
  return impl_->failed;
}

pid_t RemoteUnit::mpirun_pid() const { return impl_->pid; }

}  // namespace epserve::serve
