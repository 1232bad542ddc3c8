// TextAssembler (serve/text_stream.h), driven with the real DeepSeek-V3 tokenizer of the `tiny`
// checkpoint: the test encodes chosen pieces of text separately and feeds the ids, so that it decides
// where the token boundaries fall (byte-level BPE decodes the ids of a piece back to exactly that
// piece). Stop sequences split across tokens, at the very start, spanning three tokens, several at
// once; <think>…</think> split into reasoning (also with the tags cut across tokens); UTF-8 held
// back until a character is complete.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "serve/text_stream.h"
#include "support/paths.h"
#include "tokenizer/tokenizer.h"

namespace epserve::testing {
namespace {

using serve::TextAssembler;
using serve::TextPiece;

const tokenizer::Tokenizer& tok() {
  static const auto t = tokenizer::Tokenizer::load(generated_model("tiny"));
  return t;
}

// The ids of each piece, encoded on its own: a token boundary falls between pieces (and maybe inside).
std::vector<std::vector<int>> encode_pieces(const std::vector<std::string>& pieces) {
  std::vector<std::vector<int>> out;
  for (const auto& p : pieces) {
    out.push_back(tok().encode(p));
    EXPECT_EQ(tok().decode(out.back()), p) << "the tokenizer does not round-trip this piece";
  }
  return out;
}

bool valid_utf8(const std::string& s) {
  for (size_t i = 0; i < s.size();) {
    const unsigned char c = s[i];
    const int n = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 0;
    if (n == 0 || i + n > s.size()) return false;
    for (int k = 1; k < n; ++k)
      if ((static_cast<unsigned char>(s[i + k]) >> 6) != 0x2) return false;
    i += size_t(n);
  }
  return true;
}

struct Output {
  std::string content, reasoning;
  bool stopped = false;
  std::vector<TextPiece> pieces;          // one per push (and the finish, unless stopped)
  std::vector<std::string> content_after;  // content emitted so far, after each piece of input
};

// Feeds every id of every piece, then finish() unless a stop matched (as the router does).
Output feed(TextAssembler& a, const std::vector<std::vector<int>>& pieces) {
  Output r;
  auto take = [&](TextPiece p) {
    EXPECT_TRUE(valid_utf8(p.content)) << p.content;
    EXPECT_TRUE(valid_utf8(p.reasoning)) << p.reasoning;
    EXPECT_FALSE(r.stopped && (!p.content.empty() || !p.reasoning.empty())) << "text after the stop";
    r.content += p.content;
    r.reasoning += p.reasoning;
    r.stopped = r.stopped || p.stopped;
    r.pieces.push_back(std::move(p));
  };
  for (const auto& ids : pieces) {
    for (int id : ids) take(a.push(id));
    r.content_after.push_back(r.content);
  }
  if (!r.stopped) take(a.finish());
  return r;
}

Output run(const std::vector<std::string>& pieces, std::vector<std::string> stops, bool split_reasoning = false,
        bool starts_in_reasoning = false) {
  TextAssembler a(tok(), std::move(stops), split_reasoning, starts_in_reasoning);
  return feed(a, encode_pieces(pieces));
}

TEST(TextStream, NoStopsPassesTextThroughExactly) {
  const Output r = run({"Hello", " world", ", how are", " you?"}, {});
  EXPECT_EQ(r.content, "Hello world, how are you?");
  EXPECT_EQ(r.reasoning, "");
  EXPECT_FALSE(r.stopped);
  // Nothing is held back without stop strings: each piece's text is out as soon as it is pushed.
  EXPECT_EQ(r.content_after[0], "Hello");
  EXPECT_EQ(r.content_after[2], "Hello world, how are");
}

TEST(TextStream, StopSplitAcrossTwoTokensIsHeldBackThenCut) {
  const auto ids = encode_pieces({"The answer is 42", " EN", "D of it", " and more"});
  TextAssembler a(tok(), {" END"}, false);
  const Output r = feed(a, ids);
  EXPECT_TRUE(r.stopped);
  EXPECT_EQ(r.content, "The answer is 42");
  // " EN" could begin the stop string: it was never emitted before the match was known.
  EXPECT_EQ(r.content_after[1], "The answer is 42");
  EXPECT_TRUE(a.stopped());
  EXPECT_TRUE(a.push(ids[3][0]).content.empty());  // nothing after a stop
}

TEST(TextStream, StopSpanningThreeTokens) {
  const auto ids = encode_pieces({"alpha beta ", "ST", "O", "P", " gamma"});
  ASSERT_EQ(ids[1].size() + ids[2].size() + ids[3].size(), 3u) << "ST, O, P are one token each";
  const Output r = [&] {
    TextAssembler a(tok(), {"STOP"}, false);
    return feed(a, ids);
  }();
  EXPECT_TRUE(r.stopped);
  EXPECT_EQ(r.content, "alpha beta ");
  EXPECT_EQ(r.content_after[1], "alpha beta ");
  EXPECT_EQ(r.content_after[2], "alpha beta ");
  // The stop came with the fourth piece's token: the tokens after it were never pushed.
  EXPECT_TRUE(r.pieces[ids[0].size() + 2].stopped);
}

TEST(TextStream, NearMissIsReleasedOnceItCannotMatch) {
  const Output r = run({"alpha ", "ST", "O", "X", " beta"}, {"STOP"});
  EXPECT_FALSE(r.stopped);
  EXPECT_EQ(r.content, "alpha STOX beta");
  EXPECT_EQ(r.content_after[2], "alpha ");      // "STO" held back
  EXPECT_EQ(r.content_after[3], "alpha STOX");  // released when "X" ruled the stop out
  // Text held back at the end of generation comes out with finish().
  const Output end = run({"alpha ", "ST", "O"}, {"STOP"});
  EXPECT_FALSE(end.stopped);
  EXPECT_EQ(end.content_after[2], "alpha ");
  EXPECT_EQ(end.content, "alpha STO");
}

TEST(TextStream, StopAtTheVeryStart) {
  const Output r = run({"Hello", " there", " friend"}, {"Hello"});
  EXPECT_TRUE(r.stopped);
  EXPECT_EQ(r.content, "");
  EXPECT_TRUE(r.pieces.front().stopped) << "the first token completes the stop string";
  // Split across the first two tokens.
  const Output split = run({"He", "llo there"}, {"Hello"});
  EXPECT_TRUE(split.stopped);
  EXPECT_EQ(split.content, "");
}

TEST(TextStream, SeveralStopStringsTheEarliestWins) {
  // Both match in the same token's text: the one that starts first cuts.
  const Output r = run({"one two", " ENDING", " three"}, {"ING", "END", "never"});
  EXPECT_TRUE(r.stopped);
  EXPECT_EQ(r.content, "one two ");
  // Overlapping candidates: "abcd" is a live prefix while "bce" completes.
  const Output o = run({"x a", "b", "c", "e y"}, {"abcd", "bce"});
  EXPECT_TRUE(o.stopped);
  EXPECT_EQ(o.content, "x a");
  // Only the second of three stop strings occurs, split over tokens.
  const Output second = run({"first line\n", "\n", "\nsecond"}, {"</s>", "\n\n\n", "###"});
  EXPECT_TRUE(second.stopped);
  EXPECT_EQ(second.content, "first line");
  // The longest possible partial match is held back: "##" could begin "###".
  const Output held = run({"title ", "#", "#", " body"}, {"###", "#!"});
  EXPECT_FALSE(held.stopped);
  EXPECT_EQ(held.content_after[1], "title ");
  EXPECT_EQ(held.content_after[2], "title ");
  EXPECT_EQ(held.content, "title ## body");
}

TEST(TextStream, ThinkTagsSplitIntoReasoning) {
  const Output r = run({"<think>", "Let me think", " about it.", "</think>", "\n\n", "The answer", " is 4."}, {}, true);
  EXPECT_EQ(r.reasoning, "Let me think about it.");
  EXPECT_EQ(r.content, "The answer is 4.");  // the blank line after </think> is dropped
  EXPECT_FALSE(r.stopped);
  // Leading whitespace before <think> is allowed.
  const Output ws = run({"\n", "<think>", "hmm", "</think>", "ok"}, {}, true);
  EXPECT_EQ(ws.reasoning, "hmm");
  EXPECT_EQ(ws.content, "ok");
}

TEST(TextStream, ThinkTagsCutAcrossTokens) {
  const auto ids = encode_pieces({"<", "th", "ink", ">", "reason", "ing here", "</", "thi", "nk", ">", "\n\nfinal"});
  for (size_t i : {0u, 1u, 2u, 3u, 6u, 7u, 8u, 9u})
    ASSERT_EQ(tok().decode(ids[i]).find("think>"), std::string::npos);
  TextAssembler a(tok(), {}, true);
  const Output r = feed(a, ids);
  EXPECT_EQ(r.reasoning, "reasoning here");
  EXPECT_EQ(r.content, "final");
  // No piece of a tag ever reached either channel.
  for (const auto& p : r.pieces) {
    EXPECT_EQ(p.content.find('<'), std::string::npos) << p.content;
    EXPECT_EQ(p.reasoning.find('<'), std::string::npos) << p.reasoning;
  }
}

TEST(TextStream, ReasoningWhenTheTemplateOpenedThink) {
  // R1's template ends the prompt with "<think>\n": the output starts inside the reasoning.
  const Output r = run({"First", " I check", ".</th", "ink>\n\n", "Done."}, {}, true, true);
  EXPECT_EQ(r.reasoning, "First I check.");
  EXPECT_EQ(r.content, "Done.");
  // Generation ending before </think>: all of it is reasoning, the held "</th" included.
  const Output cut = run({"still", " thinking </th"}, {}, true, true);
  EXPECT_EQ(cut.reasoning, "still thinking </th");
  EXPECT_EQ(cut.content, "");
}

TEST(TextStream, NoThinkTagMeansContentAndPartialTagIsReleased) {
  const Output r = run({"<thin", "g> is not a tag"}, {}, true);
  EXPECT_EQ(r.reasoning, "");
  EXPECT_EQ(r.content, "<thing> is not a tag");
  // Without split_reasoning (completions), <think> is plain text.
  const Output plain = run({"<think>", "x", "</think>", "y"}, {}, false);
  EXPECT_EQ(plain.content, "<think>x</think>y");
  EXPECT_EQ(plain.reasoning, "");
}

TEST(TextStream, StopStringsApplyAfterTheReasoningSplit) {
  const Output r = run({"<think>", "plan", "</think>", "\n\n", "answer ", "ST", "OP", " tail"}, {"STOP"}, true);
  EXPECT_TRUE(r.stopped);
  EXPECT_EQ(r.reasoning, "plan");
  EXPECT_EQ(r.content, "answer ");
}

// A character whose bytes the byte-level BPE spreads over several tokens.
std::vector<int> split_character_ids(std::string& which) {
  for (const char* c : {"\xF0\x9F\xA6\x99" /* 🦙 */, "\xF0\x9F\xAB\x8E" /* 🫎 */, "\xF0\x90\x8D\x88" /* 𐍈 */,
                        "\xE1\x9A\xA0" /* ᚠ */, "\xE2\xB4\xB0" /* ⴰ */}) {
    auto ids = tok().encode(c);
    if (ids.size() >= 2) {
      which = c;
      return ids;
    }
  }
  return {};
}

TEST(TextStream, Utf8IsHeldBackUntilTheCharacterIsComplete) {
  std::string ch;
  const std::vector<int> ids = split_character_ids(ch);
  ASSERT_GE(ids.size(), 2u) << "no test character is split over tokens by this tokenizer";
  const auto before = tok().encode("caf\xC3\xA9 ");
  const auto after = tok().encode(" ok");
  TextAssembler a(tok(), {}, false);
  const Output r = feed(a, {before, ids, after});
  EXPECT_EQ(r.content, "caf\xC3\xA9 " + ch + " ok");
  // Every token of the split character but the last gave no text; the last gave the whole character.
  for (size_t i = 0; i + 1 < ids.size(); ++i) EXPECT_EQ(r.pieces[before.size() + i].content, "") << i;
  EXPECT_EQ(r.pieces[before.size() + ids.size() - 1].content, ch);
  // Ending inside a character: finish() shows the unfinished bytes as U+FFFD, still valid UTF-8.
  TextAssembler b(tok(), {}, false);
  const Output cut = feed(b, {before, std::vector<int>(ids.begin(), ids.end() - 1)});
  EXPECT_EQ(cut.content, "caf\xC3\xA9 \xEF\xBF\xBD");
}

TEST(TextStream, StopStringMadeOfMultibyteCharacters) {
  std::string ch;
  const std::vector<int> ids = split_character_ids(ch);
  ASSERT_GE(ids.size(), 2u);
  const auto head = tok().encode("one ");
  const auto tail = tok().encode(" two");
  TextAssembler a(tok(), {ch + " t"}, false);
  const Output r = feed(a, {head, ids, tail});
  EXPECT_TRUE(r.stopped);
  EXPECT_EQ(r.content, "one ");
}

}  // namespace
}  // namespace epserve::testing
