#include "serve/log.h"

#include <chrono>
#include <cstdio>
#include <mutex>

namespace epserve::serve {

void log_event(const std::string& level, const std::string& event, nlohmann::json fields) {
  static std::mutex mu;
  const double ts = std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  nlohmann::json j = {{"ts", ts}, {"level", level}, {"event", event}};
  if (fields.is_object())
    for (auto& [k, v] : fields.items()) j[k] = v;
  const std::string line = j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
  std::lock_guard lk(mu);
  std::fwrite(line.data(), 1, line.size(), stderr);
  std::fflush(stderr);
}

}  // namespace epserve::serve
