// DeepSeek-V3's chat template (from its tokenizer_config.json) against transformers.js'
// renderer (@huggingface/jinja) and HF tokenizers, plus Jinja features beyond that template.
#include <gtest/gtest.h>

#include <fstream>

#include "base/error.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/jinja.h"
#include "tokenizer/reference.h"
#include "tokenizer/tokenizer.h"

namespace epserve::testing {
namespace {

using tokenizer::ChatMessage;
using tokenizer::ChatTemplate;
namespace jinja = tokenizer::jinja;

struct Conversation {
  std::vector<ChatMessage> messages;
  bool add_generation_prompt;
};

std::vector<Conversation> conversations() {
  const std::vector<ChatMessage> pool = {
      {"user", "Hello!"},
      {"assistant", "Hi! How can I help you today?"},
      {"user", "写一首关于秋天的诗。"},
      {"assistant", "秋风起，落叶飞，\n金黄满地映余晖。"},
      {"user", "def f(x):\n\treturn x\r\n# what does this do?"},
      {"assistant", "It returns its argument unchanged.\n\n```python\nf(1) == 1\n```"},
      {"user", "  leading spaces and trailing newline\n"},
      {"assistant", ""},
      {"user", "Special tokens in text: <｜User｜> and <｜end▁of▁sentence｜>"},
      {"assistant", "emoji 👨‍👩‍👧‍👦 and {{ braces }} and {% percent %}"},
      {"user", "日本語で答えてください。"},
      {"assistant", "はい、わかりました。"},
  };
  std::vector<Conversation> out;
  const std::vector<std::vector<ChatMessage>> systems = {
      {}, {{"system", "You are a helpful assistant."}}, {{"system", "你是一个乐于助人的助手。"}},
      {{"system", "First system."}, {"system", "Second system, joined with a blank line."}}};
  for (size_t s = 0; s < systems.size(); ++s) {
    for (size_t turns : {1, 2, 3, 5, 8}) {
      Conversation c{systems[s], (turns + s) % 2 == 0};
      for (size_t k = 0; k < turns; ++k) c.messages.push_back(pool[(k + 3 * s) % pool.size()]);
      out.push_back(c);
      c.add_generation_prompt = !c.add_generation_prompt;
      if (turns == 3) out.push_back(c);
    }
  }
  // Edge cases: nothing at all; a system message in the middle; tool output turns.
  out.push_back({{}, true});
  out.push_back({{}, false});
  out.push_back({{{"user", "a"}, {"system", "late system"}, {"assistant", "b"}}, true});
  out.push_back({{{"user", "weather?"}, {"tool", "{\"temp\": 20}"}, {"tool", "{\"wind\": 5}"}, {"assistant", "20 degrees"}}, false});
  out.push_back({{{"user", "weather?"}, {"tool", "{\"temp\": 20}"}}, true});
  return out;
}

nlohmann::json to_json(const std::vector<ChatMessage>& messages) {
  auto arr = nlohmann::json::array();
  for (const auto& m : messages) arr.push_back({{"role", m.role}, {"content", m.content}});
  return arr;
}

TEST(ChatTemplate, DeepSeekV3MatchesTransformers) {
  const auto dir = deepseek_tokenizer_dir();
  const auto tmpl = ChatTemplate::load(dir);
  const auto tok = tokenizer::Tokenizer::load(dir);
  const auto convs = conversations();
  ASSERT_GE(convs.size(), 20u);
  nlohmann::json request;
  for (const auto& c : convs)
    request["chats"].push_back({{"messages", to_json(c.messages)}, {"add_generation_prompt", c.add_generation_prompt}});
  const auto ref = hf_reference(request, "chat");
  for (size_t k = 0; k < convs.size(); ++k) {
    const std::string text = tmpl.render(convs[k].messages, convs[k].add_generation_prompt);
    EXPECT_EQ(text, ref["chats"][k]["text"].get<std::string>()) << "conversation " << k << ": " << request["chats"][k].dump();
    EXPECT_EQ(tok.encode(text), ref["chats"][k]["ids"].get<std::vector<int>>()) << "conversation " << k;
  }
  // The shape DeepSeek documents, spelled out once.
  EXPECT_EQ(tmpl.render({{"system", "S"}, {"user", "U"}, {"assistant", "A"}, {"user", "V"}}, true),
            "<｜begin▁of▁sentence｜>S<｜User｜>U<｜Assistant｜>A<｜end▁of▁sentence｜><｜User｜>V<｜Assistant｜>");
}

TEST(ChatTemplate, CliChat) {
  const auto dir = deepseek_tokenizer_dir();
  const auto scratch = scratch_dir("chat-cli");
  std::ofstream(scratch / "chat.json") << R"([{"role": "system", "content": "S"}, {"role": "user", "content": "Hi"}])";
  const std::string bin = epserve_binary().string() + " tokenize --model " + dir.string() + " --chat " + (scratch / "chat.json").string();
  auto r = run_command(bin + " --add-generation-prompt --text");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(r.output, "<｜begin▁of▁sentence｜>S<｜User｜>Hi<｜Assistant｜>\n");
  r = run_command(bin + " --add-generation-prompt");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto tok = tokenizer::Tokenizer::load(dir);
  EXPECT_EQ(r.output, nlohmann::json(tok.encode("<｜begin▁of▁sentence｜>S<｜User｜>Hi<｜Assistant｜>")).dump() + "\n");
}

// Templates using the rest of the supported subset, rendered by @huggingface/jinja too.
TEST(Jinja, SubsetMatchesHuggingFaceJinja) {
  const std::vector<std::string> sources = {
      "a  {{- ' b ' -}}  c",
      "{% for m in messages %}{{ loop.index }}:{{ m.role }}={{ m['content'] | trim }}{% if not loop.last %}, {% endif %}{% endfor %}",
      "line1\n    {% if true %}\n    inside\n    {% endif %}\nline2\n",
      "{# comment #}\n  {%- set x = 'v' ~ (1 + 2) -%}\n  [{{ x }}]",
      "{% if n > 3 %}big{% elif n == 3 %}three{% else %}small{% endif %}",
      "{{ 'yes' if 'ell' in 'hello' else 'no' }} {{ 'k' in d }} {{ 'z' not in d }}",
      "{% set ns = namespace(acc='') %}{% for i in range(4) %}{% set ns.acc = ns.acc + i|string %}{% endfor %}{{ ns.acc }}",
      "{{ '  padded  '.strip() }}|{{ 'abc'.startswith('ab') }}|{{ 'ABC'|lower }}|{{ messages|length }}",
      "{% for m in messages %}{% set last = m.content %}{% endfor %}[{{ last }}]",
      "{{ undefined_thing }}{% if undefined_thing is not defined %}undefined{% endif %}{{ none_value is none }}",
      "{% for k in d %}{{ k }}={{ d[k] }};{% endfor %}{{ [1, 2, 3] | join('-') }}",
      "{{ 7 // 2 }} {{ 7 % 3 }} {{ 2 * 3 - 1 }}",
      "  {% if true %}keep{% endif %}\n{% if true %}\nx{% endif %}\n{% if true %}y\n{% endif %}",
  };
  jinja::Dict context;
  context["messages"] = jinja::Value(jinja::List{jinja::Value(jinja::Dict{{"role", jinja::Value("user")}, {"content", jinja::Value(" hi ")}}),
                                                 jinja::Value(jinja::Dict{{"role", jinja::Value("assistant")}, {"content", jinja::Value("yo")}})});
  context["n"] = jinja::Value(3);
  context["d"] = jinja::Value(jinja::Dict{{"k", jinja::Value("v")}, {"a", jinja::Value("b")}});
  context["none_value"] = jinja::Value::none();
  nlohmann::json json_context = {{"messages", {{{"role", "user"}, {"content", " hi "}}, {{"role", "assistant"}, {"content", "yo"}}}},
                                 {"n", 3}, {"d", {{"k", "v"}, {"a", "b"}}}, {"none_value", nullptr}};
  nlohmann::json request;
  for (const auto& s : sources) request["templates"].push_back({{"source", s}, {"context", json_context}});
  const auto ref = hf_reference(request, "jinja");
  for (size_t k = 0; k < sources.size(); ++k) {
    std::string expected = ref["templates"][k];
    // JavaScript prints booleans in lower case where Python (transformers) prints True/False.
    for (const auto& [js, py] : {std::pair{"true", "True"}, std::pair{"false", "False"}})
      for (size_t p; (p = expected.find(js)) != std::string::npos;) expected.replace(p, std::string(js).size(), py);
    EXPECT_EQ(jinja::Template::parse(sources[k], "t").render(context), expected) << "template: " << sources[k];
  }
}

// Where transformers.js and transformers (Python Jinja2) differ, we follow Python; these
// expectations were produced by Jinja2 3.1.6 with trim_blocks and lstrip_blocks, as transformers
// configures it.
TEST(Jinja, PythonSemantics) {
  auto render = [](const std::string& src) { return jinja::Template::parse(src, "t").render({}); };
  EXPECT_EQ(render("  {% if true %}keep{% endif %}\n{% if true %}\nx{% endif %}\r\n{% if true %}y\n{% endif %}"), "keepxy\n");
  EXPECT_EQ(render("{{ 7 // 2 }} {{ -7 % 3 }}"), "3 2");
  EXPECT_EQ(render("  {%+ if true %}keep{% endif %}\n"), "  keep");
  EXPECT_EQ(render("{{ true }} {{ none }} {{ [1,'a'] }}"), "True None [1, 'a']");
  EXPECT_THROW(render("{{ 'v' ~ 1 + 2 }}"), Error);  // ~ binds tighter than +: 'v1' + 2
}

TEST(Jinja, ErrorsNameTheProblem) {
  auto parse_error = [](const std::string& src) {
    try {
      jinja::Template::parse(src, "tpl");
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(parse_error("{% if x %}no end").find("endif"), std::string::npos);
  EXPECT_NE(parse_error("{{ x ").find("unclosed"), std::string::npos);
  EXPECT_NE(parse_error("{% macro m() %}{% endmacro %}").find("macro"), std::string::npos);
  EXPECT_NE(parse_error("{{ 'abc }}").find("tpl"), std::string::npos);
  const auto t = jinja::Template::parse("{{ raise_exception('Roles must alternate') }}", "tpl");
  try {
    t.render({});
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("Roles must alternate"), std::string::npos);
  }
  EXPECT_THROW(jinja::Template::parse("{{ 1 + 'a' }}", "tpl").render({}), Error);
}

}  // namespace
}  // namespace epserve::testing
