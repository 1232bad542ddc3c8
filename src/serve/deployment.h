// A deployment: the units behind one router (DESIGN.md: prefill and decode in separate units).
// Read from a TOML file (`epserve serve --deployment FILE`); see docs/ARCHITECTURE.md, Serving.
//
// The file: an optional top-level `router_address`, then one [[unit]] table per unit, e.g.
//
//   router_address = "10.0.0.1"        # optional; required as soon as a unit has `hosts`
//
//   [[unit]]
//   role = "prefill"                   # mixed | prefill | decode; required
//   ranks = 2                          # MPI ranks, >= 1; required
//   name = "p0"                        # optional; default "<role>-<index among units of that role>"
//   hosts = ["nodeA:1", "nodeB:1"]     # optional mpirun --host entries; default: this machine
//   placement = "placement.json"       # optional expert placement JSON, relative to this file
//   redundant = 0                      # optional redundant expert slots per MoE layer
//   mpirun_args = ["--mca", "btl_tcp_if_include", "veth0"]  # optional extra mpirun flags
//   kv_blocks = 512                    # optional; 0 or absent: the server's --kv-blocks / --kv-memory-gb
//   max_running = 64                   # optional; 0 or absent: the server's --max-running
//   step_tokens = 256                  # optional; 0 or absent: the server's --step-tokens
//   restart = true                     # optional; relaunch the unit when it fails (default true)
//
//   [[unit]]
//   role = "decode"
//   ranks = 2
//
// Units are either all mixed, or prefill and decode (at least one of each). Every mistake (syntax,
// an unknown key, a wrong type or value, a missing placement file) is an epserve::Error naming the
// file, the unit ("unit 2 (decode-0)", counting [[unit]] tables from 1) and the key.
#pragma once
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

namespace epserve::serve {

enum class UnitRole { kMixed, kPrefill, kDecode };
const char* to_string(UnitRole r);  // "mixed", "prefill", "decode"

struct UnitSpec {
  std::string name;                      // default: "<role>-<index among units of that role>", e.g. "prefill-0"
  UnitRole role = UnitRole::kMixed;
  int ranks = 1;                         // >= 1
  std::vector<std::string> hosts;        // mpirun --host entries ("host" or "host:slots"); empty: this machine
  std::string placement;                 // expert placement JSON; a relative path is resolved against the file's directory; empty: even split
  int redundant = 0;                     // >= 0, redundant expert slots per MoE layer (ignored with placement)
  std::vector<std::string> mpirun_args;  // extra mpirun flags, one string each
  int kv_blocks = 0;                     // 0: the server's --kv-blocks / --kv-memory-gb
  int max_running = 0;                   // 0: the server's --max-running
  int step_tokens = 0;                   // 0: the server's --step-tokens
  bool restart = true;                   // relaunch the unit after it fails (with a growing delay)
};

struct Deployment {
  // The address the units' ranks reach the router at (the router binds its ZeroMQ socket there);
  // "127.0.0.1" unless a unit has hosts, then it must be set explicitly.
  std::string router_address = "127.0.0.1";
  std::vector<UnitSpec> units;

  // Throws epserve::Error (src/base/error.h) with a message naming the file and the field, e.g.
  // "deploy.toml: unit 2 (decode-0): 'ranks' must be an integer >= 1, got 0".
  static Deployment load(const std::filesystem::path& file);
  static Deployment parse(std::string_view toml_text, const std::filesystem::path& name_for_errors);
  // One mixed unit of `ranks` ranks (what `serve --unit-ranks R` means).
  static Deployment single_mixed(int ranks);
  bool disaggregated() const;   // has prefill (and therefore decode) units
  std::string summary() const;  // one line, e.g. "prefill-0 (prefill, 2 ranks), decode-0 (decode, 2 ranks)"
};

}  // namespace epserve::serve
