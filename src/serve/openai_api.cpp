#include "serve/openai_api.h"

#include <cmath>

namespace epserve::serve {

using nlohmann::json;

json error_body(const std::string& message, const std::string& type, const std::string& param, const std::string& code) {
  return {{"error",
           {{"message", message},
            {"type", type},
            {"param", param.empty() ? json(nullptr) : json(param)},
            {"code", code.empty() ? json(nullptr) : json(code)}}}};
}

json ApiError::body() const { return error_body(what(), type, param, code); }

namespace {

[[noreturn]] void bad(const std::string& param, const std::string& message, const std::string& code = "invalid_value") {
  throw ApiError(400, message, "invalid_request_error", param, code);
}

const char* type_name(const json& v) {
  switch (v.type()) {
    case json::value_t::null: return "null";
    case json::value_t::boolean: return "a boolean";
    case json::value_t::string: return "a string";
    case json::value_t::array: return "an array";
    case json::value_t::object: return "an object";
    default: return "a number";
  }
}

double get_number(const json& j, const char* name, double lo, double hi) {
  const json& v = j.at(name);
  if (!v.is_number()) bad(name, std::string("'") + name + "' must be a number, not " + type_name(v), "invalid_type");
  const double x = v.get<double>();
  if (!std::isfinite(x) || x < lo || x > hi)
    bad(name, std::string("'") + name + "' must be between " + std::to_string(lo) + " and " + std::to_string(hi) +
                  ", got " + v.dump());
  return x;
}

int64_t get_int(const json& j, const char* name, int64_t lo, int64_t hi) {
  const json& v = j.at(name);
  if (!v.is_number_integer() && !(v.is_number_float() && std::floor(v.get<double>()) == v.get<double>()))
    bad(name, std::string("'") + name + "' must be an integer, not " + (v.is_number() ? v.dump() : type_name(v)),
        "invalid_type");
  if (v.is_number_float()) {
    const double d = v.get<double>();
    if (d < double(lo) || d > double(hi)) bad(name, std::string("'") + name + "' is out of range: " + v.dump());
    return int64_t(d);
  }
  if (v.is_number_unsigned() && v.get<uint64_t>() > uint64_t(INT64_MAX))
    bad(name, std::string("'") + name + "' is out of range: " + v.dump());
  const int64_t x = v.get<int64_t>();
  if (x < lo || x > hi)
    bad(name, std::string("'") + name + "' must be between " + std::to_string(lo) + " and " + std::to_string(hi) +
                  ", got " + std::to_string(x));
  return x;
}

bool get_bool(const json& j, const char* name) {
  const json& v = j.at(name);
  if (!v.is_boolean()) bad(name, std::string("'") + name + "' must be a boolean, not " + type_name(v), "invalid_type");
  return v.get<bool>();
}

std::string get_string(const json& j, const char* name) {
  const json& v = j.at(name);
  if (!v.is_string()) bad(name, std::string("'") + name + "' must be a string, not " + type_name(v), "invalid_type");
  return v.get<std::string>();
}

bool has(const json& j, const char* name) { return j.contains(name) && !j.at(name).is_null(); }

// Message content: a string, or an array of {"type": "text", "text": ...} parts (joined).
std::string content_of(const json& m, size_t i) {
  const std::string param = "messages[" + std::to_string(i) + "].content";
  if (!m.contains("content") || m["content"].is_null()) {
    if (m.value("role", "") == "assistant") return "";
    bad(param, "'" + param + "' is required");
  }
  const json& c = m["content"];
  if (c.is_string()) return c.get<std::string>();
  if (c.is_array()) {
    std::string text;
    for (size_t k = 0; k < c.size(); ++k) {
      const json& part = c[k];
      if (!part.is_object() || part.value("type", "") != "text" || !part.contains("text") || !part["text"].is_string())
        bad(param, "'" + param + "[" + std::to_string(k) + "]' must be {\"type\": \"text\", \"text\": string}",
            "invalid_type");
      text += part["text"].get<std::string>();
    }
    return text;
  }
  bad(param, "'" + param + "' must be a string or an array of text parts, not " + type_name(c), "invalid_type");
}

}  // namespace

ApiRequest parse_api_request(const std::string& body, bool chat) {
  json j;
  try {
    j = json::parse(body);
  } catch (const json::parse_error& e) {
    throw ApiError(400, std::string("the request body is not valid JSON: ") + e.what(), "invalid_request_error", "",
                   "invalid_json");
  }
  if (!j.is_object()) throw ApiError(400, "the request body must be a JSON object", "invalid_request_error", "", "invalid_json");
  ApiRequest r;
  r.chat = chat;
  if (!has(j, "model")) bad("model", "'model' is required", "missing_required_parameter");
  r.model = get_string(j, "model");
  if (chat) {
    if (!has(j, "messages")) bad("messages", "'messages' is required", "missing_required_parameter");
    const json& ms = j["messages"];
    if (!ms.is_array()) bad("messages", std::string("'messages' must be an array, not ") + type_name(ms), "invalid_type");
    if (ms.empty()) bad("messages", "'messages' must not be empty (at least one message is needed)");
    for (size_t i = 0; i < ms.size(); ++i) {
      const json& m = ms[i];
      const std::string p = "messages[" + std::to_string(i) + "]";
      if (!m.is_object()) bad(p, "'" + p + "' must be an object, not " + type_name(m), "invalid_type");
      if (!m.contains("role") || !m["role"].is_string()) bad(p + ".role", "'" + p + ".role' must be a string", "invalid_type");
      const std::string role = m["role"].get<std::string>();
      if (role != "system" && role != "user" && role != "assistant" && role != "tool" && role != "developer")
        bad(p + ".role", "'" + p + ".role' must be one of system, developer, user, assistant, tool; got '" + role + "'");
      r.messages.push_back({role == "developer" ? "system" : role, content_of(m, i)});
    }
  } else {
    if (!has(j, "prompt")) bad("prompt", "'prompt' is required", "missing_required_parameter");
    const json& p = j["prompt"];
    if (p.is_string()) {
      r.prompt_text = p.get<std::string>();
    } else if (p.is_array() && p.size() == 1 && p[0].is_string()) {
      r.prompt_text = p[0].get<std::string>();
    } else if (p.is_array() && !p.empty() && p[0].is_number_integer()) {
      std::vector<int> ids;
      for (const auto& t : p) {
        if (!t.is_number_integer() || t.get<int64_t>() < 0 || t.get<int64_t>() > INT32_MAX)
          bad("prompt", "'prompt' as token ids must be non-negative integers", "invalid_type");
        ids.push_back(int(t.get<int64_t>()));
      }
      r.prompt_ids = std::move(ids);
    } else if (p.is_array() && p.size() > 1) {
      bad("prompt", "'prompt' with several prompts is not supported (send one request per prompt)");
    } else {
      bad("prompt", std::string("'prompt' must be a string or an array of token ids, not ") + type_name(p), "invalid_type");
    }
    if (r.prompt_text && r.prompt_text->empty()) bad("prompt", "'prompt' must not be empty");
  }
  if (has(j, "max_completion_tokens")) r.max_tokens = int(get_int(j, "max_completion_tokens", 1, INT32_MAX));
  if (has(j, "max_tokens")) r.max_tokens = int(get_int(j, "max_tokens", 1, INT32_MAX));
  if (has(j, "temperature")) r.temperature = get_number(j, "temperature", 0, 2);
  if (has(j, "top_p")) r.top_p = get_number(j, "top_p", 0, 1);
  if (r.top_p <= 0) bad("top_p", "'top_p' must be greater than 0");
  if (has(j, "seed")) r.seed = uint64_t(get_int(j, "seed", INT64_MIN, INT64_MAX));
  if (has(j, "n") && get_int(j, "n", 1, 128) != 1)
    bad("n", "'n' must be 1: this server generates one choice per request", "unsupported_value");
  if (has(j, "presence_penalty")) get_number(j, "presence_penalty", -2, 2);
  if (has(j, "frequency_penalty")) get_number(j, "frequency_penalty", -2, 2);
  if (has(j, "stop")) {
    const json& s = j["stop"];
    if (s.is_string()) {
      r.stop.push_back(s.get<std::string>());
    } else if (s.is_array()) {
      if (s.size() > 4) bad("stop", "'stop' may hold at most 4 sequences");
      for (const auto& x : s) {
        if (!x.is_string()) bad("stop", "'stop' must be a string or an array of strings", "invalid_type");
        r.stop.push_back(x.get<std::string>());
      }
    } else {
      bad("stop", std::string("'stop' must be a string or an array of strings, not ") + type_name(s), "invalid_type");
    }
    for (const auto& x : r.stop)
      if (x.empty()) bad("stop", "'stop' sequences must not be empty");
  }
  if (has(j, "stream")) r.stream = get_bool(j, "stream");
  if (has(j, "stream_options")) {
    const json& so = j["stream_options"];
    if (!so.is_object()) bad("stream_options", "'stream_options' must be an object", "invalid_type");
    if (!r.stream) bad("stream_options", "'stream_options' is only allowed when 'stream' is true");
    if (has(so, "include_usage")) r.include_usage = get_bool(so, "include_usage");
  }
  if (chat) {
    if (has(j, "logprobs")) r.logprobs = get_bool(j, "logprobs");
    if (has(j, "top_logprobs")) {
      r.top_logprobs = int(get_int(j, "top_logprobs", 0, 20));
      if (!r.logprobs) bad("top_logprobs", "'top_logprobs' needs 'logprobs' set to true");
    }
  } else if (has(j, "logprobs")) {
    r.logprobs = true;
    r.top_logprobs = int(get_int(j, "logprobs", 0, 5));
  }
  if (has(j, "user")) r.user = get_string(j, "user");
  if (has(j, "ignore_eos")) r.ignore_eos = get_bool(j, "ignore_eos");
  return r;
}

}  // namespace epserve::serve
