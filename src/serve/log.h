// Structured logs: one JSON object per line on stderr ({"ts", "level", "event", ...fields}).
#pragma once
#include <nlohmann/json.hpp>
#include <string>

namespace epserve::serve {

void log_event(const std::string& level, const std::string& event, nlohmann::json fields = nlohmann::json::object());
inline void log_info(const std::string& event, nlohmann::json fields = nlohmann::json::object()) {
  log_event("info", event, std::move(fields));
}
inline void log_warn(const std::string& event, nlohmann::json fields = nlohmann::json::object()) {
  log_event("warn", event, std::move(fields));
}

}  // namespace epserve::serve
