// Reading a JSON file at a boundary: errors name the file and say what to check.
#pragma once
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>

namespace epserve {

// Parses `path`; throws epserve::Error "<path>: cannot open (<hint>)" or "<path>: not valid JSON (...)",
// and "<path>: top level is not a JSON object" when `require_object`.
nlohmann::json read_json_file(const std::filesystem::path& path, const std::string& hint, bool require_object = true);

}  // namespace epserve
