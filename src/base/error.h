// Errors that reach a user: one exception type whose message says what is wrong and where
// (file, tensor, field), so that a CLI can print it and a server can turn it into a 4xx.
#pragma once
#include <stdexcept>
#include <string>

namespace epserve {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

}  // namespace epserve

// Checks a condition that depends on input (files, flags, requests); throws epserve::Error.
#define EPS_REQUIRE(cond, msg)                          \
  do {                                                  \
    if (!(cond)) throw ::epserve::Error(msg);           \
  } while (0)
