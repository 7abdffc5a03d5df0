#include "peft/train/launch.h"

#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <map>
#include <optional>
#include <thread>

#include <fmt/format.h>

#include "peft/core/error.h"

extern char** environ;

namespace peft::train {
namespace {
constexpr const char* kC = "launch";

/// A free loopback port (the kernel's choice; released for rank 0's store to take).
int free_port() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  PEFT_CHECK(fd >= 0, kC, "cannot open a socket to find a free port");
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  const bool ok = bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
                  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0;
  close(fd);
  PEFT_CHECK(ok, kC, "cannot find a free loopback port");
  return ntohs(addr.sin_port);
}

std::string describe(int status) {
  return WIFEXITED(status) ? fmt::format("exited with status {}", WEXITSTATUS(status))
                           : fmt::format("was killed by signal {}", WTERMSIG(status));
}

}  // namespace

int launch_local_ranks(const LocalLaunch& l) {
  PEFT_CHECK(l.nproc >= 1, kC, "--nproc must be >= 1, found {}", l.nproc);
  PEFT_CHECK(!l.argv.empty(), kC, "no program to launch");
  const int port = l.master_port > 0 ? l.master_port : free_port();
  std::map<pid_t, int> ranks;  // running children -> rank
  auto stop_all = [&](int sig) {
    for (const auto& [pid, rank] : ranks) kill(pid, sig);
  };
  for (int rank = 0; rank < l.nproc; ++rank) {
    std::vector<std::string> env;
    for (char** e = environ; *e; ++e) {
      const std::string kv = *e;
      const std::string key = kv.substr(0, kv.find('='));
      if (key != "RANK" && key != "LOCAL_RANK" && key != "WORLD_SIZE" && key != "MASTER_ADDR" && key != "MASTER_PORT" &&
          key != "LOCAL_WORLD_SIZE")
        env.push_back(kv);
    }
    for (const auto& [k, v] : std::vector<std::pair<std::string, std::string>>{
             {"RANK", std::to_string(rank)},        {"LOCAL_RANK", std::to_string(rank)},
             {"WORLD_SIZE", std::to_string(l.nproc)}, {"LOCAL_WORLD_SIZE", std::to_string(l.nproc)},
             {"MASTER_ADDR", "127.0.0.1"},           {"MASTER_PORT", std::to_string(port)}})
      env.push_back(k + "=" + v);
    std::vector<std::string> args = l.argv;
    std::vector<char*> argv, envp;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    for (auto& e : env) envp.push_back(e.data());
    envp.push_back(nullptr);
    pid_t pid = 0;
    const int rc = posix_spawn(&pid, args[0].c_str(), nullptr, nullptr, argv.data(), envp.data());
    if (rc != 0) {
      stop_all(SIGTERM);
      for (const auto& [p, r] : ranks) waitpid(p, nullptr, 0);
      PEFT_CHECK(false, kC, "cannot start rank {} ({}): {}", rank, args[0], std::strerror(rc));
    }
    ranks[pid] = rank;
  }
  int first_failure = 0;
  std::optional<std::chrono::steady_clock::time_point> deadline;
  while (!ranks.empty()) {
    int status = 0;
    const pid_t pid = waitpid(-1, &status, deadline ? WNOHANG : 0);
    if (pid > 0 && ranks.count(pid)) {
      const int rank = ranks[pid];
      ranks.erase(pid);
      const bool ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
      if (!ok && first_failure == 0) {
        first_failure = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        fmt::print(stderr, "[peft launch] rank {} {}; stopping the other ranks in at most {} s\n", rank, describe(status),
                   l.grace_s);
        deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(static_cast<int64_t>(l.grace_s * 1000));
      }
      continue;
    }
    if (pid < 0 && errno != EINTR) break;
    if (deadline && std::chrono::steady_clock::now() > *deadline) {
      for (const auto& [p, r] : ranks) fmt::print(stderr, "[peft launch] rank {} still running: terminated\n", r);
      stop_all(SIGKILL);
      deadline.reset();
    }
    if (deadline) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return first_failure;
}

}  // namespace peft::train
