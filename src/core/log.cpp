#include "peft/core/log.h"

#include <atomic>
#include <cstdlib>
#include <cstring>

namespace peft::log {
namespace {

Level from_env() {
  const char* v = std::getenv("PEFT_LOG_LEVEL");
  if (v == nullptr) return Level::Info;
  if (!std::strcmp(v, "debug")) return Level::Debug;
  if (!std::strcmp(v, "warn")) return Level::Warn;
  if (!std::strcmp(v, "error")) return Level::Error;
  if (!std::strcmp(v, "off")) return Level::Off;
  return Level::Info;
}

std::atomic<Level>& current() {
  static std::atomic<Level> level{from_env()};
  return level;
}

}  // namespace

Level threshold() { return current().load(); }
void set_threshold(Level level) { current().store(level); }

void write(Level level, const std::string& message) {
  static const char* names[] = {"debug", "info", "warn", "error"};
  fmt::print(stderr, "[peft {}] {}\n", names[static_cast<int>(level)], message);
}

}  // namespace peft::log
