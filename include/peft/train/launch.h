// Starting the ranks of a data-parallel run on this machine, as torchrun does for one node:
// each a copy of a program with RANK / LOCAL_RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT set.
#pragma once

#include <string>
#include <vector>

namespace peft::train {

struct LocalLaunch {
  std::vector<std::string> argv;  ///< the program and its arguments, run once per rank
  int nproc = 2;
  int master_port = 0;            ///< 0: a free loopback port
  /// A rank that fails makes the launcher stop the others after this many seconds (they normally
  /// fail first, on their next collective).
  double grace_s = 30;
};

/// Runs the ranks, waits for them, and returns 0 when all succeed; otherwise the first failing
/// rank's exit status (128 + signal when killed), after saying on stderr which rank failed and how.
int launch_local_ranks(const LocalLaunch& launch);

}  // namespace peft::train
