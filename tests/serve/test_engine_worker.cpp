// serve::EngineWorker in this process, on the tiny checkpoint: a request's tokens and logprobs do not
// depend on how its sequence is cut into steps. The same prompt cold, after a prefix-cache hit (the
// tail recomputed, as short as one token), with a step budget of one token, and continued on a
// second worker from a prefill worker's KV hand-off (what a decode unit does) gives bit-equal
// results; so does a sampled request, whose sampler state travels with the hand-off.
#include <gtest/gtest.h>

#include "model/weights.h"
#include "serve/engine_worker.h"
#include "support/paths.h"

namespace epserve::serve {
namespace {

using epserve::testing::generated_model;

model::Model& tiny() {
  static model::Model m(model::ModelWeights::load(generated_model("tiny")));
  return m;
}

EngineWorkerOptions options(int step_tokens, bool hand_off = false) {
  EngineWorkerOptions o;
  o.kv_blocks = 128;
  o.step_tokens = step_tokens;
  o.disk = false;
  o.model_id = 42;
  o.hand_off = hand_off;
  return o;
}

struct Result {
  std::vector<int> tokens;
  std::vector<float> logprobs;
  FinishReason finish = FinishReason::kNone;
  RequestStats stats;
  std::shared_ptr<const KvHandOff> handoff;
  bool operator==(const Result& o) const { return tokens == o.tokens && logprobs == o.logprobs; }
};

Result run(EngineWorker& w, GenerateRequest r) {
  static uint64_t id = 0;
  r.id = ++id;
  auto events = std::make_shared<EventStream>();
  EXPECT_EQ(w.submit(std::move(r), events), SubmitResult::kAccepted);
  Result out;
  for (;;)
    for (auto& e : events->pop_all(std::chrono::milliseconds(100))) {
      if (e.kind == TokenEvent::Kind::kToken) {
        out.tokens.push_back(e.token);
        out.logprobs.push_back(e.logprob);
        continue;
      }
      out.finish = e.finish;
      out.stats = e.stats;
      out.handoff = e.handoff;
      return out;
    }
}

GenerateRequest request(int prompt_len, uint32_t salt, int max_tokens, double temperature = 0) {
  GenerateRequest r;
  for (int i = 0; i < prompt_len; ++i) r.prompt.push_back(int(1000 + (i * 7919u + salt * 104729u) % 50000));
  r.max_tokens = max_tokens;
  r.stop_at_eos = false;
  r.top_logprobs = 0;
  r.sampling.temperature = temperature;
  r.sampling.top_p = 0.9;
  r.seed = 1234 + salt;
  return r;
}

// Prompt lengths around the block (64) and step (256) edges: a hit's tail of 1, 2 and 63 tokens, a
// last chunk of one token.
const std::vector<int> kLengths = {65, 66, 127, 200, 257};

TEST(EngineWorker, ResultsDoNotDependOnHowTheSequenceIsCut) {
  EngineWorker cold(tiny(), options(256)), one_token_steps(tiny(), options(1));
  for (int len : kLengths) {
    SCOPED_TRACE("prompt of " + std::to_string(len));
    EngineWorker fresh(tiny(), options(256));
    const auto reference = run(fresh, request(len, len, 5));
    ASSERT_EQ(reference.tokens.size(), 5u);
    const auto again = run(fresh, request(len, len, 5));  // its full blocks from the prefix cache
    EXPECT_EQ(again.stats.cached_tokens, (len - 1) / 64 * 64);
    EXPECT_EQ(again, reference);
    EXPECT_EQ(run(one_token_steps, request(len, len, 5)), reference);

    EXPECT_EQ(run(cold, request(len, len, 5)), reference);
  }
}

TEST(EngineWorker, HandOffContinuesOnAnotherWorkerExactly) {
  EngineWorker prefill(tiny(), options(256, /*hand_off=*/true));
  for (double temperature : {0.0, 0.8})
    for (int len : kLengths) {
      SCOPED_TRACE("prompt of " + std::to_string(len) + ", temperature " + std::to_string(temperature));
      EngineWorker whole(tiny(), options(256)), decode(tiny(), options(256));
      const auto reference = run(whole, request(len, len, 6, temperature));
      ASSERT_EQ(reference.tokens.size(), 6u);

      const auto first = run(prefill, request(len, len, 6, temperature));
      ASSERT_EQ(first.finish, FinishReason::kHandedOff);
      ASSERT_TRUE(first.handoff);
      ASSERT_EQ(first.tokens.size(), 1u);
      EXPECT_EQ(first.handoff->generated, first.tokens);
      EXPECT_EQ(first.handoff->hashes.size(), size_t(len / 64));  // the prompt's full blocks
      EXPECT_EQ(first.handoff->blocks.size(), first.handoff->hashes.size());

      auto cont = request(len, len, 6, temperature);
      cont.continues = first.handoff;
      const auto rest = run(decode, cont);
      EXPECT_EQ(rest.finish, FinishReason::kLength);
      EXPECT_EQ(rest.stats.completion_tokens, 6);
      // The decode worker took the blocks (a prefix hit) and recomputed only the tail.
      EXPECT_EQ(rest.stats.cached_tokens, len / 64 * 64);
      Result joined = first;
      joined.tokens.insert(joined.tokens.end(), rest.tokens.begin(), rest.tokens.end());
      joined.logprobs.insert(joined.logprobs.end(), rest.logprobs.begin(), rest.logprobs.end());
      EXPECT_EQ(joined, reference);
    }
}

TEST(EngineWorker, HandOffWithBlocksThatDoNotFitIsRecomputed) {
  EngineWorker prefill(tiny(), options(256, true)), whole(tiny(), options(256)), decode(tiny(), options(256));
  const auto reference = run(whole, request(200, 9, 4));
  const auto first = run(prefill, request(200, 9, 4));
  ASSERT_TRUE(first.handoff);
  auto damaged = std::make_shared<KvHandOff>(*first.handoff);
  damaged->blocks[1].resize(10);  // a block of the wrong size: it and what follows are left out
  auto cont = request(200, 9, 4);
  cont.continues = damaged;
  const auto rest = run(decode, cont);
  EXPECT_EQ(rest.stats.cached_tokens, 64);
  Result joined = first;
  joined.tokens.insert(joined.tokens.end(), rest.tokens.begin(), rest.tokens.end());
  joined.logprobs.insert(joined.logprobs.end(), rest.logprobs.begin(), rest.logprobs.end());
  EXPECT_EQ(joined, reference);
}

}  // namespace
}  // namespace epserve::serve
