#include "serve/deployment_worker.h"

#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <filesystem>
#include <limits>
#include <map>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <zmq.hpp>
#include <zmq_addon.hpp>

#include "base/error.h"
#include "kvcache/block_hash.h"
#include "model/kv_cache.h"
#include "serve/log.h"
#include "serve/unit_protocol.h"

extern char** environ;

namespace epserve::serve {

namespace {
using clock_type = std::chrono::steady_clock;
using nlohmann::json;

double seconds(clock_type::duration d) { return std::chrono::duration<double>(d).count(); }

struct RankState {
  bool registered = false;
  clock_type::time_point last_heard = clock_type::now();
  WorkerStats stats;
  int in_flight = 0;         // requests it holds or has reserved (a decode rank from the prefill on)
  std::string kv_endpoint;   // decode ranks: where prefill ranks send KV
};

struct UnitState {
  UnitSpec spec;
  pid_t pid = -1;
  bool exited = false;
  int exit_status = 0;
  std::string failed;
  clock_type::time_point kill_at{};  // SIGKILL the group then, if still there
  std::vector<RankState> ranks;
  int next_rank = 0;
  uint64_t retried = 0, restarts = 0;
  int failures_in_a_row = 0;                // the next restart waits 2^n s (at most 30 s)
  clock_type::time_point launched_at{}, restart_at{};
  std::string session_dir;  // OpenMPI's, removed when the unit is gone
  bool ready() const {
    return std::all_of(ranks.begin(), ranks.end(), [](const RankState& r) { return r.registered; });
  }
  bool up() const { return ready() && failed.empty() && !exited; }
  const char* state() const { return up() ? "up" : failed.empty() && !exited ? "starting" : "failed"; }
};

struct Place {
  int unit = -1, rank = -1;
  bool valid() const { return unit >= 0; }
  bool operator==(const Place&) const = default;
};

struct Pending {
  std::shared_ptr<EventStream> events;
  GenerateRequest request;  // kept for a retry
  // Worked out once, before the lock (both are O(prompt)): the request as the ranks take it, and
  // the names of the prompt's blocks a rank could have cached (full ones before its last token).
  json request_json;
  std::vector<kvcache::BlockHash> block_names;
  Place runs;               // mixed or prefill rank
  Place decode;             // disaggregated: the decode rank chosen at submit
  bool handed_off = false;  // the decode rank has it
  bool any_token = false;   // a token reached the client: a retry would repeat it
  bool cancel_sent = false;
  int retries = 0;
  RequestStats prefill_stats;
  clock_type::time_point first_token_at{};
  std::vector<TokenEvent> early;  // the decode rank's events before the prefill rank's report
};
}  // namespace

struct DeploymentWorker::Impl {
  DeploymentWorkerOptions o;
  zmq::context_t ctx{1};
  zmq::socket_t sock{ctx, zmq::socket_type::router};
  std::string endpoint;

  mutable std::mutex mu;
  std::condition_variable cv;
  std::vector<UnitState> units;
  WorkerLimits lim;
  bool have_limits = false;
  std::map<uint64_t, Pending> pending;
  std::deque<std::pair<Place, std::string>> outbox;
  uint64_t next_id = 1;
  std::map<UnitRole, int> next_unit;  // round robin per role
  // Prefix-cache affinity: the rank each block name (a prompt's full blocks) was last sent to,
  // forgotten oldest first beyond o.affinity_blocks.
  std::unordered_map<kvcache::BlockHash, Place> block_home;
  std::deque<kvcache::BlockHash> block_order;
  bool draining = false, stopping = false, quit = false;
  bool started = false;  // every unit came up once; from then on a failed unit is launched again
  std::thread io;

  explicit Impl(DeploymentWorkerOptions opt) : o(std::move(opt)) {
    EPS_REQUIRE(!o.deployment.units.empty(), "a deployment needs at least one unit");
    for (const auto& spec : o.deployment.units) {
      UnitState u;
      u.spec = spec;
      u.ranks.resize(size_t(spec.ranks));
      units.push_back(std::move(u));
    }
    sock.set(zmq::sockopt::linger, 0);
    sock.set(zmq::sockopt::router_mandatory, true);  // a send to a rank that is gone fails instead of vanishing
    sock.bind("tcp://" + o.deployment.router_address + ":*");
    endpoint = sock.get(zmq::sockopt::last_endpoint);
    for (size_t u = 0; u < units.size(); ++u) launch(int(u));
    io = std::thread([this] { run(); });
  }

  ~Impl() { shutdown(); }

  bool disaggregated() const { return o.deployment.disaggregated(); }

  void launch(int u) {
    auto& unit = units[size_t(u)];
    const auto& spec = unit.spec;
    std::vector<std::string> args = {"mpirun", "--oversubscribe", "-n", std::to_string(spec.ranks)};
    if (!spec.hosts.empty()) {
      std::string hosts;
      for (const auto& h : spec.hosts) hosts += (hosts.empty() ? "" : ",") + h;
      args.insert(args.end(), {"--host", hosts});
    }
    args.insert(args.end(), spec.mpirun_args.begin(), spec.mpirun_args.end());
    const auto rank_command = o.rank_command(spec);
    args.insert(args.end(), rank_command.begin(), rank_command.end());
    args.insert(args.end(), {"--unit-id", std::to_string(u), "--role", to_string(spec.role), "--router", endpoint});
    std::vector<std::string> env;
    for (char** e = environ; *e; ++e) env.emplace_back(*e);
    // Each mpirun gets its own session directory: two started at once race to create the shared
    // default one (/tmp/ompi.<host>.<uid>) and the loser exits ("mkdir ... File exists").
    unit.session_dir = (std::filesystem::temp_directory_path() /
                        ("epserve-mpi-" + std::to_string(::getpid()) + "-u" + std::to_string(u))).string();
    std::filesystem::create_directories(unit.session_dir);
    env.emplace_back("OMPI_MCA_orte_tmpdir_base=" + unit.session_dir);
    if (::geteuid() == 0) {  // OpenMPI refuses root unless told (CI runs as root)
      env.emplace_back("OMPI_ALLOW_RUN_AS_ROOT=1");
      env.emplace_back("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1");
    }
    std::vector<char*> argv, envp;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    for (auto& e : env) envp.push_back(e.data());
    envp.push_back(nullptr);
    // The ranks carry the endpoint in their argv (tests find the unit's processes by it).
    log_info("unit_launch", {{"unit", spec.name}, {"role", to_string(spec.role)}, {"ranks", spec.ranks}, {"router", endpoint}});
    const pid_t pid = ::fork();
    EPS_REQUIRE(pid >= 0, std::string("fork failed: ") + std::strerror(errno));
    if (pid == 0) {
      ::setpgid(0, 0);                     // mpirun and its ranks: one group to end together
      ::prctl(PR_SET_PDEATHSIG, SIGTERM);  // the router gone: the unit goes too
      sigset_t none;
      sigemptyset(&none);
      ::sigprocmask(SIG_SETMASK, &none, nullptr);  // serve blocks SIGTERM for its sigwait thread
      ::signal(SIGPIPE, SIG_DFL);
      ::execvpe("mpirun", argv.data(), envp.data());
      ::_exit(127);
    }
    ::setpgid(pid, pid);
    unit.pid = pid;
    unit.launched_at = clock_type::now();
    log_info("unit_started", {{"unit", spec.name}, {"mpirun_pid", pid}});
  }

  // ---- sending (the I/O thread sends; others queue under mu) ----
  void send_to(Place p, const std::string& text) {
    const std::string id = unit_protocol::rank_identity(p.unit, p.rank);
    try {
      sock.send(zmq::buffer(id), zmq::send_flags::sndmore | zmq::send_flags::dontwait);
      sock.send(zmq::buffer(text), zmq::send_flags::dontwait);
    } catch (const zmq::error_t& e) {
      log_warn("unit_send_failed", {{"unit", units[size_t(p.unit)].spec.name}, {"rank", p.rank}, {"error", e.what()}});
    }
  }

  RankState& rank_of(Place p) { return units[size_t(p.unit)].ranks[size_t(p.rank)]; }

  // Under mu. A rank of an up unit of `role` with room, units and then ranks round robin.
  Place pick(UnitRole role) {
    const int n = int(units.size());
    for (int i = 0; i < n; ++i) {
      const int u = (next_unit[role] + i) % n;
      auto& unit = units[size_t(u)];
      if (unit.spec.role != role || !unit.up()) continue;
      for (int j = 0; j < unit.spec.ranks; ++j) {
        const int r = (unit.next_rank + j) % unit.spec.ranks;
        if (unit.ranks[size_t(r)].in_flight >= o.max_per_rank) continue;
        unit.next_rank = (r + 1) % unit.spec.ranks;
        next_unit[role] = (u + 1) % n;
        return {u, r};
      }
    }
    return {};
  }

  bool role_up(UnitRole role) const {
    return std::any_of(units.begin(), units.end(), [&](const UnitState& u) { return u.spec.role == role && u.up(); });
  }

  bool can_serve() const {
    return disaggregated() ? role_up(UnitRole::kPrefill) && role_up(UnitRole::kDecode) : role_up(UnitRole::kMixed);
  }

  bool has_room(Place p) const {
    const auto& u = units[size_t(p.unit)];
    return u.up() && u.ranks[size_t(p.rank)].in_flight < o.max_per_rank;
  }

  // Under mu. The rank of `role` that was sent the longest prefix of these block names, unless it
  // holds more than kAffinitySlack requests over the least busy rank of that role (a prefix every
  // request shares, such as a system prompt, must not pile all of them onto one rank).
  static constexpr int kAffinitySlack = 4;
  Place cached_home(const std::vector<kvcache::BlockHash>& hashes, UnitRole role) const {
    int least = std::numeric_limits<int>::max();
    for (const auto& u : units)
      if (u.spec.role == role && u.up())
        for (const auto& r : u.ranks) least = std::min(least, r.in_flight);
    for (size_t i = hashes.size(); i-- > 0;)
      if (auto it = block_home.find(hashes[i]); it != block_home.end()) {
        const Place p = it->second;
        if (units[size_t(p.unit)].spec.role == role && has_room(p) &&
            units[size_t(p.unit)].ranks[size_t(p.rank)].in_flight <= least + kAffinitySlack)
          return p;
        return {};  // the longest prefix's rank is busy: spread the load instead
      }
    return {};
  }

  void remember(const std::vector<kvcache::BlockHash>& hashes, Place p) {
    for (auto h : hashes) {
      auto [it, fresh] = block_home.insert_or_assign(h, p);
      if (fresh) block_order.push_back(h);
    }
    while (block_order.size() > o.affinity_blocks) {
      block_home.erase(block_order.front());
      block_order.pop_front();
    }
  }

  // Under mu. Places a request (fresh or retried) and queues its submit; kAccepted or why not.
  SubmitResult place(uint64_t id, Pending& p) {
    if (!can_serve()) return SubmitResult::kShuttingDown;
    const UnitRole first_role = disaggregated() ? UnitRole::kPrefill : UnitRole::kMixed;
    Place home = cached_home(p.block_names, first_role);
    json msg = {{"type", "submit"}, {"id", id}, {"request", p.request_json}};
    if (disaggregated()) {
      const Place d = pick(UnitRole::kDecode), f = home.valid() ? home : pick(UnitRole::kPrefill);
      if (!d.valid() || !f.valid()) return SubmitResult::kQueueFull;
      p.runs = f;
      p.decode = d;
      ++rank_of(d).in_flight;
      msg["decode"] = {{"endpoint", rank_of(d).kv_endpoint}};
    } else {
      const Place m = home.valid() ? home : pick(UnitRole::kMixed);
      if (!m.valid()) return SubmitResult::kQueueFull;
      p.runs = m;
    }
    ++rank_of(p.runs).in_flight;
    remember(p.block_names, p.runs);
    outbox.emplace_back(p.runs, msg.dump());
    return SubmitResult::kAccepted;
  }

  // Under mu. Gives back what a request held on ranks (it ended, or moves elsewhere).
  void release(const Pending& p) {
    if (!p.handed_off && p.runs.valid()) --rank_of(p.runs).in_flight;
    if (p.decode.valid()) --rank_of(p.decode).in_flight;
  }

  void end_with_error(Pending& p, const std::string& why) {
    TokenEvent e;
    e.kind = TokenEvent::Kind::kFinished;
    e.finish = FinishReason::kError;
    e.error = why;
    p.events->push(std::move(e));
  }

  // Under mu. One event of request `id`; true when it ended the request.
  bool deliver(uint64_t id, Pending& p, TokenEvent e) {
    if (e.kind == TokenEvent::Kind::kFinished && e.finish == FinishReason::kHandedOff) {
      p.handed_off = true;
      --rank_of(p.runs).in_flight;
      p.prefill_stats = e.stats;
      auto early = std::move(p.early);
      p.early.clear();
      for (auto& x : early)
        if (deliver(id, p, std::move(x))) return true;
      return false;
    }
    if (e.kind == TokenEvent::Kind::kToken) {
      if (!p.any_token) p.first_token_at = clock_type::now();
      p.any_token = true;
      p.events->push(std::move(e));
      return false;
    }
    if (p.handed_off) {  // the request's cost is the prefill's plus the decode's
      const RequestStats& f = p.prefill_stats;
      RequestStats& s = e.stats;
      s.prompt_tokens = f.prompt_tokens;
      s.cached_tokens = f.cached_tokens;  // what the client's prompt hit; the hand-off's blocks are not a hit
      s.disk_cached_tokens = f.disk_cached_tokens;
      s.queue_s = f.queue_s;
      s.ttft_s = f.ttft_s;
      s.decode_s = p.any_token ? seconds(clock_type::now() - p.first_token_at) : 0;
      s.rank_seconds += f.rank_seconds;
      s.kv_tokens_sum += f.kv_tokens_sum;
      s.preemptions += f.preemptions;
    }
    release(p);
    p.events->push(std::move(e));
    return true;
  }

  void handle(const std::string& who, const json& m) {
    int u = -1, r = -1;
    if (std::sscanf(who.c_str(), "u%dr%d", &u, &r) != 2 || u < 0 || u >= int(units.size())) return;
    std::lock_guard lk(mu);
    auto& unit = units[size_t(u)];
    if (r < 0 || r >= unit.spec.ranks) return;
    auto& rank = unit.ranks[size_t(r)];
    rank.last_heard = clock_type::now();
    const std::string type = m.at("type");
    if (type == "register") {
      if (m.at("ranks").get<int>() != unit.spec.ranks || m.at("role").get<std::string>() != to_string(unit.spec.role)) {
        fail_unit(u, "a rank registered with another unit's size or role");
        return;
      }
      rank.registered = true;
      rank.kv_endpoint = m.value("kv_endpoint", "");
      log_info("rank_registered", {{"unit", unit.spec.name}, {"rank", r}, {"kv_endpoint", rank.kv_endpoint}});
      if (unit.ready()) {
        unit.failures_in_a_row = 0;
        if (unit.restarts > 0) log_info("unit_up_again", {{"unit", unit.spec.name}, {"restarts", unit.restarts}});
      }
      const auto l = unit_protocol::limits_from_json(m.at("limits"));
      if (!have_limits || l.max_context < lim.max_context) lim = l;  // the tightest unit bounds a request
      have_limits = true;
      cv.notify_all();
    } else if (type == "stats") {
      rank.stats = unit_protocol::worker_stats_from_json(m.at("stats"));
    } else if (type == "events") {
      const uint64_t id = m.at("id").get<uint64_t>();
      auto it = pending.find(id);
      if (it == pending.end()) return;
      Pending& p = it->second;
      const Place from{u, r};
      for (const auto& j : m.at("events")) {
        auto e = unit_protocol::event_from_json(j);
        if (from == p.decode && !p.handed_off) {  // ahead of the prefill rank's report: hold
          p.early.push_back(std::move(e));
          continue;
        }
        if (deliver(id, p, std::move(e))) {
          pending.erase(it);
          cv.notify_all();
          return;
        }
      }
    }
  }

  // Under mu. A unit failed: end its process group; move or end the requests it held.
  void fail_unit(int u, const std::string& why) {
    auto& unit = units[size_t(u)];
    if (!unit.failed.empty()) return;
    unit.failed = why;
    if (!unit.exited) {
      ::kill(-unit.pid, SIGTERM);
      unit.kill_at = clock_type::now() + std::chrono::seconds(3);
    }
    if (unit.spec.restart && started && !stopping) {
      const int delay_s = std::min(30, 1 << std::min(unit.failures_in_a_row, 5));
      unit.restart_at = clock_type::now() + std::chrono::seconds(delay_s);
      ++unit.failures_in_a_row;
    }
    int retried = 0, ended = 0;
    std::vector<std::pair<uint64_t, Pending>> moved;
    for (auto it = pending.begin(); it != pending.end();) {
      Pending& p = it->second;
      const bool holds = (p.runs.unit == u && !p.handed_off) || p.decode.unit == u;
      if (!holds) {
        ++it;
        continue;
      }
      // The other unit involved (the prefill or the decode side) forgets it.
      auto cancel_elsewhere = [&](uint64_t id) {
        if (p.runs.valid() && p.runs.unit != u && !p.handed_off) outbox.emplace_back(p.runs, json{{"type", "cancel"}, {"id", id}}.dump());
        if (p.decode.valid() && p.decode.unit != u) outbox.emplace_back(p.decode, json{{"type", "cancel"}, {"id", id}}.dump());
      };
      cancel_elsewhere(it->first);
      release(p);
      if (!p.any_token && p.retries < 2 && !stopping && !p.events->cancelled()) {
        ++p.retries;
        p.handed_off = false;
        p.early.clear();
        p.runs = p.decode = {};
        moved.emplace_back(it->first, std::move(p));
      } else {
        end_with_error(p, "unit " + unit.spec.name + " failed: " + why);
        ++ended;
      }
      it = pending.erase(it);
    }
    for (auto& [old_id, p] : moved) {  // under a new id: late events of the old one are ignored
      const uint64_t id = next_id++;
      const auto r = place(id, p);
      if (r == SubmitResult::kAccepted) {
        ++retried;
        ++unit.retried;
        log_info("request_retried", {{"request", p.request.id}, {"from_unit", unit.spec.name}, {"attempt", p.retries}});
        pending.emplace(id, std::move(p));
      } else {
        end_with_error(p, "unit " + unit.spec.name + " failed (" + why + ") and no other unit could take the request");
        ++ended;
      }
    }
    log_warn("unit_failed", {{"unit", unit.spec.name}, {"reason", why}, {"retried", retried}, {"ended", ended},
                             {"serving", can_serve()}, {"restart", unit.restart_at != clock_type::time_point{}}});
    cv.notify_all();
  }

  // Under mu. A failed unit (its mpirun gone) starts again: fresh rank state, the same argv.
  void relaunch(int u) {
    auto& unit = units[size_t(u)];
    for (auto& r : unit.ranks) r = RankState{};
    unit.failed.clear();
    unit.exited = false;
    unit.kill_at = unit.restart_at = {};
    ++unit.restarts;
    log_info("unit_restart", {{"unit", unit.spec.name}, {"restarts", unit.restarts}});
    try {
      launch(u);
    } catch (const std::exception& e) {
      unit.exited = true;
      fail_unit(u, std::string("relaunch failed: ") + e.what());
    }
  }

  void check_health() {
    std::lock_guard lk(mu);
    const auto now = clock_type::now();
    for (size_t u = 0; u < units.size(); ++u) {
      auto& unit = units[u];
      int status = 0;
      if (!unit.exited && ::waitpid(unit.pid, &status, WNOHANG) == unit.pid) {
        unit.exited = true;
        unit.exit_status = status;
        ::kill(-unit.pid, SIGKILL);  // ranks left behind, if any
        const std::string how = WIFEXITED(status) ? "exited with status " + std::to_string(WEXITSTATUS(status))
                                                  : "was killed by signal " + std::to_string(WTERMSIG(status));
        if (!stopping) fail_unit(int(u), "mpirun " + how);
        cv.notify_all();
      }
      if (!unit.exited && unit.kill_at != clock_type::time_point{} && now > unit.kill_at) {
        ::kill(-unit.pid, SIGKILL);
        unit.kill_at = {};
      }
      if (unit.exited && unit.restart_at != clock_type::time_point{} && now >= unit.restart_at && !stopping)
        relaunch(int(u));
      if (started && !unit.ready() && unit.failed.empty() && !unit.exited && !stopping &&
          seconds(now - unit.launched_at) > o.start_timeout_s)
        fail_unit(int(u), "the ranks did not register within " + std::to_string(int(o.start_timeout_s)) + " s");
      if (unit.up() && !stopping)
        for (int r = 0; r < unit.spec.ranks; ++r)
          if (seconds(now - unit.ranks[size_t(r)].last_heard) > o.heartbeat_timeout_s) {
            fail_unit(int(u), "rank " + std::to_string(r) + " silent for " + std::to_string(int(o.heartbeat_timeout_s)) + " s");
            break;
          }
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
      std::deque<std::pair<Place, std::string>> out;
      {
        std::lock_guard lk(mu);
        for (auto& [id, p] : pending)
          if (!p.cancel_sent && p.events->cancelled()) {  // the client went away: both sides forget it
            p.cancel_sent = true;
            const std::string cancel = json{{"type", "cancel"}, {"id", id}}.dump();
            if (!p.handed_off) outbox.emplace_back(p.runs, cancel);
            if (p.decode.valid()) outbox.emplace_back(p.decode, cancel);
          }
        out.swap(outbox);
      }
      for (auto& [place, text] : out) send_to(place, text);
      if (clock_type::now() - last_beat > std::chrono::milliseconds(500)) {
        last_beat = clock_type::now();
        for (size_t u = 0; u < units.size(); ++u)
          for (int r = 0; r < units[u].spec.ranks; ++r)
            if (units[u].ranks[size_t(r)].registered && units[u].failed.empty() && !units[u].exited)
              send_to({int(u), r}, R"({"type":"heartbeat"})");
      }
      check_health();
    }
  }

  void wait_registered() {
    std::unique_lock lk(mu);
    const auto deadline = clock_type::now() + std::chrono::duration<double>(o.start_timeout_s);
    auto settled = [&] {
      return std::all_of(units.begin(), units.end(),
                         [&](const UnitState& u) { return u.ready() || !u.failed.empty() || u.exited; });
    };
    cv.wait_until(lk, deadline, settled);
    for (const auto& u : units)
      if (!u.up()) {
        const std::string why = !u.failed.empty() ? u.failed : u.exited ? "mpirun exited" : "the ranks did not register in time";
        const std::string name = u.spec.name;
        lk.unlock();
        throw Error("unit " + name + " did not start: " + why + " (see its output above)");
      }
    started = true;
  }

  void shutdown() {
    std::unique_lock lk(mu);
    stopping = true;
    for (size_t u = 0; u < units.size(); ++u)
      if (!units[u].exited)
        for (int r = 0; r < units[u].spec.ranks; ++r) outbox.emplace_back(Place{int(u), r}, R"({"type":"stop"})");
    auto all_exited = [&] { return std::all_of(units.begin(), units.end(), [](const UnitState& u) { return u.exited; }); };
    if (!cv.wait_for(lk, std::chrono::seconds(20), all_exited)) {
      log_warn("unit_stop_timeout", {});
      for (auto& u : units)
        if (!u.exited) ::kill(-u.pid, SIGTERM);
      if (!cv.wait_for(lk, std::chrono::seconds(3), all_exited)) {
        for (auto& u : units)
          if (!u.exited) ::kill(-u.pid, SIGKILL);
        cv.wait_for(lk, std::chrono::seconds(3), all_exited);
      }
    }
    quit = true;
    lk.unlock();
    if (io.joinable()) io.join();
    for (auto& u : units) {
      if (!u.exited && u.pid > 0) ::waitpid(u.pid, &u.exit_status, 0);
      std::error_code ec;
      std::filesystem::remove_all(u.session_dir, ec);
      log_info("unit_stopped", {{"unit", u.spec.name}, {"status", WIFEXITED(u.exit_status) ? WEXITSTATUS(u.exit_status) : -1}});
    }
  }
};

DeploymentWorker::DeploymentWorker(DeploymentWorkerOptions options) : impl_(std::make_unique<Impl>(std::move(options))) {
  impl_->wait_registered();
}

DeploymentWorker::~DeploymentWorker() = default;

SubmitResult DeploymentWorker::submit(GenerateRequest request, std::shared_ptr<EventStream> events) {
  auto& m = *impl_;
  Pending p;
  p.events = std::move(events);
  p.request = std::move(request);
  p.request_json = unit_protocol::to_json(p.request);
  const auto& prompt = p.request.prompt;
  const size_t usable = prompt.empty() ? 0 : (prompt.size() - 1) / model::kKvBlockTokens;  // as try_admit
  kvcache::extend_chain(p.block_names, m.o.model_id, std::span<const int>(prompt).first(usable * model::kKvBlockTokens),
                        model::kKvBlockTokens);
  std::lock_guard lk(m.mu);
  if (m.draining || m.stopping) return SubmitResult::kShuttingDown;
  const uint64_t id = m.next_id++;
  const auto r = m.place(id, p);
  if (r == SubmitResult::kAccepted) m.pending.emplace(id, std::move(p));
  return r;
}

WorkerLimits DeploymentWorker::limits() const {
  std::lock_guard lk(impl_->mu);
  return impl_->lim;
}

WorkerStats DeploymentWorker::stats() const {
  std::lock_guard lk(impl_->mu);
  WorkerStats t;
  for (const auto& u : impl_->units)
    for (const auto& r : u.ranks)  // counters and gauges add up; a bool (disk tier on) becomes "any"
      for_each_worker_stat([](auto& sum, const auto& v) { sum = std::decay_t<decltype(sum)>(sum + v); }, t, r.stats);
  return t;
}

void DeploymentWorker::drain(std::chrono::steady_clock::time_point deadline) {
  auto& m = *impl_;
  std::unique_lock lk(m.mu);
  m.draining = true;
  m.cv.wait_until(lk, deadline, [&] { return m.pending.empty() || !m.can_serve(); });
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

std::string DeploymentWorker::failure() const {
  std::lock_guard lk(impl_->mu);
  if (impl_->can_serve()) return {};
  std::string why;
  for (const auto& u : impl_->units) {
    if (u.up()) continue;
    std::string line = "unit " + u.spec.name;
    if (u.failed.empty() && !u.exited)
      line += " is starting (restart " + std::to_string(u.restarts) + ")";
    else
      line += " failed: " + (u.failed.empty() ? std::string("mpirun exited") : u.failed) +
              (u.restart_at != clock_type::time_point{} ? " (restarting)" : "");
    why += (why.empty() ? "" : "; ") + line;
  }
  return why;
}

std::vector<UnitStatus> DeploymentWorker::units() const {
  std::lock_guard lk(impl_->mu);
  std::vector<UnitStatus> out;
  for (const auto& u : impl_->units) {
    UnitStatus s{u.spec.name, to_string(u.spec.role), u.state(), u.spec.ranks, 0, u.retried, u.restarts, u.failed};
    for (const auto& r : u.ranks) s.in_flight += r.in_flight;
    if (s.failed.empty() && u.exited) s.failed = "mpirun exited";
    out.push_back(std::move(s));
  }
  return out;
}

pid_t DeploymentWorker::mpirun_pid(int unit) const {
  std::lock_guard lk(impl_->mu);
  return impl_->units.at(size_t(unit)).pid;
}

}  // namespace epserve::serve
