// Streaming decode (bytes held back until a character completes) and bad inputs: every one an
// epserve::Error with a message naming the problem, never a crash.
#include <gtest/gtest.h>

#include <fstream>
#include <random>

#include "base/error.h"
#include "tokenizer/byte_level.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/reference.h"
#include "tokenizer/streaming_decoder.h"
#include "tokenizer/tokenizer.h"

namespace epserve::testing {
namespace {

using tokenizer::StreamingDecoder;
using tokenizer::Tokenizer;

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "no error";
}

TEST(StreamingDecoder, HoldsBackPartialCharacters) {
  const Tokenizer tok = Tokenizer::load(deepseek_tokenizer_dir());
  // "世" is E4 B8 96: fed one byte token at a time, nothing comes out until the last byte.
  StreamingDecoder d(tok);
  const int b1 = *tok.token_id(tokenizer::byte_symbol(0xE4)), b2 = *tok.token_id(tokenizer::byte_symbol(0xB8)),
            b3 = *tok.token_id(tokenizer::byte_symbol(0x96));
  EXPECT_EQ(d.push(b1), "");
  EXPECT_EQ(d.push(b2), "");
  EXPECT_EQ(d.push(b3), "世");
  // An unfinished character at the end comes out of flush() as U+FFFD, as decode() shows it.
  EXPECT_EQ(d.push(b1), "");
  EXPECT_EQ(d.flush(), "\xEF\xBF\xBD");
  // A character cut short by another one: the broken start is final at once.
  EXPECT_EQ(d.push(b1), "");
  EXPECT_EQ(d.push(*tok.token_id("a")), "\xEF\xBF\xBD" "a");
}

TEST(StreamingDecoder, PiecesConcatenateToDecode) {
  const Tokenizer tok = Tokenizer::load(deepseek_tokenizer_dir());
  std::mt19937_64 rng(test_seed());
  auto texts = fixed_corpus();
  for (auto& s : random_corpus(300, test_seed() + 2)) texts.push_back(std::move(s));
  for (const auto& text : texts) {
    const auto ids = tok.encode(text);
    StreamingDecoder d(tok);
    std::string streamed;
    for (int id : ids) {
      const std::string piece = d.push(id);
      EXPECT_EQ(tokenizer::utf8_first_invalid(piece), std::string::npos) << "piece is not whole UTF-8";
      streamed += piece;
    }
    streamed += d.flush();
    EXPECT_EQ(streamed, text);
  }
  // Random ids, which break characters anywhere: the pieces still add up to decode().
  for (int k = 0; k < 500; ++k) {
    std::vector<int> ids(1 + rng() % 10);
    for (int& id : ids) id = int(rng() % 2 ? rng() % tok.vocab_size() : *tok.token_id(tokenizer::byte_symbol(0x80 + rng() % 0x78)));
    for (bool skip : {false, true}) {
      StreamingDecoder d(tok, skip);
      std::string streamed;
      for (int id : ids) streamed += d.push(id);
      streamed += d.flush();
      EXPECT_EQ(streamed, tok.decode(ids, skip)) << nlohmann::json(ids).dump();
    }
  }
}

TEST(TokenizerErrors, BadInputsAreClearErrors) {
  const Tokenizer tok = Tokenizer::load(deepseek_tokenizer_dir());
  EXPECT_NE(error_of([&] { tok.encode("ok \xFF bad"); }).find("invalid UTF-8 at byte 3"), std::string::npos);
  EXPECT_NE(error_of([&] { tok.encode("\xED\xA0\x80"); }).find("invalid UTF-8"), std::string::npos);  // surrogate
  EXPECT_NE(error_of([&] { tok.encode("\xC0\xAF"); }).find("invalid UTF-8"), std::string::npos);      // overlong
  EXPECT_NE(error_of([&] { tok.encode("\xE4\xB8"); }).find("invalid UTF-8"), std::string::npos);      // truncated
  const std::vector<int> unknown = {5, 999999};
  EXPECT_NE(error_of([&] { tok.decode(unknown); }).find("unknown token id 999999"), std::string::npos);
  const std::vector<int> negative = {-1};
  EXPECT_NE(error_of([&] { tok.decode(negative); }).find("unknown token id -1"), std::string::npos);
  StreamingDecoder d(tok);
  EXPECT_NE(error_of([&] { d.push(200000); }).find("unknown token id"), std::string::npos);
}

TEST(TokenizerErrors, BadFilesAreClearErrors) {
  const auto dir = scratch_dir("bad-tokenizer");
  EXPECT_NE(error_of([&] { Tokenizer::load(dir); }).find((dir / "tokenizer.json").string()), std::string::npos);
  EXPECT_NE(error_of([&] { tokenizer::ChatTemplate::load(dir); }).find("tokenizer_config.json"), std::string::npos);
  auto write = [&](const std::string& json) { std::ofstream(dir / "tokenizer.json") << json; };
  write("{not json");
  EXPECT_NE(error_of([&] { Tokenizer::load(dir); }).find("not valid JSON"), std::string::npos);
  write("[]");
  EXPECT_NE(error_of([&] { Tokenizer::load(dir); }).find("not a JSON object"), std::string::npos);
  const std::string byte_level = R"("pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "use_regex": false},
                                    "decoder": {"type": "ByteLevel"})";
  write("{" + byte_level + "}");
  EXPECT_NE(error_of([&] { Tokenizer::load(dir); }).find("no \"model\""), std::string::npos);
  write("{" + byte_level + R"(, "model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a b"]}})");
  EXPECT_NE(error_of([&] { Tokenizer::load(dir); }).find("merges[0]"), std::string::npos);
  write("{" + byte_level + R"(, "model": {"type": "WordPiece", "vocab": {}}})");
  EXPECT_NE(error_of([&] { Tokenizer::load(dir); }).find("WordPiece"), std::string::npos);
  write(R"({"pre_tokenizer": {"type": "Split", "pattern": {"Regex": "(unclosed"}, "behavior": "Isolated"}, "model": {}})");
  EXPECT_NE(error_of([&] { Tokenizer::load(dir); }).find("ByteLevel"), std::string::npos);
  write(R"({"pre_tokenizer": {"type": "Sequence", "pretokenizers": [{"type": "Split", "pattern": {"Regex": "(unclosed"},
           "behavior": "Isolated"}, {"type": "ByteLevel"}]}, "decoder": {"type": "ByteLevel"}, "model": {"vocab": {}, "merges": []}})");
  EXPECT_NE(error_of([&] { Tokenizer::load(dir); }).find("cannot compile"), std::string::npos);
  write("{" + byte_level + R"(, "model": {"vocab": {"a": 0}, "merges": []}, "added_tokens": [{"id": 1}]})");
  EXPECT_NE(error_of([&] { Tokenizer::load(dir); }).find("added_tokens[0]"), std::string::npos);
  // A tiny valid one works.
  write("{" + byte_level + R"(, "model": {"vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["a b"]}})");
  EXPECT_EQ(Tokenizer::load(dir).encode("abab"), (std::vector<int>{2, 2}));

  std::ofstream(dir / "tokenizer_config.json") << R"({"chat_template": "{% if %}"})";
  EXPECT_NE(error_of([&] { tokenizer::ChatTemplate::load(dir); }).find("chat_template"), std::string::npos);
  EXPECT_NE(error_of([&] { tokenizer::parse_chat_messages(R"([{"role": "user"}])", "m.json"); }).find("messages[0]"),
            std::string::npos);
}

TEST(TokenizerErrors, CliReportsErrors) {
  const auto dir = deepseek_tokenizer_dir();
  const std::string bin = epserve_binary().string() + " tokenize";
  auto r = run_command(bin + " --help");
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_NE(r.output.find("--decode"), std::string::npos);
  r = run_command(bin + " --no-such-flag x");
  EXPECT_NE(r.exit_code, 0);
  r = run_command(bin + " --model /nonexistent/dir hello");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.output.find("/nonexistent/dir/tokenizer.json"), std::string::npos) << r.output;
  r = run_command(bin + " --model " + dir.string() + " --decode 1,2,99999999");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.output.find("unknown token id 99999999"), std::string::npos) << r.output;
  r = run_command(bin + " --model " + dir.string() + " --decode 1,x");
  EXPECT_EQ(r.exit_code, 1);
  r = run_command(bin + " --model " + dir.string() + " \"$(printf 'bad \\377')\"");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.output.find("invalid UTF-8"), std::string::npos) << r.output;
  // An empty text is a text: no ids.
  r = run_command(bin + " --model " + dir.string() + " ''");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(r.output, "[]\n");
  r = run_command(bin + " --model " + dir.string());
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.output.find("exactly one of"), std::string::npos) << r.output;
  const auto scratch = scratch_dir("cli-errors");
  std::ofstream(scratch / "lines.jsonl") << "\"fine\"\nnot json\n";
  r = run_command(bin + " --model " + dir.string() + " --file " + (scratch / "lines.jsonl").string());
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.output.find("lines.jsonl:2"), std::string::npos) << r.output;
}

}  // namespace
}  // namespace epserve::testing
