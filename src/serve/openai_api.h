// The OpenAI request bodies (/v1/chat/completions, /v1/completions): parsing with every check a
// client can fail, each failure an ApiError carrying the HTTP status and OpenAI's error object.
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "tokenizer/chat_template.h"

namespace epserve::serve {

struct ApiError : std::runtime_error {
  ApiError(int status, std::string message, std::string type = "invalid_request_error", std::string param = "",
           std::string code = "")
      : std::runtime_error(message), status(status), type(std::move(type)), param(std::move(param)), code(std::move(code)) {}
  int status;
  std::string type, param, code;
  nlohmann::json body() const;
};

// {"error": {"message", "type", "param", "code"}} (param and code null when empty).
nlohmann::json error_body(const std::string& message, const std::string& type, const std::string& param,
                          const std::string& code);

struct ApiRequest {
  bool chat = true;
  std::string model;
  std::vector<tokenizer::ChatMessage> messages;  // chat
  std::optional<std::string> prompt_text;        // completions
  std::optional<std::vector<int>> prompt_ids;    // completions given as token ids
  std::optional<int> max_tokens;
  double temperature = 1, top_p = 1;
  std::optional<uint64_t> seed;
  std::vector<std::string> stop;
  bool stream = false, include_usage = false;
  bool logprobs = false;
  int top_logprobs = 0;
  std::string user;
  bool ignore_eos = false;  // extension (vLLM's name): generate max_tokens tokens
};

ApiRequest parse_api_request(const std::string& body, bool chat);

}  // namespace epserve::serve
