#include "serve/deployment.h"

#include <toml++/toml.h>

#include <cerrno>
#include <climits>
#include <cstring>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>

#include "base/error.h"

namespace epserve::serve {
namespace {

namespace fs = std::filesystem;

constexpr std::string_view kTopKeys[] = {"router_address", "unit"};
constexpr std::string_view kUnitKeys[] = {"role",      "ranks",       "name",      "hosts",       "placement",
                                          "redundant", "mpirun_args", "kv_blocks", "max_running", "step_tokens",
                                          "restart"};

// Appends rather than `"'" + key + "'"`, which trips GCC 12's false -Wrestrict warning.
std::string quoted(std::string_view key) {
  std::string s = "'";
  s.append(key).push_back('\'');
  return s;
}

// What a value was, for "got ...": the value itself (in TOML syntax) for a scalar, else its kind,
// so that a message never dumps a whole table.
std::string describe(const toml::node& n) {
  if (n.is_table()) return "a table";
  if (n.is_array()) return "an array";
  if (auto str = n.value_exact<std::string>()) return '"' + *str + '"';  // toml++ would print 'single quotes'
  std::ostringstream s;
  n.visit([&](const auto& v) { s << v; });
  return s.str();
}

// Where a message points: "<file>: " or "<file>: unit 2 (decode-0): ". Every check goes through
// fail(), so that no message can forget the file or the unit.
struct Where {
  std::string file;
  std::string unit;  // empty at top level
  [[noreturn]] void fail(const std::string& what) const {
    throw Error(file + ": " + (unit.empty() ? "" : unit + ": ") + what);
  }
};

// Typo protection: a key we do not know is an error, not silently a default.
template <size_t N>
void reject_unknown_keys(const toml::table& t, const std::string_view (&known)[N], const Where& w,
                         std::string_view what) {
  for (const auto& [key, value] : t) {
    bool ok = false;
    for (auto k : known) ok = ok || k == key.str();
    if (ok) continue;
    std::string list;
    for (auto k : known) list += (list.empty() ? "" : ", ") + std::string(k);
    w.fail("unknown " + std::string(what) + quoted(key.str()) + " (known: " + list + ")");
  }
}

std::optional<int> get_int(const toml::table& t, std::string_view key, int min, const Where& w) {
  const toml::node* n = t.get(key);
  if (!n) return std::nullopt;
  const auto v = n->value_exact<int64_t>();
  if (!v || *v < min) w.fail(quoted(key) + " must be an integer >= " + std::to_string(min) + ", got " + describe(*n));
  if (*v > INT_MAX) w.fail(quoted(key) + " is too large, got " + describe(*n));
  return static_cast<int>(*v);
}

// A string that, when present, must not be empty (an empty name or path is a mistake, not a default).
std::optional<std::string> get_string(const toml::table& t, std::string_view key, const Where& w) {
  const toml::node* n = t.get(key);
  if (!n) return std::nullopt;
  const auto v = n->value_exact<std::string>();
  if (!v || v->empty()) w.fail(quoted(key) + " must be a non-empty string, got " + describe(*n));
  return v;
}

std::vector<std::string> get_strings(const toml::table& t, std::string_view key, const Where& w) {
  std::vector<std::string> out;
  const toml::node* n = t.get(key);
  if (!n) return out;
  const toml::array* a = n->as_array();
  if (!a) w.fail(quoted(key) + " must be an array of strings, got " + describe(*n));
  for (const toml::node& e : *a) {
    const auto v = e.value_exact<std::string>();
    if (!v || v->empty()) w.fail(quoted(key) + " must hold non-empty strings, got " + describe(e));
    out.push_back(*v);
  }
  return out;
}

UnitRole parse_role(const toml::table& t, const Where& w) {
  const toml::node* n = t.get("role");
  if (!n) w.fail("'role' is missing (mixed, prefill or decode)");
  const auto v = n->value_exact<std::string>();
  if (v == "mixed") return UnitRole::kMixed;
  if (v == "prefill") return UnitRole::kPrefill;
  if (v == "decode") return UnitRole::kDecode;
  w.fail("'role' must be \"mixed\", \"prefill\" or \"decode\", got " + describe(*n));
}

// One [[unit]] table. `label` receives "unit N (name)" for the cross-unit checks' messages.
UnitSpec parse_unit(const toml::node& node, size_t index, std::map<UnitRole, int>& per_role, const fs::path& dir,
                    Where w, std::string& label) {
  w.unit = "unit " + std::to_string(index + 1);  // counted from 1, as a reader counts [[unit]] tables
  const toml::table* t = node.as_table();
  if (!t) w.fail("must be a table ([[unit]]), got " + describe(node));

  UnitSpec u;
  u.role = parse_role(*t, w);
  const int role_index = per_role[u.role]++;  // counts every unit of the role, named or not
  u.name = get_string(*t, "name", w).value_or(std::string(to_string(u.role)) + "-" + std::to_string(role_index));
  w.unit += " (" + u.name + ")";
  label = w.unit;
  reject_unknown_keys(*t, kUnitKeys, w, "key ");

  const auto ranks = get_int(*t, "ranks", 1, w);
  if (!ranks) w.fail("'ranks' is missing (the unit's number of MPI ranks, >= 1)");
  u.ranks = *ranks;
  u.hosts = get_strings(*t, "hosts", w);
  if (auto p = get_string(*t, "placement", w)) {
    // Relative to the deployment file, not to wherever `serve` was started; absolute, because the
    // ranks may start in another directory.
    const fs::path resolved = fs::absolute(dir / *p).lexically_normal();
    std::error_code ec;
    if (!fs::is_regular_file(resolved, ec)) w.fail("'placement' file " + resolved.string() + " does not exist");
    u.placement = resolved.string();
  }
  u.redundant = get_int(*t, "redundant", 0, w).value_or(0);
  u.mpirun_args = get_strings(*t, "mpirun_args", w);
  u.kv_blocks = get_int(*t, "kv_blocks", 0, w).value_or(0);
  u.max_running = get_int(*t, "max_running", 0, w).value_or(0);
  u.step_tokens = get_int(*t, "step_tokens", 0, w).value_or(0);
  if (const toml::node* n = t->get("restart")) {
    const auto v = n->value_exact<bool>();
    if (!v) w.fail("'restart' must be true or false, got " + describe(*n));
    u.restart = *v;
  }
  return u;
}

}  // namespace

const char* to_string(UnitRole r) {
  switch (r) {
    case UnitRole::kMixed: return "mixed";
    case UnitRole::kPrefill: return "prefill";
    case UnitRole::kDecode: return "decode";
  }
  return "?";
}

Deployment Deployment::load(const std::filesystem::path& file) {
  const std::string where = file.string();
  EPS_REQUIRE(!fs::is_directory(file), where + ": cannot read the deployment file (it is a directory)");
  std::ifstream in(file, std::ios::binary);
  EPS_REQUIRE(in, where + ": cannot read the deployment file (" + std::strerror(errno) + ")");
  std::stringstream text;
  text << in.rdbuf();
  return parse(text.str(), file);
}

Deployment Deployment::parse(std::string_view toml_text, const std::filesystem::path& name_for_errors) {
  const Where top{name_for_errors.string(), ""};
  toml::table root;
  try {
    root = toml::parse(toml_text, std::string_view(top.file));
  } catch (const toml::parse_error& e) {
    top.fail("line " + std::to_string(e.source().begin.line) + ", column " + std::to_string(e.source().begin.column) +
             ": not valid TOML: " + std::string(e.description()));
  }
  reject_unknown_keys(root, kTopKeys, top, "top-level key ");

  Deployment d;
  const auto address = get_string(root, "router_address", top);
  if (address) d.router_address = *address;

  const toml::node* unit_node = root.get("unit");
  if (unit_node && !unit_node->is_array()) top.fail("'unit' must be an array of tables ([[unit]]), got " + describe(*unit_node));
  const toml::array* tables = unit_node ? unit_node->as_array() : nullptr;
  if (!tables || tables->empty()) top.fail("no units (add a [[unit]] table for each unit)");

  std::map<UnitRole, int> per_role;
  std::vector<std::string> labels(tables->size());
  for (size_t i = 0; i < tables->size(); ++i)
    d.units.push_back(parse_unit(*tables->get(i), i, per_role, name_for_errors.parent_path(), top, labels[i]));

  // Checks across units, each pointing at the first unit that shows the problem.
  auto first = [&](auto pred) -> int {
    for (size_t i = 0; i < d.units.size(); ++i)
      if (pred(d.units[i])) return static_cast<int>(i);
    return -1;
  };
  auto at = [&](int i) { return Where{top.file, labels[i]}; };
  for (size_t i = 0; i < d.units.size(); ++i)
    for (size_t j = 0; j < i; ++j)
      if (d.units[i].name == d.units[j].name)
        at(i).fail("name '" + d.units[i].name + "' is already used by " + labels[j]);

  const int mixed = first([](const UnitSpec& u) { return u.role == UnitRole::kMixed; });
  const int prefill = first([](const UnitSpec& u) { return u.role == UnitRole::kPrefill; });
  const int decode = first([](const UnitSpec& u) { return u.role == UnitRole::kDecode; });
  if (mixed >= 0 && (prefill >= 0 || decode >= 0)) {
    const int other = prefill >= 0 ? prefill : decode;
    top.fail("units are mixed, or prefill and decode, not both (" + labels[mixed] + " is mixed, " + labels[other] +
             " is " + to_string(d.units[other].role) + ")");
  }
  if (prefill >= 0 && decode < 0) at(prefill).fail("a prefill unit needs a decode unit to hand its requests to");
  if (decode >= 0 && prefill < 0) at(decode).fail("a decode unit needs a prefill unit to run its prompts");

  // Ranks on other hosts cannot reach the router at the loopback default; an explicit address
  // (even 127.0.0.1, for hosts that are this machine) is the user's decision.
  const int remote = first([](const UnitSpec& u) { return !u.hosts.empty(); });
  if (remote >= 0 && !address)
    at(remote).fail("has 'hosts' but router_address is the loopback default " + d.router_address +
                    ": set router_address to an address the hosts can reach");
  return d;
}

Deployment Deployment::single_mixed(int ranks) {
  EPS_REQUIRE(ranks >= 1, "a unit needs at least 1 rank, got " + std::to_string(ranks));
  Deployment d;
  UnitSpec u;
  u.name = "mixed-0";
  u.ranks = ranks;
  d.units.push_back(std::move(u));
  return d;
}

bool Deployment::disaggregated() const {
  for (const auto& u : units)
    if (u.role == UnitRole::kPrefill) return true;
  return false;
}

std::string Deployment::summary() const {
  std::string s;
  for (const auto& u : units) {
    if (!s.empty()) s += ", ";
    s += u.name + " (" + to_string(u.role) + ", " + std::to_string(u.ranks) + (u.ranks == 1 ? " rank)" : " ranks)");
  }
  return s;
}

}  // namespace epserve::serve
