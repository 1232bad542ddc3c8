// Two "hosts" on one machine for the multi-host tests: two network namespaces joined by a veth pair
// (10.231.7.1 and 10.231.7.2), and an `rsh` agent through which mpirun starts a process on either
// (it enters that host's namespace). Needs root (CI runs as root); ok() says whether it worked.
#pragma once
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "support/paths.h"

namespace epserve::testing {

class TwoHosts {
 public:
  static constexpr const char* kAddressA = "10.231.7.1";
  static constexpr const char* kAddressB = "10.231.7.2";
  // OpenMPI over the veth pair only: its TCP transport and its out-of-band channel.
  static constexpr const char* kMpiNetwork =
      "--mca btl tcp,self --mca btl_tcp_if_include 10.231.7.0/24 --mca oob_tcp_if_include 10.231.7.0/24 -x PATH";

  TwoHosts() : a_("epsA" + std::to_string(::getpid())), b_("epsB" + std::to_string(::getpid())) {
    const std::string va = "va" + std::to_string(::getpid()), vb = "vb" + std::to_string(::getpid());
    const std::string script =
        "set -e; ip netns add " + a_ + "; ip netns add " + b_ + "; ip link add " + va + " type veth peer name " + vb +
        "; ip link set " + va + " netns " + a_ + "; ip link set " + vb + " netns " + b_ + "; ip -n " + a_ +
        " addr add " + kAddressA + "/24 dev " + va + "; ip -n " + b_ + " addr add " + kAddressB + "/24 dev " + vb +
        "; ip -n " + a_ + " link set " + va + " up; ip -n " + b_ + " link set " + vb + " up; ip -n " + a_ +
        " link set lo up; ip -n " + b_ + " link set lo up";
    const auto r = run_command(script);
    ok_ = r.exit_code == 0;
    error_ = r.output;
  }
  ~TwoHosts() { run_command("ip netns del " + a_ + "; ip netns del " + b_); }
  bool ok() const { return ok_; }
  const std::string& error() const { return error_; }
  const std::string& a() const { return a_; }  // namespace names, for `ip netns exec`
  const std::string& b() const { return b_; }

  // Writes the rsh agent (`agent [options] host command...`) into dir; returns its path.
  std::filesystem::path write_rsh_agent(const std::filesystem::path& dir) const {
    const auto path = dir / "netns-rsh";
    std::ofstream(path) << "#!/bin/sh\nwhile [ \"${1#-}\" != \"$1\" ]; do shift; done\nhost=$1; shift\n"
                        << "case $host in " << kAddressA << ") ns=" << a_ << ";; " << kAddressB << ") ns=" << b_
                        << ";; *) echo \"unknown host $host\" >&2; exit 1;; esac\n"
                        << "exec ip netns exec $ns sh -c \"$*\"\n";
    std::filesystem::permissions(path, std::filesystem::perms::owner_all);
    return path;
  }

 private:
  std::string a_, b_, error_;
  bool ok_ = false;
};

}  // namespace epserve::testing
