#include "base/json_file.h"

#include <fstream>
#include <sstream>

#include "base/error.h"

namespace epserve {

nlohmann::json read_json_file(const std::filesystem::path& path, const std::string& hint, bool require_object) {
  const std::string where = path.string();
  std::ifstream in(path, std::ios::binary);
  EPS_REQUIRE(in, where + ": cannot open (" + hint + ")");
  std::stringstream text;
  text << in.rdbuf();
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text.str());
  } catch (const nlohmann::json::exception& e) {
    throw Error(where + ": not valid JSON (" + e.what() + ")");
  }
  EPS_REQUIRE(!require_object || j.is_object(), where + ": top level is not a JSON object");
  return j;
}

}  // namespace epserve
