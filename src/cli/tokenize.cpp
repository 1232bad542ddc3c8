// `epserve tokenize`: DeepSeek-V3's tokenizer from a checkpoint directory (tokenizer.json and, for
// --chat, tokenizer_config.json). Encodes, decodes, renders chat templates, and measures speed.
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "base/error.h"
#include "cli/command.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace epserve::cli {
namespace {

using tokenizer::Tokenizer;

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path + ": cannot open");
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void append_ids(std::string& out, const std::vector<int>& ids) {
  out += '[';
  for (size_t k = 0; k < ids.size(); ++k) {
    if (k) out += ',';
    out += std::to_string(ids[k]);
  }
  out += ']';
}

std::vector<int> parse_ids(const std::string& list) {
  std::vector<int> ids;
  std::string s = list;
  for (char& c : s)
    if (c == '[' || c == ']' || c == ',') c = ' ';
  std::istringstream in(s);
  std::string word;
  while (in >> word) {
    size_t used = 0;
    long long v = 0;
    try {
      v = std::stoll(word, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != word.size() || v < INT32_MIN || v > INT32_MAX)
      throw Error("--decode: \"" + word + "\" is not a token id");
    ids.push_back(int(v));
  }
  return ids;
}

// One JSON string per line in, one JSON array of ids per line out, all in this process.
void encode_lines(const Tokenizer& tok, const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path + ": cannot open");
  std::string line, out;
  std::vector<int> ids;
  size_t line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    std::string text;
    try {
      auto j = nlohmann::json::parse(line);
      if (!j.is_string()) throw Error("");
      text = j.get<std::string>();
    } catch (const std::exception&) {
      throw Error(path + ":" + std::to_string(line_no) + ": expected one JSON string per line");
    }
    ids.clear();
    try {
      tok.encode_append(text, ids);
    } catch (const Error& e) {
      throw Error(path + ":" + std::to_string(line_no) + ": " + e.what());
    }
    append_ids(out, ids);
    out += '\n';
    if (out.size() > (1 << 20)) std::fwrite(out.data(), 1, out.size(), stdout), out.clear();
  }
  std::fwrite(out.data(), 1, out.size(), stdout);
}

// Encodes the whole file (raw text) `repeat` times on this one thread and reports MB/s; the first
// pass is timed separately because it fills the per-word cache.
void bench(const Tokenizer& tok, const std::string& path, int repeat) {
  const std::string text = read_file(path);
  using clock = std::chrono::steady_clock;
  size_t n_tokens = 0;
  double first = 0, rest = 0;
  for (int r = 0; r < repeat + 1; ++r) {
    const auto t0 = clock::now();
    n_tokens = tok.encode(text).size();
    const double s = std::chrono::duration<double>(clock::now() - t0).count();
    (r == 0 ? first : rest) += s;
  }
  const double mb = double(text.size()) / 1e6;
  std::printf("{\"bytes\":%zu,\"tokens\":%zu,\"first_pass_mb_per_s\":%.2f,\"warm_mb_per_s\":%.2f,\"repeats\":%d}\n",
              text.size(), n_tokens, mb / first, repeat ? mb * repeat / rest : 0.0, repeat);
}

CommandRegistration reg{
    "tokenize", "DeepSeek-V3 tokenizer: encode text, decode ids, render chat templates", [](CLI::App& app) {
      struct Options {
        std::string model, text, decode, file, chat, bench;
        bool print_text = false, generation_prompt = false, skip_special = false, json = false;
        int repeat = 3;
      };
      auto o = std::make_shared<Options>();
      o->model = tokenizer::default_tokenizer_dir().string();
      app.add_option("--model", o->model, "checkpoint directory with tokenizer.json (and tokenizer_config.json)")
          ->capture_default_str();
      auto* text_option = app.add_option("text", o->text, "text to encode: prints its ids as a JSON array");
      app.add_option("--decode", o->decode, "comma-separated ids to decode: prints the text");
      app.add_option("--file", o->file, "file with one JSON string per line: prints one JSON array of ids per line");
      app.add_option("--chat", o->chat, "JSON file with a messages list: renders the chat template and prints the ids");
      app.add_flag("--add-generation-prompt", o->generation_prompt, "with --chat: end with the assistant prompt");
      app.add_flag("--text", o->print_text, "with --chat: print the rendered string instead of ids");
      app.add_flag("--skip-special", o->skip_special, "with --decode: leave special tokens out");
      app.add_flag("--json", o->json, "with --decode or --chat --text: print the text as a JSON string");
      app.add_option("--bench", o->bench, "encode this text file repeatedly on one thread and print MB/s");
      app.add_option("--repeat", o->repeat, "with --bench: timed passes after the first")->capture_default_str();
      return [o, text_option]() -> int {
        // An empty TEXT argument is still a text to encode (its ids are []).
        const int modes = (text_option->count() > 0) + !o->decode.empty() + !o->file.empty() + !o->chat.empty() + !o->bench.empty();
        if (modes != 1) throw Error("tokenize: give exactly one of TEXT, --decode, --file, --chat, --bench");
        auto print_text = [&](const std::string& s) {
          if (o->json) std::cout << nlohmann::json(s).dump() << "\n";
          else std::cout << s << "\n";
        };
        if (!o->chat.empty()) {
          const auto messages = tokenizer::parse_chat_messages(read_file(o->chat), o->chat);
          const auto tmpl = tokenizer::ChatTemplate::load(o->model);
          const std::string rendered = tmpl.render(messages, o->generation_prompt);
          if (o->print_text) {
            print_text(rendered);
            return 0;
          }
          std::string out;
          append_ids(out, Tokenizer::load(o->model).encode(rendered));
          std::cout << out << "\n";
          return 0;
        }
        const Tokenizer tok = Tokenizer::load(o->model);
        if (!o->decode.empty()) {
          print_text(tok.decode(parse_ids(o->decode), o->skip_special));
        } else if (!o->file.empty()) {
          encode_lines(tok, o->file);
        } else if (!o->bench.empty()) {
          bench(tok, o->bench, o->repeat);
        } else {
          std::string out;
          append_ids(out, tok.encode(o->text));
          std::cout << out << "\n";
        }
        return 0;
      };
    }};

}  // namespace
}  // namespace epserve::cli
