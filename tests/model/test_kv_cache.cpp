// The paged MLA cache: pool bookkeeping, BF16 storage, and prefix sharing giving the same logits.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "model/model.h"
#include "support/paths.h"

using namespace epserve;
using namespace epserve::model;

namespace {

double relative_error(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) num += (double(a[i]) - b[i]) * (double(a[i]) - b[i]), den += double(b[i]) * b[i];
  return std::sqrt(num / den);
}

TEST(KvBlockPool, CountsReferencesAndRefusesWhenFull) {
  const auto c = ModelConfig::preset("tiny");
  KvBlockPool pool(c, KvDtype::kBf16, 3);
  EXPECT_EQ(pool.block_layer_bytes(), size_t(64) * (32 + 16) * 2);
  {
    SequenceKv a(pool);
    a.grow(100);  // two blocks
    a.commit(100);
    EXPECT_EQ(pool.used_blocks(), 2);
    SequenceKv b(pool);
    b.adopt_prefix(std::span<const int>(a.blocks()).first(1));  // share the full first block
    EXPECT_EQ(b.length(), 64);
    EXPECT_EQ(pool.ref_count(a.blocks()[0]), 2);
    EXPECT_THROW(b.grow(65), KvPoolFull);  // needs two fresh blocks, one is left
    EXPECT_EQ(pool.used_blocks(), 2);       // and took none
    b.grow(10);
    EXPECT_EQ(pool.used_blocks(), 3);
  }
  EXPECT_EQ(pool.used_blocks(), 0);  // destructors gave everything back
}

class KvCacheModelTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { model_ = new Model(ModelWeights::load(epserve::testing::generated_model("tiny"))); }
  static void TearDownTestSuite() { delete model_; }
  static Model* model_;
};
Model* KvCacheModelTest::model_ = nullptr;

// DeepSeek numerics round cache rows to BF16 before storing, so a BF16 pool holds exactly what an
// FP32 pool holds: identical logits, through prefill and decode.
TEST_F(KvCacheModelTest, Bf16PoolMatchesFp32PoolInDeepSeekNumerics) {
  std::mt19937 rng(std::random_device{}());
  std::vector<int> prompt(150);
  for (int& t : prompt) t = int(rng() % 129280);
  KvBlockPool bf16_pool(model_->config(), KvDtype::kBf16, 8);
  SequenceKv a = model_->new_sequence(), b(bf16_pool);
  ForwardOptions options{kernels::Numerics::kDeepSeek};
  for (int step = 0; step < 3; ++step) {
    std::vector<int> in = step == 0 ? prompt : std::vector<int>{int(rng() % 1000)};
    SequenceInput ia{&a, in}, ib{&b, in};
    EXPECT_EQ(model_->forward({&ia, 1}, options), model_->forward({&ib, 1}, options)) << "step " << step;
  }
}

// A sequence that adopts another's full blocks and computes only the rest gets the logits of a
// sequence that computed everything.
TEST_F(KvCacheModelTest, AdoptedPrefixGivesTheSameLogits) {
  std::mt19937 rng(std::random_device{}());
  std::vector<int> prompt(150);
  for (int& t : prompt) t = int(rng() % 129280);
  ForwardOptions options{kernels::Numerics::kExact};
  SequenceKv full = model_->new_sequence();
  SequenceInput in{&full, prompt};
  const auto want = model_->forward({&in, 1}, options);
  SequenceKv reuse = model_->new_sequence();
  reuse.adopt_prefix(std::span<const int>(full.blocks()).first(2));  // 128 tokens
  SequenceInput rest{&reuse, std::span<const int>(prompt).subspan(128)};
  EXPECT_LT(relative_error(model_->forward({&rest, 1}, options), want), 1e-5);
}

}  // namespace
