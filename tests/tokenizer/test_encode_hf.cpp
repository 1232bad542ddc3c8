// Encoding and decoding against HuggingFace tokenizers (the Rust library, through node) on
// DeepSeek-V3's real tokenizer.json: fixed strings plus fresh random ones every run.
#include <gtest/gtest.h>

#include <fstream>

#include "tokenizer/byte_level.h"
#include "tokenizer/reference.h"
#include "tokenizer/tokenizer.h"

namespace epserve::testing {
namespace {

using tokenizer::Tokenizer;

std::string show(const std::string& s) { return nlohmann::json(s).dump(); }

TEST(TokenizerHf, EncodeAndDecodeMatchHuggingFace) {
  const auto dir = deepseek_tokenizer_dir();
  const Tokenizer tok = Tokenizer::load(dir);
  std::vector<std::string> corpus = fixed_corpus();
  const uint64_t seed = test_seed();
  std::printf("random strings: EPSERVE_TEST_SEED=%llu\n", static_cast<unsigned long long>(seed));
  // EPSERVE_TOKENIZER_STRINGS=N runs a longer hunt for mismatches.
  const char* n = std::getenv("EPSERVE_TOKENIZER_STRINGS");
  for (auto& s : random_corpus(n ? std::strtoul(n, nullptr, 10) : 2400, seed)) corpus.push_back(std::move(s));
  ASSERT_GE(corpus.size(), 2000u);

  std::vector<std::vector<int>> ours;
  for (const auto& s : corpus) ours.push_back(tok.encode(s));
  // Decoding: our ids (checked equal to HF's below), and random id sequences, which split
  // characters and mix in special tokens; HF repairs broken UTF-8 with U+FFFD, so must we.
  std::mt19937_64 rng(seed ^ 0x5eed);
  std::vector<std::vector<int>> random_ids;
  for (int k = 0; k < 300; ++k) {
    std::vector<int> ids(1 + rng() % 12);
    for (int& id : ids) id = int(rng() % 3 == 0 ? 128000 + rng() % 815 : rng() % tok.vocab_size());
    if (k % 3 == 0)  // byte tokens only: lone and partial UTF-8 sequences
      for (int& id : ids) {
        static const uint8_t bytes[] = {0xE4, 0xB8, 0xAD, 0xF0, 0x9F, 0x98, 0x80, 0xC3, 0xA9, 0xED, 0xA0, 0xFF, 0x41, 0xF4, 0x90};
        id = *tok.token_id(tokenizer::byte_symbol(bytes[rng() % sizeof bytes]));
      }
    random_ids.push_back(std::move(ids));
  }
  nlohmann::json request;
  request["encode"] = corpus;
  request["decode"] = nlohmann::json::array();
  for (const auto& ids : ours) request["decode"].push_back(ids);
  for (const auto& ids : random_ids) request["decode"].push_back(ids);
  request["decode_skip_special"] = random_ids;
  const auto ref = hf_reference(request, "encode");

  size_t failures = 0, round_trips = 0;
  for (size_t k = 0; k < corpus.size(); ++k) {
    const auto expected = ref["encode"][k].get<std::vector<int>>();
    if (ours[k] != expected && failures++ < 10)
      ADD_FAILURE() << "encode(" << show(corpus[k]) << ")\n  ours: " << nlohmann::json(ours[k]).dump()
                    << "\n  HF:   " << nlohmann::json(expected).dump();
    const std::string hf_text = ref["decode"][k];
    EXPECT_EQ(tok.decode(ours[k]), hf_text) << "decode of the ids of " << show(corpus[k]);
    if (hf_text == corpus[k]) {
      ++round_trips;
      EXPECT_EQ(tok.decode(ours[k]), corpus[k]);
    }
  }
  EXPECT_EQ(failures, 0u) << "of " << corpus.size() << " strings";
  EXPECT_EQ(round_trips, corpus.size()) << "HF's decode(encode(s)) == s held for every string";
  for (size_t k = 0; k < random_ids.size(); ++k) {
    EXPECT_EQ(tok.decode(random_ids[k]), ref["decode"][corpus.size() + k].get<std::string>())
        << "decode " << nlohmann::json(random_ids[k]).dump();
    EXPECT_EQ(tok.decode(random_ids[k], true), ref["decode_skip_special"][k].get<std::string>())
        << "decode (skip special) " << nlohmann::json(random_ids[k]).dump();
  }
}

TEST(TokenizerHf, CliFileModeMatchesLibrary) {
  const auto dir = deepseek_tokenizer_dir();
  const Tokenizer tok = Tokenizer::load(dir);
  auto corpus = fixed_corpus();
  for (auto& s : random_corpus(200, test_seed() + 1)) corpus.push_back(std::move(s));
  const auto scratch = scratch_dir("tokenize-file");
  {
    std::ofstream out(scratch / "in.jsonl");
    for (const auto& s : corpus) out << nlohmann::json(s).dump() << "\n";
  }
  const auto r = run_command(epserve_binary().string() + " tokenize --model " + dir.string() + " --file " +
                             (scratch / "in.jsonl").string() + " > " + (scratch / "out.jsonl").string());
  ASSERT_EQ(r.exit_code, 0) << r.output;
  std::ifstream in(scratch / "out.jsonl");
  std::string line;
  size_t k = 0;
  for (; std::getline(in, line); ++k) {
    ASSERT_LT(k, corpus.size());
    EXPECT_EQ(nlohmann::json::parse(line).get<std::vector<int>>(), tok.encode(corpus[k])) << show(corpus[k]);
  }
  EXPECT_EQ(k, corpus.size());
}

TEST(TokenizerHf, CliEncodeAndDecode) {
  const auto dir = deepseek_tokenizer_dir();
  const Tokenizer tok = Tokenizer::load(dir);
  const std::string bin = epserve_binary().string() + " tokenize --model " + dir.string();
  auto r = run_command(bin + " 'Hello 世界 123'");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(r.output, nlohmann::json(tok.encode("Hello 世界 123")).dump() + "\n");
  const auto ids = tok.encode("Hello 世界 123");
  std::string list;
  for (int id : ids) list += (list.empty() ? "" : ",") + std::to_string(id);
  r = run_command(bin + " --decode " + list);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(r.output, "Hello 世界 123\n");
  r = run_command(bin + " --decode 0," + std::to_string(ids[0]) + " --skip-special --json");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(r.output, "\"Hello\"\n");
}

TEST(TokenizerHf, VocabularyLookups) {
  const Tokenizer tok = Tokenizer::load(deepseek_tokenizer_dir());
  EXPECT_EQ(tok.vocab_size(), 128815);
  EXPECT_EQ(tok.token_id("<｜begin▁of▁sentence｜>"), 0);
  EXPECT_EQ(tok.token_id("<｜end▁of▁sentence｜>"), 1);
  EXPECT_TRUE(tok.is_special(0));
  EXPECT_FALSE(tok.is_special(100));
  EXPECT_EQ(tok.token_id("Ġthe").has_value(), true);
  EXPECT_FALSE(tok.token_id("not a token at all").has_value());
}

}  // namespace
}  // namespace epserve::testing
