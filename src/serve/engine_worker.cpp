#include "serve/engine_worker.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "kvcache/block_hash.h"
#include "kvcache/disk_tier.h"
#include "kvcache/prefix_index.h"
#include "serve/log.h"

namespace epserve::serve {

using clock_type = std::chrono::steady_clock;
using kvcache::BlockHash;
constexpr int kBlock = model::kKvBlockTokens;

const char* to_string(FinishReason r) {
  switch (r) {
    case FinishReason::kNone: return "none";
    case FinishReason::kStop: return "stop";
    case FinishReason::kLength: return "length";
    case FinishReason::kCancelled: return "cancelled";
    case FinishReason::kTimeout: return "timeout";
    case FinishReason::kError: return "error";
    case FinishReason::kHandedOff: return "handed_off";
  }
  return "?";
}

namespace {

double seconds(clock_type::duration d) { return std::chrono::duration<double>(d).count(); }

struct Seq {
  GenerateRequest req;
  std::shared_ptr<EventStream> events;
  std::unique_ptr<model::SequenceKv> kv;
  std::vector<int> tokens;         // prompt, then generated tokens (the newest not yet in the cache)
  std::vector<BlockHash> hashes;   // chained hashes of the full blocks of `tokens`
  int registered = 0;              // full blocks of kv named in the prefix index
  int generated = 0;
  model::Sampler sampler{0};
  clock_type::time_point submitted, admitted, first_token, last_token;
  bool admitted_once = false;
  bool imported = false;  // a continuation's blocks are in the pool (or were dropped)
  uint64_t admit_order = 0;
  RequestStats stats;
};

}  // namespace

struct EngineWorker::Impl {
  model::Model& model;
  EngineWorkerOptions o;
  model::KvBlockPool pool;
  kvcache::PrefixIndex index;
  std::unique_ptr<kvcache::DiskTier> disk;
  int max_context;

  mutable std::mutex mu;
  std::condition_variable cv, drained_cv;
  std::deque<std::unique_ptr<Seq>> incoming;
  bool draining = false, stop = false;
  std::atomic<bool> abort_all{false};
  int waiting_count = 0, running_count = 0;  // published by the scheduler under mu
  WorkerStats published;

  std::deque<std::unique_ptr<Seq>> waiting;
  std::vector<std::unique_ptr<Seq>> running;
  uint64_t admit_counter = 0;
  WorkerStats st;
  std::vector<float> row_buf;
  std::thread thread;

  Impl(model::Model& m, EngineWorkerOptions opt)
      : model(m), o(std::move(opt)),
        pool(m.config(), o.numerics == kernels::Numerics::kExact ? model::KvDtype::kF32 : model::KvDtype::kBf16,
             o.kv_blocks),
        index(pool) {
    max_context = o.max_context > 0 ? std::min(o.max_context, m.config().max_position_embeddings)
                                    : m.config().max_position_embeddings;
    max_context = std::min(max_context, o.kv_blocks * kBlock - 1);
    if (o.disk) {
      kvcache::DiskTierOptions d;
      d.dir = o.disk_dir;
      d.capacity_bytes = o.disk_capacity_bytes;
      d.model_id = o.model_id;
      d.block_tokens = kBlock;
      d.payload_bytes = pool.block_layer_bytes() * size_t(pool.layers());
      d.warn = [](const std::string& ev, const std::string& detail) { log_warn(ev, {{"detail", detail}}); };
      disk = std::make_unique<kvcache::DiskTier>(std::move(d));
    }
    thread = std::thread([this] { loop(); });
  }

  ~Impl() {
    {
      std::lock_guard lk(mu);
      stop = true;
      abort_all = true;
    }
    cv.notify_all();
    if (thread.joinable()) thread.join();
  }

  // ---- events ----
  void finish(Seq& s, FinishReason r, const std::string& error = "") {
    const auto now = clock_type::now();
    s.stats.prompt_tokens = int(s.req.prompt.size());
    s.stats.completion_tokens = s.generated;
    if (s.generated > 0) s.stats.decode_s = seconds(s.last_token - s.first_token);
    TokenEvent e;
    e.kind = TokenEvent::Kind::kFinished;
    e.finish = r;
    e.error = error;
    e.stats = s.stats;
    (void)now;
    if (r == FinishReason::kHandedOff) e.handoff = hand_off(s);
    s.events->push(std::move(e));
    s.kv.reset();  // frees the blocks not named in the prefix index
  }

  // The prompt's full blocks, copied out for a decode rank (register_blocks named them after the
  // step that completed the prompt, so s.hashes covers them).
  std::shared_ptr<const KvHandOff> hand_off(Seq& s) {
    auto h = std::make_shared<KvHandOff>();
    const int full = s.kv->length() / kBlock;
    const size_t lb = pool.block_layer_bytes();
    for (int b = 0; b < full; ++b) {
      const int block = s.kv->blocks()[size_t(b)];
      std::vector<uint8_t> payload(lb * size_t(pool.layers()));
      for (int l = 0; l < pool.layers(); ++l) std::memcpy(payload.data() + size_t(l) * lb, pool.block_bytes(l, block).data(), lb);
      h->hashes.push_back(s.hashes[size_t(b)]);
      h->blocks.push_back(std::move(payload));
      st.kv_handoff_bytes += lb * size_t(pool.layers());
    }
    st.kv_handoff_blocks_sent += uint64_t(full);
    h->generated.assign(s.tokens.begin() + long(s.req.prompt.size()), s.tokens.end());
    h->sampler_state = s.sampler.state();
    return h;
  }

  // ---- admission ----
  // Puts the longest cached prefix (RAM, then disk) into a fresh sequence; false when the pool
  // cannot hold the prompt now.
  bool try_admit(Seq& s) {
    if (s.req.continues && !s.imported) {
      import_blocks(*s.req.continues);
      s.imported = true;
    }
    const int len = int(s.tokens.size());
    kvcache::extend_chain(s.hashes, o.model_id, s.tokens, kBlock);
    const int usable = std::min<int>(int(s.hashes.size()), (len - 1) / kBlock);  // the last token is always computed
    std::vector<int> blocks = index.match(std::span<const BlockHash>(s.hashes).first(usable));
    int held_only_by_index = 0;
    for (int b : blocks) held_only_by_index += pool.ref_count(b) == 1;
    const int need = (len + 1 + kBlock - 1) / kBlock - int(blocks.size());
    if (pool.free_blocks() + index.evictable() - held_only_by_index < need) return false;
    for (int b : blocks) pool.add_ref(b);  // held while loading, so eviction cannot take them
    const int ram_blocks = int(blocks.size());
    if (disk) {
      for (int i = ram_blocks; i < usable && disk->contains(s.hashes[i]); ++i) {
        auto payload = disk->load(s.hashes[i], std::span<const int>(s.tokens).subspan(size_t(i) * kBlock, kBlock));
        if (!payload) break;
        if (pool.free_blocks() == 0) index.evict(1);
        const int b = pool.allocate();
        if (b < 0) break;
        const size_t lb = pool.block_layer_bytes();
        for (int l = 0; l < pool.layers(); ++l)
          std::memcpy(pool.block_bytes(l, b).data(), payload->data() + size_t(l) * lb, lb);
        index.insert(s.hashes[i], b);
        blocks.push_back(b);
      }
    }
    s.kv = std::make_unique<model::SequenceKv>(pool);
    s.kv->adopt_prefix(blocks);
    for (int b : blocks) pool.release(b);
    s.registered = int(blocks.size());
    const auto now = clock_type::now();
    if (!s.admitted_once) {
      s.admitted_once = true;
      s.admitted = now;
      s.stats.queue_s = seconds(now - s.submitted);
      s.stats.cached_tokens = int(blocks.size()) * kBlock;
      s.stats.disk_cached_tokens = int(blocks.size() - ram_blocks) * kBlock;
      if (!s.req.continues) {  // a continuation's blocks came with it (counted as hand-off blocks)
        st.ram_hit_tokens += uint64_t(ram_blocks) * kBlock;
        st.disk_hit_tokens += uint64_t(blocks.size() - ram_blocks) * kBlock;
      }
    }
    s.admit_order = ++admit_counter;
    return true;
  }

  // A continuation's blocks go into the pool named by their hashes, as disk blocks do; try_admit then
  // finds them like any cached prefix. A block that does not fit (or has the wrong size) is left
  // out and recomputed.
  void import_blocks(const KvHandOff& h) {
    const size_t lb = pool.block_layer_bytes();
    for (size_t i = 0; i < h.hashes.size() && i < h.blocks.size(); ++i) {
      if (index.contains(h.hashes[i])) continue;
      if (h.blocks[i].size() != lb * size_t(pool.layers())) {
        log_warn("kv_handoff_bad_block", {{"bytes", h.blocks[i].size()}});
        break;
      }
      if (pool.free_blocks() == 0) index.evict(1);
      const int b = pool.allocate();
      if (b < 0) break;
      for (int l = 0; l < pool.layers(); ++l) std::memcpy(pool.block_bytes(l, b).data(), h.blocks[i].data() + size_t(l) * lb, lb);
      index.insert(h.hashes[i], b);
      pool.release(b);  // the index holds it
      ++st.kv_handoff_blocks_received;
    }
  }

  void admit() {
    while (!waiting.empty() && int(running.size()) < o.max_running) {
      Seq& s = *waiting.front();
      if (!try_admit(s)) {
        if (running.empty()) {  // can never fit: the pool is empty of others
          finish(s, FinishReason::kError, "the request needs more KV cache than the server has");
          waiting.pop_front();
          continue;
        }
        break;
      }
      running.push_back(std::move(waiting.front()));
      waiting.pop_front();
    }
  }

  void preempt(size_t i) {
    auto s = std::move(running[i]);
    running.erase(running.begin() + long(i));
    s->kv.reset();
    s->registered = 0;
    ++s->stats.preemptions;
    ++st.preemptions;
    log_info("preempt", {{"request", s->req.id}, {"tokens", s->tokens.size()}});
    waiting.push_front(std::move(s));
  }

  // ---- cancellation and timeouts ----
  void reap() {
    const auto now = clock_type::now();
    auto check = [&](Seq& s) -> FinishReason {
      if (abort_all || s.events->cancelled()) return FinishReason::kCancelled;
      if (seconds(now - s.submitted) > s.req.timeout_s) return FinishReason::kTimeout;
      return FinishReason::kNone;
    };
    for (size_t i = 0; i < running.size();) {
      const auto r = check(*running[i]);
      if (r == FinishReason::kNone) {
        ++i;
        continue;
      }
      finish(*running[i], r);
      running.erase(running.begin() + long(i));
    }
    for (auto it = waiting.begin(); it != waiting.end();) {
      const auto r = check(**it);
      if (r == FinishReason::kNone) {
        ++it;
        continue;
      }
      finish(**it, r);
      it = waiting.erase(it);
    }
  }

  // ---- sampling ----
  void sample_and_emit(Seq& s, std::span<const float> logits) {
    row_buf.assign(logits.begin(), logits.end());
    if (!o.allowed.empty())
      for (size_t t = 0; t < row_buf.size(); ++t)
        if (t >= o.allowed.size() || !o.allowed[t]) row_buf[t] = -std::numeric_limits<float>::infinity();
    const int token = s.sampler.sample(row_buf, s.req.sampling);
    TokenEvent e;
    e.token = token;
    e.is_eos = token == model.config().eos_token_id;
    if (s.req.top_logprobs >= 0) {
      float mx = -std::numeric_limits<float>::infinity();
      for (float v : row_buf) mx = std::max(mx, v);
      double sum = 0;
      for (float v : row_buf) sum += std::exp(double(v) - mx);
      const double lse = mx + std::log(sum);
      e.logprob = float(row_buf[token] - lse);
      const int k = std::min<int>(s.req.top_logprobs, int(row_buf.size()));
      std::vector<int> ids(row_buf.size());
      for (size_t t = 0; t < ids.size(); ++t) ids[t] = int(t);
      std::partial_sort(ids.begin(), ids.begin() + k, ids.end(),
                        [&](int a, int b) { return row_buf[a] > row_buf[b] || (row_buf[a] == row_buf[b] && a < b); });
      for (int i = 0; i < k; ++i) e.top.emplace_back(ids[i], float(row_buf[ids[i]] - lse));
    }
    const auto now = clock_type::now();
    if (s.generated == 0) {
      s.first_token = now;
      s.stats.ttft_s = seconds(now - s.submitted);
    }
    s.last_token = now;
    s.stats.kv_tokens_sum += s.kv->length();
    s.tokens.push_back(token);
    ++s.generated;
    s.events->push(std::move(e));
  }

  // ---- one step ----
  struct Entry {
    Seq* s;
    int n;
    model::AttentionPath attention;
  };

  // A step's work for one sequence: its next n uncached tokens, all prompt or all generated (a
  // chunk stops at the prompt's end). Prompt tokens take the expanded attention path and generated
  // ones the absorbed path whatever the chunk's size, so results do not depend on the cut.
  std::vector<Entry> plan() {
    std::vector<Entry> batch;
    int budget = o.step_tokens;
    auto in_prompt = [](const Seq& s) { return s.kv->length() < int(s.req.prompt.size()); };
    for (auto& s : running)
      if (!in_prompt(*s) && int(s->tokens.size()) - s->kv->length() == 1) {
        batch.push_back({s.get(), 1, model::AttentionPath::kAbsorbed});
        --budget;
      }
    std::vector<Seq*> chunks;  // prompts, and generated tokens to recompute (after preemption)
    for (auto& s : running)
      if (in_prompt(*s) || int(s->tokens.size()) - s->kv->length() > 1) chunks.push_back(s.get());
    std::sort(chunks.begin(), chunks.end(), [](Seq* a, Seq* b) { return a->admit_order < b->admit_order; });
    for (Seq* s : chunks) {
      if (budget <= 0) break;
      const bool prompt = in_prompt(*s);
      const int left = (prompt ? int(s->req.prompt.size()) : int(s->tokens.size())) - s->kv->length();
      const int n = std::min(budget, left);
      batch.push_back({s, n, prompt ? model::AttentionPath::kNaive : model::AttentionPath::kAbsorbed});
      budget -= n;
    }
    return batch;
  }

  // Gets blocks for every entry; frees cached blocks, then preempts the newest requests, as needed.
  std::vector<Entry> plan_with_blocks() {
    for (int attempt = 0; attempt < 1000 && !running.empty(); ++attempt) {
      auto batch = plan();
      bool ok = true;
      for (auto& e : batch) {
        try {
          e.s->kv->grow(e.n);
        } catch (const model::KvPoolFull&) {
          const int want = (e.s->kv->length() + e.n + kBlock - 1) / kBlock - int(e.s->kv->blocks().size());
          if (index.evict(want) >= want) {
            try {
              e.s->kv->grow(e.n);
              continue;
            } catch (const model::KvPoolFull&) {
            }
          }
          ok = false;
          break;
        }
      }
      if (ok) return batch;
      size_t newest = 0;
      for (size_t i = 1; i < running.size(); ++i)
        if (running[i]->admit_order > running[newest]->admit_order) newest = i;
      preempt(newest);
    }
    return {};
  }

  void step() {
    auto batch = plan_with_blocks();
    if (batch.empty() && !o.lockstep) return;
    std::vector<model::SequenceInput> inputs;
    int total = 0;
    for (auto& e : batch) {
      inputs.push_back({e.s->kv.get(), std::span<const int>(e.s->tokens).subspan(size_t(e.s->kv->length()), size_t(e.n)),
                        e.attention});
      total += e.n;
    }
    model::ForwardOptions fo;
    fo.numerics = o.numerics;
    const auto t0 = clock_type::now();
    std::vector<float> logits;
    try {
      logits = model.forward(inputs, fo);
    } catch (const std::exception& ex) {
      log_warn("step_failed", {{"error", ex.what()}});
      if (o.lockstep) throw;  // a unit's step failed on a peer too, or the peer is gone: fatal
      for (auto& e : batch) {
        Seq* s = e.s;
        finish(*s, FinishReason::kError, std::string("model step failed: ") + ex.what());
        running.erase(std::find_if(running.begin(), running.end(), [&](auto& p) { return p.get() == s; }));
      }
      return;
    }
    const double dt = seconds(clock_type::now() - t0);
    if (batch.empty()) return;  // an empty lockstep step: nothing of ours ran
    ++st.steps;
    st.step_tokens += uint64_t(total);
    st.busy_s += dt;
    const int vocab = model.config().vocab_size;
    std::vector<Seq*> done;
    for (size_t j = 0; j < batch.size(); ++j) {
      Seq& s = *batch[j].s;
      s.stats.rank_seconds += dt * batch[j].n / total;
      register_blocks(s);
      if (s.kv->length() != int(s.tokens.size())) continue;  // a prefill chunk short of the end
      sample_and_emit(s, std::span<const float>(logits).subspan(j * size_t(vocab), size_t(vocab)));
      const int last = s.tokens.back();
      FinishReason r = FinishReason::kNone;
      if (s.req.stop_at_eos && last == model.config().eos_token_id) r = FinishReason::kStop;
      else if (s.generated >= s.req.max_tokens || int(s.tokens.size()) >= max_context) r = FinishReason::kLength;
      if (r == FinishReason::kNone && o.hand_off) r = FinishReason::kHandedOff;
      if (r != FinishReason::kNone) {
        finish(s, r);
        done.push_back(&s);
      }
    }
    for (Seq* s : done)
      running.erase(std::find_if(running.begin(), running.end(), [&](auto& p) { return p.get() == s; }));
  }

  // Names the sequence's newly full blocks in the prefix index and writes them through to disk.
  void register_blocks(Seq& s) {
    const int full = s.kv->length() / kBlock;
    if (full <= s.registered) return;
    kvcache::extend_chain(s.hashes, o.model_id, std::span<const int>(s.tokens).first(size_t(full) * kBlock), kBlock);
    const size_t lb = pool.block_layer_bytes();
    for (int b = s.registered; b < full; ++b) {
      const int block = s.kv->blocks()[size_t(b)];
      if (!index.insert(s.hashes[size_t(b)], block)) continue;
      if (disk && disk->enabled() && !disk->contains(s.hashes[size_t(b)])) {
        std::vector<uint8_t> payload(lb * size_t(pool.layers()));
        for (int l = 0; l < pool.layers(); ++l) std::memcpy(payload.data() + size_t(l) * lb, pool.block_bytes(l, block).data(), lb);
        disk->store(s.hashes[size_t(b)], std::span<const int>(s.tokens).subspan(size_t(b) * kBlock, kBlock), std::move(payload));
      }
    }
    s.registered = full;
  }

  void publish() {
    WorkerStats w = st;
    w.running = int(running.size());
    w.waiting = int(waiting.size());
    w.kv_blocks_used = pool.used_blocks();
    w.kv_blocks_total = pool.capacity();
    w.prefix_blocks = index.size();
    if (disk) {
      const auto d = disk->stats();
      w.disk_enabled = d.enabled;
      w.disk_hits = d.hits;
      w.disk_misses = d.misses;
      w.disk_corrupt = d.corrupt;
      w.disk_writes = d.writes;
      w.disk_write_errors = d.write_errors;
      w.disk_files = d.files;
      w.disk_bytes = d.bytes;
    }
    if (o.add_stats) o.add_stats(w);
    std::lock_guard lk(mu);
    published = w;
    waiting_count = w.waiting;
    running_count = w.running;
  }

  std::string fatal;  // under mu

  // Ends every request with kError and stops (lockstep mode, after a failed collective).
  void fail_all(const std::string& why) {
    log_warn("unit_step_failed", {{"error", why}});
    for (auto& s : running) finish(*s, FinishReason::kError, "unit failed: " + why);
    for (auto& s : waiting) finish(*s, FinishReason::kError, "unit failed: " + why);
    running.clear();
    waiting.clear();
    std::unique_lock lk(mu);
    for (auto& s : incoming) finish(*s, FinishReason::kError, "unit failed: " + why);
    incoming.clear();
    fatal = why;
    published.running = published.waiting = 0;
    waiting_count = running_count = 0;
    drained_cv.notify_all();
  }

  void lockstep_loop() {
    try {
      for (;;) {
        bool stopping;
        {
          std::unique_lock lk(mu);
          if (running.empty() && waiting.empty() && incoming.empty()) {
            drained_cv.notify_all();
            if (!stop) cv.wait_for(lk, o.idle_poll);
          }
          while (!incoming.empty()) {
            waiting.push_back(std::move(incoming.front()));
            incoming.pop_front();
          }
          stopping = stop;
        }
        reap();
        admit();
        const long all = o.lockstep(long(running.empty() ? 0 : 1) | (stopping ? 0 : 2));
        if (all == 0) break;
        if (all & 1) step();
        publish();
      }
      publish();
    } catch (const std::exception& ex) {
      fail_all(ex.what());
    }
  }

  void loop() {
    if (o.lockstep) return lockstep_loop();
    for (;;) {
      {
        std::unique_lock lk(mu);
        if (running.empty() && waiting.empty() && incoming.empty()) {
          drained_cv.notify_all();
          if (stop) break;
          cv.wait_for(lk, std::chrono::milliseconds(100));
        }
        while (!incoming.empty()) {
          waiting.push_back(std::move(incoming.front()));
          incoming.pop_front();
        }
      }
      reap();
      admit();
      if (!running.empty()) step();
      publish();
    }
    publish();
  }
};

EngineWorkerOptions model_worker_options(const std::filesystem::path& model_dir, kernels::Numerics numerics,
                                         const tokenizer::Tokenizer& tok, int vocab_size) {
  EngineWorkerOptions o;
  o.numerics = numerics;
  o.allowed.assign(size_t(vocab_size), false);
  for (int id = 0; id < vocab_size; ++id) o.allowed[size_t(id)] = tok.is_known(id);
  o.model_id = kvcache::model_identity(model_dir, numerics == kernels::Numerics::kExact ? "f32" : "bf16");
  return o;
}

EngineWorker::EngineWorker(model::Model& model, EngineWorkerOptions options)
    : impl_(std::make_unique<Impl>(model, std::move(options))) {}

EngineWorker::~EngineWorker() = default;

SubmitResult EngineWorker::submit(GenerateRequest request, std::shared_ptr<EventStream> events) {
  auto s = std::make_unique<Seq>();
  s->tokens = request.prompt;
  s->sampler = model::Sampler(request.seed);
  if (request.continues) {
    const auto& c = *request.continues;
    s->tokens.insert(s->tokens.end(), c.generated.begin(), c.generated.end());
    s->generated = int(c.generated.size());
    s->sampler = model::Sampler::from_state(c.sampler_state);
  }
  s->req = std::move(request);
  s->events = std::move(events);
  s->submitted = clock_type::now();
  s->first_token = s->last_token = s->submitted;  // a continuation's first token came before
  {
    std::lock_guard lk(impl_->mu);
    if (impl_->draining || impl_->stop || !impl_->fatal.empty()) return SubmitResult::kShuttingDown;
    if (int(impl_->incoming.size()) + impl_->waiting_count >= impl_->o.max_waiting) return SubmitResult::kQueueFull;
    impl_->incoming.push_back(std::move(s));
    ++impl_->waiting_count;  // counted until the scheduler publishes again
  }
  impl_->cv.notify_all();
  return SubmitResult::kAccepted;
}

WorkerLimits EngineWorker::limits() const {
  return {impl_->max_context, impl_->model.config().vocab_size, impl_->model.config().eos_token_id};
}

WorkerStats EngineWorker::stats() const {
  std::lock_guard lk(impl_->mu);
  return impl_->published;
}

std::string EngineWorker::fatal_error() const {
  std::lock_guard lk(impl_->mu);
  return impl_->fatal;
}

void EngineWorker::drain(std::chrono::steady_clock::time_point deadline) {
  std::unique_lock lk(impl_->mu);
  impl_->draining = true;
  auto idle = [&] { return impl_->incoming.empty() && impl_->waiting_count == 0 && impl_->running_count == 0; };
  while (!idle() && std::chrono::steady_clock::now() < deadline)
    impl_->drained_cv.wait_until(lk, std::min(deadline, std::chrono::steady_clock::now() + std::chrono::milliseconds(50)));
  if (!idle()) {
    impl_->abort_all = true;
    impl_->cv.notify_all();
    while (!idle()) impl_->drained_cv.wait_for(lk, std::chrono::milliseconds(50));
  }
  lk.unlock();
  if (impl_->disk) impl_->disk->flush();
}

}  // namespace epserve::serve
