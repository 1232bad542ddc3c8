#include "serve/router.h"

#include <dirent.h>
#include <httplib.h>
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <random>

#include "base/error.h"
#include "serve/log.h"
#include "serve/openai_api.h"
#include "serve/text_stream.h"

namespace epserve::serve {

using nlohmann::json;
using clock_type = std::chrono::steady_clock;

namespace {

double seconds_since(clock_type::time_point t) { return std::chrono::duration<double>(clock_type::now() - t).count(); }

// Constant-time comparison (the time does not depend on where the strings differ).
bool equal_constant_time(const std::string& a, const std::string& b) {
  const size_t n = std::max(a.size(), b.size());
  unsigned diff = unsigned(a.size() ^ b.size());
  for (size_t i = 0; i < n; ++i) {
    const unsigned char x = i < a.size() ? a[i] : 0, y = i < b.size() ? b[i] : 0;
    diff |= unsigned(x ^ y);
  }
  return diff == 0;
}

void send_json(httplib::Response& res, int status, const json& body) {
  res.status = status;
  res.set_content(body.dump(-1, ' ', false, json::error_handler_t::replace), "application/json");
}

void send_error(httplib::Response& res, const ApiError& e) { send_json(res, e.status, e.body()); }

std::string random_id(const char* prefix) {
  static std::mutex mu;
  static std::mt19937_64 rng{std::random_device{}()};
  std::lock_guard lk(mu);
  char buf[32];
  std::snprintf(buf, sizeof buf, "%016llx%08x", static_cast<unsigned long long>(rng()), unsigned(rng()));
  return std::string(prefix) + buf;
}

// cpp-httplib 0.11 gives a plain handler no access to its connection. The request does carry both
// ends' addresses, which name one TCP connection, so the handler finds its socket among the
// process's descriptors (the socket stays open until the handler returns). -1 when not found.
bool socket_address(const sockaddr_storage& a, socklen_t len, std::string& ip, int& port) {
  if (a.ss_family == AF_INET) port = ntohs(reinterpret_cast<const sockaddr_in*>(&a)->sin_port);
  else if (a.ss_family == AF_INET6) port = ntohs(reinterpret_cast<const sockaddr_in6*>(&a)->sin6_port);
  else return false;
  char host[NI_MAXHOST];
  if (getnameinfo(reinterpret_cast<const sockaddr*>(&a), len, host, sizeof host, nullptr, 0, NI_NUMERICHOST) != 0) return false;
  ip = host;
  return true;
}

int find_client_socket(const httplib::Request& req) {
  DIR* d = ::opendir("/proc/self/fd");
  if (!d) return -1;
  int found = -1;
  while (const dirent* e = ::readdir(d)) {
    char* end = nullptr;
    const long fd = std::strtol(e->d_name, &end, 10);
    if (end == e->d_name || *end != '\0' || fd == ::dirfd(d)) continue;
    sockaddr_storage peer{}, local{};
    socklen_t pl = sizeof peer, ll = sizeof local;
    if (::getpeername(int(fd), reinterpret_cast<sockaddr*>(&peer), &pl) != 0) continue;  // not a connected socket
    std::string ip;
    int port = -1;
    if (!socket_address(peer, pl, ip, port) || port != req.remote_port || ip != req.remote_addr) continue;
    if (::getsockname(int(fd), reinterpret_cast<sockaddr*>(&local), &ll) != 0) continue;
    if (!socket_address(local, ll, ip, port) || port != req.local_port || ip != req.local_addr) continue;
    found = int(fd);
    break;
  }
  ::closedir(d);
  return found;
}

// True once the peer has closed or reset the connection. A client waiting for its response sends
// nothing, so readable-with-no-bytes (EOF), a hang-up or an error all mean that it left.
bool client_gone(int fd) {
  pollfd p{fd, short(POLLIN | POLLRDHUP), 0};
  if (::poll(&p, 1, 0) <= 0) return false;
  if (p.revents & (POLLHUP | POLLERR | POLLNVAL | POLLRDHUP)) return true;
  if (p.revents & POLLIN) {
    char c;
    const ssize_t n = ::recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
    return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
  }
  return false;
}

std::string sse(const json& j) { return "data: " + j.dump(-1, ' ', false, json::error_handler_t::replace) + "\n\n"; }

}  // namespace

struct Router::Impl {
  Router* self;
  Worker& worker;
  const tokenizer::Tokenizer& tok;
  const tokenizer::ChatTemplate* chat;
  Ledger& ledger;
  RouterOptions o;
  httplib::Server http;
  std::mutex counts_mu;
  std::map<int, uint64_t> status_counts;
  int64_t created = std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();

  Impl(Router* s, Worker& w, const tokenizer::Tokenizer& t, const tokenizer::ChatTemplate* c, Ledger& l, RouterOptions opt)
      : self(s), worker(w), tok(t), chat(c), ledger(l), o(std::move(opt)) {}

  // ---- one generation request ----
  struct Session {
    Impl* r;
    ApiRequest api;
    std::string id;
    int64_t created;
    std::vector<int> prompt;
    std::shared_ptr<EventStream> events = std::make_shared<EventStream>();
    std::unique_ptr<TextAssembler> text;
    clock_type::time_point start = clock_type::now();
    std::string content, reasoning;
    int completion_tokens = 0;
    std::string finish_reason;
    std::string error;  // the worker failed the request
    bool timed_out = false;  // ended by the server's request timeout (finish_reason "length" + finish_details)
    RequestStats stats;
    bool finished = false, stopped = false, recorded = false, sent_role = false, done_sent = false;
    json logprob_items = json::array();  // chat: content items; completions: built at the end
    std::vector<std::pair<int, TokenEvent>> token_log;  // (offset in text) for completions logprobs
    size_t chunk_logprob_from = 0;

    json token_logprob(const TokenEvent& e) const {
      auto entry = [&](int id, float lp) {
        const std::string& b = r->tok.token_bytes(id);
        json bytes = json::array();
        for (unsigned char c : b) bytes.push_back(int(c));
        return json{{"token", r->tok.decode(std::vector<int>{id})}, {"logprob", lp}, {"bytes", bytes}};
      };
      json j = entry(e.token, e.logprob);
      j["top_logprobs"] = json::array();
      for (const auto& [id, lp] : e.top) j["top_logprobs"].push_back(entry(id, lp));
      return j;
    }

    // Applies one worker event; returns the text that became final (for streaming).
    TextPiece apply(const TokenEvent& e) {
      TextPiece piece;
      if (e.kind == TokenEvent::Kind::kToken) {
        if (stopped) return piece;
        ++completion_tokens;
        if (api.logprobs) {
          if (api.chat) logprob_items.push_back(token_logprob(e));
          token_log.emplace_back(int(content.size()), e);
        }
        piece = text->push(e.token);
        if (piece.stopped) {
          stopped = true;
          finish_reason = "stop";
          events->cancel();  // the worker frees the sequence at its next step
        }
      } else {
        finished = true;
        stats = e.stats;
        if (!stopped) {
          piece = text->finish();
          switch (e.finish) {
            case FinishReason::kStop: finish_reason = "stop"; break;
            case FinishReason::kError: finish_reason = "error"; error = e.error.empty() ? "generation failed" : e.error; break;
            default: finish_reason = "length"; break;  // max_tokens, context, timeout, server shutdown
          }
          if (e.finish == FinishReason::kTimeout) {
            timed_out = true;
            log_info("request_timeout", {{"id", id}, {"timeout_s", r->o.request_timeout_s}, {"completion_tokens", completion_tokens}});
          }
        }
      }
      content += piece.content;
      reasoning += piece.reasoning;
      return piece;
    }

    json usage() const {
      const int cached = std::min(stats.cached_tokens, int(prompt.size()));
      return {{"prompt_tokens", prompt.size()},
              {"completion_tokens", completion_tokens},
              {"total_tokens", int(prompt.size()) + completion_tokens},
              {"prompt_tokens_details", {{"cached_tokens", cached}}},
              {"prompt_cache_hit_tokens", cached},
              {"prompt_cache_miss_tokens", int(prompt.size()) - cached}};
    }

    // With finish_reason "length" when the server's request timeout ended the request (not
    // max_tokens or the context): says so, so that a client can tell a cut answer from a full one.
    void add_finish_details(json& choice) const {
      if (!timed_out) return;
      char secs[32];
      std::snprintf(secs, sizeof secs, "%g", r->o.request_timeout_s);
      choice["finish_details"] = {{"type", "timeout"},
                                  {"message", std::string("the request reached the server's request timeout (") + secs +
                                                  " s); the output is cut short"}};
    }

    json completion_logprobs() const {
      json tokens = json::array(), lps = json::array(), tops = json::array(), offsets = json::array();
      for (const auto& [off, e] : token_log) {
        tokens.push_back(r->tok.decode(std::vector<int>{e.token}));
        lps.push_back(e.logprob);
        json top = json::object();
        for (const auto& [id, lp] : e.top) top[r->tok.decode(std::vector<int>{id})] = lp;
        tops.push_back(top);
        offsets.push_back(off);
      }
      return {{"tokens", tokens}, {"token_logprobs", lps}, {"top_logprobs", tops}, {"text_offset", offsets}};
    }

    json full_response() const {
      json choice;
      if (api.chat) {
        json msg = {{"role", "assistant"}, {"content", content}};
        if (!reasoning.empty()) msg["reasoning_content"] = reasoning;
        choice = {{"index", 0}, {"message", msg}, {"logprobs", api.logprobs ? json{{"content", logprob_items}} : json(nullptr)},
                  {"finish_reason", finish_reason}};
      } else {
        choice = {{"index", 0}, {"text", content}, {"logprobs", api.logprobs ? completion_logprobs() : json(nullptr)},
                  {"finish_reason", finish_reason}};
      }
      add_finish_details(choice);
      return {{"id", id},
              {"object", api.chat ? "chat.completion" : "text_completion"},
              {"created", created},
              {"model", r->o.model_name},
              {"system_fingerprint", "epserve"},
              {"choices", json::array({choice})},
              {"usage", usage()}};
    }

    json chunk(json choice) const {
      return {{"id", id},
              {"object", api.chat ? "chat.completion.chunk" : "text_completion"},
              {"created", created},
              {"model", r->o.model_name},
              {"system_fingerprint", "epserve"},
              {"choices", json::array({std::move(choice)})}};
    }

    // SSE text for a piece of output (and, at the end, the finish chunk, usage and [DONE]).
    std::string stream_piece(const TextPiece& p) {
      std::string out;
      const bool has_text = !p.content.empty() || !p.reasoning.empty();
      json lp = nullptr;
      if (api.logprobs && chunk_logprob_from < token_log.size() && (has_text || finished || stopped)) {
        if (api.chat) {
          json items = json::array();
          for (size_t i = chunk_logprob_from; i < token_log.size(); ++i) items.push_back(token_logprob(token_log[i].second));
          lp = {{"content", items}};
        } else {
          lp = completion_logprobs();  // whole-so-far is simplest for completions; trim to the new part
          for (auto key : {"tokens", "token_logprobs", "top_logprobs", "text_offset"})
            lp[key] = json(std::vector<json>(lp[key].begin() + long(chunk_logprob_from), lp[key].end()));
        }
        chunk_logprob_from = token_log.size();
      }
      if (api.chat && !sent_role) {
        sent_role = true;
        out += sse(chunk({{"index", 0}, {"delta", {{"role", "assistant"}, {"content", ""}}}, {"logprobs", nullptr},
                          {"finish_reason", nullptr}}));
      }
      if (has_text || !lp.is_null()) {
        json delta;
        if (api.chat) {
          delta = json::object();
          if (!p.reasoning.empty()) delta["reasoning_content"] = p.reasoning;
          if (!p.content.empty() || p.reasoning.empty()) delta["content"] = p.content;
          out += sse(chunk({{"index", 0}, {"delta", delta}, {"logprobs", lp}, {"finish_reason", nullptr}}));
        } else {
          out += sse(chunk({{"index", 0}, {"text", p.content}, {"logprobs", lp}, {"finish_reason", nullptr}}));
        }
      }
      return out;
    }

    std::string stream_end() {
      std::string out;
      if (!error.empty()) {
        out += sse(error_body(error, "server_error", "", "generation_failed"));
      } else {
        json last = api.chat ? json{{"index", 0}, {"delta", json::object()}, {"logprobs", nullptr}, {"finish_reason", finish_reason}}
                             : json{{"index", 0}, {"text", ""}, {"logprobs", nullptr}, {"finish_reason", finish_reason}};
        add_finish_details(last);
        out += sse(chunk(last));
        if (api.include_usage) {
          json u = chunk(nullptr);
          u["choices"] = json::array();
          u["usage"] = usage();
          out += sse(u);
        }
      }
      out += "data: [DONE]\n\n";
      return out;
    }

    void record(int status) {
      if (recorded) return;
      recorded = true;
      LedgerRecord l;
      l.id = id;
      l.endpoint = api.chat ? "chat" : "completions";
      l.status = status;
      l.finish_reason = finish_reason.empty() ? "cancelled" : timed_out ? "timeout" : finish_reason;
      l.prompt_tokens = int(prompt.size());
      l.cached_tokens = std::min(stats.cached_tokens, int(prompt.size()));
      l.completion_tokens = completion_tokens;
      l.queue_s = stats.queue_s;
      l.ttft_s = stats.ttft_s;
      l.tpot_s = completion_tokens > 1 ? stats.decode_s / (completion_tokens - 1) : 0;
      l.duration_s = seconds_since(start);
      l.output_tokens_per_s = l.duration_s - l.ttft_s > 0 && completion_tokens > 1 ? (completion_tokens - 1) / (stats.decode_s > 0 ? stats.decode_s : 1e-9) : 0;
      l.kv_tokens_per_output_token = stats.completion_tokens ? stats.kv_tokens_sum / stats.completion_tokens : 0;
      l.rank_seconds = stats.rank_seconds;
      log_info("request", r->ledger.record(l).to_json());
    }
  };

  std::shared_ptr<Session> start_session(const httplib::Request& req, bool chat) {
    if (self->draining()) throw ApiError(503, "the server is shutting down", "server_error", "", "shutting_down");
    auto s = std::make_shared<Session>();
    s->r = this;
    s->api = parse_api_request(req.body, chat);
    s->id = random_id(chat ? "chatcmpl-" : "cmpl-");
    s->created = std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
    if (s->api.model != o.model_name)
      throw ApiError(404, "The model '" + s->api.model + "' does not exist (this server serves '" + o.model_name + "')",
                     "invalid_request_error", "model", "model_not_found");
    const auto limits = worker.limits();
    bool in_think = false;
    try {
      if (chat) {
        if (!this->chat) throw ApiError(400, "this model has no chat template: use /v1/completions");
        const std::string text = this->chat->render(s->api.messages, true);
        in_think = text.ends_with("<think>\n") || text.ends_with("<think>");
        s->prompt = tok.encode(text);
      } else if (s->api.prompt_ids) {
        s->prompt = *s->api.prompt_ids;
        for (int t : s->prompt)
          if (t >= limits.vocab_size)
            throw ApiError(400, "token id " + std::to_string(t) + " is outside the vocabulary (" +
                                    std::to_string(limits.vocab_size) + ")", "invalid_request_error", "prompt");
      } else {
        s->prompt = {o.bos_token_id};
        tok.encode_append(*s->api.prompt_text, s->prompt);
      }
    } catch (const Error& e) {
      throw ApiError(400, e.what(), "invalid_request_error", chat ? "messages" : "prompt");
    }
    const int n = int(s->prompt.size());
    if (n >= limits.max_context)
      throw ApiError(400, "This model's maximum context length is " + std::to_string(limits.max_context) +
                              " tokens. However, your prompt is " + std::to_string(n) + " tokens.",
                     "invalid_request_error", chat ? "messages" : "prompt", "context_length_exceeded");
    int max_tokens = std::min(o.default_max_tokens, limits.max_context - n);
    if (s->api.max_tokens) {
      if (n + *s->api.max_tokens > limits.max_context)
        throw ApiError(400, "This model's maximum context length is " + std::to_string(limits.max_context) +
                                " tokens. However, you requested " + std::to_string(n + *s->api.max_tokens) + " tokens (" +
                                std::to_string(n) + " in the prompt, " + std::to_string(*s->api.max_tokens) +
                                " for the completion).", "invalid_request_error", "max_tokens", "context_length_exceeded");
      max_tokens = *s->api.max_tokens;
    }
    s->text = std::make_unique<TextAssembler>(tok, s->api.stop, chat, in_think);
    GenerateRequest g;
    g.prompt = s->prompt;
    g.max_tokens = max_tokens;
    g.sampling = {s->api.temperature, s->api.top_p};
    g.seed = s->api.seed ? *s->api.seed : std::random_device{}();
    g.stop_at_eos = !s->api.ignore_eos;
    g.top_logprobs = s->api.logprobs ? s->api.top_logprobs : -1;
    g.timeout_s = o.request_timeout_s;
    switch (worker.submit(std::move(g), s->events)) {
      case SubmitResult::kAccepted: break;
      case SubmitResult::kQueueFull:
        throw ApiError(429, "the server's queue is full; retry later", "rate_limit_error", "", "queue_full");
      case SubmitResult::kShuttingDown:
        throw ApiError(503, "the server is shutting down", "server_error", "", "shutting_down");
    }
    return s;
  }

  // The client went away before its response was complete: the worker ends the request and frees
  // its KV blocks; the ledger records it with status 499.
  void client_left(Session& s) {
    s.events->cancel();
    log_info("client_disconnected", {{"id", s.id}, {"stream", s.api.stream}, {"completion_tokens", s.completion_tokens}});
    // Collect the worker's last event (briefly) so that the ledger has its figures.
    for (int i = 0; i < 50 && !s.finished; ++i)
      for (auto& e : s.events->pop_all(std::chrono::milliseconds(100))) s.apply(e);
    s.finish_reason.clear();  // recorded as "cancelled"
    s.record(499);
  }

  void generate(const httplib::Request& req, httplib::Response& res, bool chat) {
    std::shared_ptr<Session> s;
    try {
      s = start_session(req, chat);
    } catch (const ApiError& e) {
      send_error(res, e);
      return;
    }
    ++self->in_flight_;
    if (!s->api.stream) {
      // Waits for the end (bounded by the worker's request timeout, which ends the request),
      // watching the client's connection: a client that hangs up cancels its request.
      const int fd = find_client_socket(req);
      if (fd < 0) log_warn("client_socket_not_found", {{"id", s->id}});
      while (!s->finished) {
        for (auto& e : s->events->pop_all(std::chrono::milliseconds(100))) s->apply(e);
        if (!s->finished && fd >= 0 && client_gone(fd)) {
          client_left(*s);
          --self->in_flight_;
          send_error(res, ApiError(499, "the client closed the connection", "invalid_request_error", "", "client_disconnected"));
          return;
        }
      }
      --self->in_flight_;
      if (!s->error.empty()) {
        s->record(500);
        send_error(res, ApiError(500, s->error, "server_error", "", "generation_failed"));
        return;
      }
      s->record(200);
      send_json(res, 200, s->full_response());
      return;
    }
    res.set_header("Cache-Control", "no-cache");
    res.set_header("X-Accel-Buffering", "no");
    auto last_write = std::make_shared<clock_type::time_point>(clock_type::now());
    res.set_chunked_content_provider(
        "text/event-stream",
        [s, last_write](size_t, httplib::DataSink& sink) {
          std::string out;
          for (auto& e : s->events->pop_all(std::chrono::milliseconds(100))) out += s->stream_piece(s->apply(e));
          if (s->finished) {
            out += s->stream_end();
            s->done_sent = true;
          } else if (out.empty() && seconds_since(*last_write) > 2) {
            out = ": keep-alive\n\n";  // finds clients that left while their request waits
          }
          if (!out.empty()) {
            *last_write = clock_type::now();
            if (!sink.write(out.data(), out.size())) return false;
          }
          if (s->done_sent) sink.done();
          return true;
        },
        [this, s](bool success) {
          if (!s->done_sent) {
            client_left(*s);
          } else {
            s->record(s->error.empty() ? 200 : 500);
          }
          --self->in_flight_;
        });
  }

  void setup() {
    http.new_task_queue = [n = o.http_threads] { return new httplib::ThreadPool(size_t(n)); };
    http.set_payload_max_length(o.max_body_bytes);
    http.set_keep_alive_max_count(1000);
    http.set_read_timeout(30, 0);
    http.set_write_timeout(30, 0);
    http.set_tcp_nodelay(true);
    http.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
      if (o.api_key.empty() || req.path.rfind("/v1/", 0) != 0) return httplib::Server::HandlerResponse::Unhandled;
      const std::string auth = req.get_header_value("Authorization");
      const std::string want = "Bearer " + o.api_key;
      if (equal_constant_time(auth, want)) return httplib::Server::HandlerResponse::Unhandled;
      send_error(res, ApiError(401, auth.empty() ? "missing API key (Authorization: Bearer ...)" : "incorrect API key",
                               "invalid_request_error", "", "invalid_api_key"));
      return httplib::Server::HandlerResponse::Handled;
    });
    http.set_error_handler(httplib::Server::HandlerWithResponse([this](const httplib::Request& req, httplib::Response& res) {
      if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
      std::string msg = "error", type = "invalid_request_error", code;
      switch (res.status) {
        case 404: msg = "no such endpoint: " + req.method + " " + req.path; code = "not_found"; break;
        case 413: msg = "the request body is larger than " + std::to_string(o.max_body_bytes) + " bytes"; code = "request_too_large"; break;
        case 400: msg = "malformed HTTP request"; break;
        default: msg = "HTTP " + std::to_string(res.status); type = res.status >= 500 ? "server_error" : type;
      }
      send_json(res, res.status, error_body(msg, type, "", code));
      return httplib::Server::HandlerResponse::Handled;
    }));
    http.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
      std::string what = "internal error";
      try {
        std::rethrow_exception(ep);
      } catch (const std::exception& e) {
        what = e.what();
      } catch (...) {
      }
      log_warn("handler_exception", {{"error", what}});
      send_json(res, 500, error_body(what, "server_error", "", "internal_error"));
    });
    http.set_logger([this](const httplib::Request& req, const httplib::Response& res) {
      std::lock_guard lk(counts_mu);
      ++status_counts[res.status];
    });

    http.Post("/v1/chat/completions", [this](const httplib::Request& q, httplib::Response& r) { generate(q, r, true); });
    http.Post("/v1/completions", [this](const httplib::Request& q, httplib::Response& r) { generate(q, r, false); });
    http.Get("/health", [this](const httplib::Request&, httplib::Response& r) {
      json units = json::array();
      for (const auto& u : worker.units())
        units.push_back({{"name", u.name}, {"role", u.role}, {"ranks", u.ranks}, {"in_flight", u.in_flight},
                         {"status", u.state}, {"restarts", u.restarts}, {"detail", u.failed}});
      json body;
      int status = 200;
      if (self->draining()) status = 503, body = {{"status", "draining"}};
      else if (const auto f = worker.failure(); !f.empty()) status = 503, body = {{"status", "failed"}, {"detail", f}};
      else body = {{"status", "ok"}, {"model", o.model_name}};
      if (!units.empty()) body["units"] = std::move(units);  // a unit may be down while the others serve
      send_json(r, status, body);
    });
    auto model_json = [this] {
      return json{{"id", o.model_name}, {"object", "model"}, {"created", created}, {"owned_by", "epserve"},
                  {"max_model_len", worker.limits().max_context}};
    };
    http.Get("/v1/models", [this, model_json](const httplib::Request&, httplib::Response& r) {
      send_json(r, 200, {{"object", "list"}, {"data", json::array({model_json()})}});
    });
    http.Get(R"(/v1/models/(.+))", [this, model_json](const httplib::Request& q, httplib::Response& r) {
      if (q.matches[1] == o.model_name) send_json(r, 200, model_json());
      else send_error(r, ApiError(404, "The model '" + std::string(q.matches[1]) + "' does not exist", "invalid_request_error",
                                  "model", "model_not_found"));
    });
    http.Get("/metrics", [this](const httplib::Request&, httplib::Response& r) {
      std::map<int, uint64_t> counts;
      {
        std::lock_guard lk(counts_mu);
        counts = status_counts;
      }
      r.set_content(render_metrics(o.model_name, ledger.totals(), ledger, worker.stats(), worker.units(), counts, self->in_flight(),
                                   self->draining()),
                    "text/plain; version=0.0.4");
    });
    // Known paths with the wrong method: 405 with an Allow header.
    auto not_allowed = [](const char* allow) {
      return [allow](const httplib::Request& q, httplib::Response& r) {
        r.set_header("Allow", allow);
        send_json(r, 405, error_body(q.method + " is not allowed on " + q.path + " (allowed: " + allow + ")",
                                     "invalid_request_error", "", "method_not_allowed"));
      };
    };
    for (const char* p : {"/v1/chat/completions", "/v1/completions"}) {
      http.Get(p, not_allowed("POST"));
      http.Put(p, not_allowed("POST"));
      http.Delete(p, not_allowed("POST"));
      http.Patch(p, not_allowed("POST"));
    }
    for (const char* p : {"/v1/models", "/health", "/metrics"}) {
      http.Post(p, not_allowed("GET"));
      http.Put(p, not_allowed("GET"));
      http.Delete(p, not_allowed("GET"));
      http.Patch(p, not_allowed("GET"));
    }
  }
};

Router::Router(Worker& worker, const tokenizer::Tokenizer& tok, const tokenizer::ChatTemplate* chat, Ledger& ledger,
               RouterOptions options)
    : impl_(std::make_unique<Impl>(this, worker, tok, chat, ledger, std::move(options))) {
  impl_->setup();
}

Router::~Router() = default;

int Router::bind() {
  if (impl_->o.port == 0) return impl_->http.bind_to_any_port(impl_->o.host);
  if (!impl_->http.bind_to_port(impl_->o.host, impl_->o.port))
    throw Error("cannot listen on " + impl_->o.host + ":" + std::to_string(impl_->o.port) + " (in use, or bad address)");
  return impl_->o.port;
}

bool Router::serve() { return impl_->http.listen_after_bind(); }

void Router::stop() { impl_->http.stop(); }

}  // namespace epserve::serve
