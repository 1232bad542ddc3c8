// The prefix cache's parts on their own: chained block names, the RAM index (references, LRU
// eviction that spares blocks in use), the disk tier (round trip, restart, corrupt / truncated /
// foreign files are misses and are removed, capacity eviction, an unusable directory).
#include <gtest/gtest.h>

#include <fstream>
#include <numeric>

#include "kvcache/block_hash.h"
#include "kvcache/disk_tier.h"
#include "kvcache/prefix_index.h"
#include "model/config.h"
#include "support/paths.h"

namespace epserve::kvcache {
namespace {

std::vector<int> tokens(int n, int start = 0) {
  std::vector<int> t(n);
  std::iota(t.begin(), t.end(), start);
  return t;
}

TEST(BlockHash, ChainNamesEqualPrefixesAlike) {
  auto a = tokens(64 * 3 + 10), b = a;
  b[64 + 5] = 99999;  // differs in the second block
  std::vector<BlockHash> ha, hb, hc;
  extend_chain(ha, 1, a, 64);
  extend_chain(hb, 1, b, 64);
  extend_chain(hc, 2, a, 64);  // another model
  ASSERT_EQ(ha.size(), 3u);  // full blocks only
  EXPECT_EQ(ha[0], hb[0]);
  EXPECT_NE(ha[1], hb[1]);
  EXPECT_NE(ha[2], hb[2]);  // the chain carries the difference on
  for (int i = 0; i < 3; ++i) EXPECT_NE(ha[i], hc[i]);
  // Extending in steps gives the same names as at once.
  std::vector<BlockHash> step;
  extend_chain(step, 1, std::span<const int>(a).first(100), 64);
  extend_chain(step, 1, a, 64);
  EXPECT_EQ(step, ha);
}

model::ModelConfig tiny() { return model::ModelConfig::preset("tiny"); }

TEST(PrefixIndex, SharesBlocksAndEvictsOnlyUnusedLeastRecentFirst) {
  const auto c = tiny();
  model::KvBlockPool pool(c, model::KvDtype::kBf16, 8);
  PrefixIndex index(pool);
  std::vector<int> blocks;
  for (int i = 0; i < 4; ++i) {
    blocks.push_back(pool.allocate());
    ASSERT_TRUE(index.insert(100 + i, blocks.back()));
    pool.release(blocks.back());  // only the index holds it now
  }
  EXPECT_FALSE(index.insert(100, blocks[1]));  // a name is taken once
  EXPECT_EQ(pool.used_blocks(), 4);
  std::vector<BlockHash> chain = {100, 101, 105};
  EXPECT_EQ(index.match(chain), (std::vector<int>{blocks[0], blocks[1]}));
  {
    model::SequenceKv seq(pool);
    seq.adopt_prefix(std::vector<int>{blocks[0], blocks[1]});
    EXPECT_EQ(index.evictable(), 2);  // 102, 103
    EXPECT_EQ(index.evict(10), 2);    // spares the two the sequence holds
    EXPECT_EQ(pool.used_blocks(), 2);
  }
  EXPECT_EQ(index.evictable(), 2);
  EXPECT_EQ(index.evict(1), 1);  // least recently used: the chain's end (101) before its start
  EXPECT_TRUE(index.contains(100));
  EXPECT_FALSE(index.contains(101));
}

struct DiskFixture : ::testing::Test {
  std::filesystem::path dir = testing::scratch_dir("kvdisk");
  DiskTierOptions options(uint64_t model_id = 7, uint64_t capacity = 1 << 20) {
    DiskTierOptions o;
    o.dir = dir;
    o.model_id = model_id;
    o.capacity_bytes = capacity;
    o.payload_bytes = 1000;
    o.warn = [this](const std::string& e, const std::string&) { warnings.push_back(e); };
    return o;
  }
  std::vector<uint8_t> payload(uint8_t seed) {
    std::vector<uint8_t> p(1000);
    for (size_t i = 0; i < p.size(); ++i) p[i] = uint8_t(seed + i * 7);
    return p;
  }
  std::vector<std::string> warnings;
};

TEST_F(DiskFixture, RoundTripAndRestart) {
  const auto t = tokens(64);
  {
    DiskTier d(options());
    ASSERT_TRUE(d.enabled());
    d.store(1, t, payload(1));
    d.flush();
    EXPECT_TRUE(d.contains(1));
    EXPECT_EQ(d.load(1, t), payload(1));
  }
  DiskTier again(options());  // a restart finds the file
  EXPECT_TRUE(again.contains(1));
  EXPECT_EQ(again.load(1, t), payload(1));
  EXPECT_EQ(again.stats().hits, 1u);
  EXPECT_FALSE(again.load(2, t).has_value());
}

TEST_F(DiskFixture, BadFilesAreMissesAndRemoved) {
  const auto t = tokens(64);
  {
    DiskTier d(options());
    for (BlockHash h : {1, 2, 3, 4}) d.store(h, t, payload(uint8_t(h)));
    d.flush();
  }
  DiskTier probe(options());
  // 1: a flipped byte in the payload; 2: truncated; 3: written for another model (rewrite header id)
  {
    std::fstream f(probe.file_of(1), std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(48 + 256 + 500);
    f.put('\x5a');
  }
  std::filesystem::resize_file(probe.file_of(2), 300);
  {
    DiskTier other(options(/*model_id=*/8));
    other.store(5, t, payload(5));
    other.flush();
    std::filesystem::rename(other.file_of(5), other.file_of(3));
  }
  DiskTier d(options());
  for (BlockHash h : {1, 2, 3}) {
    EXPECT_FALSE(d.load(h, t).has_value()) << h;
    EXPECT_FALSE(std::filesystem::exists(d.file_of(h))) << h;
  }
  auto wrong_tokens = t;
  wrong_tokens[3] = -1;
  EXPECT_FALSE(d.load(4, wrong_tokens).has_value());  // names match but the tokens do not
  EXPECT_EQ(d.stats().corrupt, 4u);
  EXPECT_GE(warnings.size(), 4u);
}

TEST_F(DiskFixture, CapacityEvictsLeastRecentlyUsed) {
  const auto t = tokens(64);
  const uint64_t file = 48 + 64 * 4 + 1000;
  DiskTier d(options(7, 2 * file));
  d.store(1, t, payload(1));
  d.flush();
  d.store(2, t, payload(2));
  d.flush();
  ASSERT_TRUE(d.load(1, t).has_value());  // 1 is now more recent than 2
  d.store(3, t, payload(3));
  d.flush();
  EXPECT_TRUE(d.contains(1));
  EXPECT_FALSE(d.contains(2));
  EXPECT_TRUE(d.contains(3));
  EXPECT_FALSE(std::filesystem::exists(d.file_of(2)));
  EXPECT_LE(d.stats().bytes, 2 * file);
}

TEST_F(DiskFixture, UnusableDirectoryTurnsTheTierOff) {
  std::ofstream(dir / "a-file") << "x";
  auto o = options();
  o.dir = dir / "a-file" / "sub";  // under a regular file: cannot be created (even as root)
  DiskTier d(o);
  EXPECT_FALSE(d.enabled());
  d.store(1, tokens(64), payload(1));  // a no-op, not a failure
  d.flush();
  EXPECT_FALSE(d.load(1, tokens(64)).has_value());
  ASSERT_FALSE(warnings.empty());
  EXPECT_EQ(warnings[0], "kv_disk_disabled");
}

}  // namespace
}  // namespace epserve::kvcache
