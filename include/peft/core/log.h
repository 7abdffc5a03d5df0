// Minimal leveled logging to stderr; the library never prints to stdout.
#pragma once

#include <cstdio>
#include <string>

#include <fmt/format.h>

namespace peft::log {

enum class Level { Debug = 0, Info = 1, Warn = 2, Error = 3, Off = 4 };

/// Messages below this level are dropped (default Info; PEFT_LOG_LEVEL=debug|info|warn|error|off).
Level threshold();
void set_threshold(Level level);
void write(Level level, const std::string& message);

template <typename... Args>
void info(fmt::format_string<Args...> f, Args&&... args) {
  if (threshold() <= Level::Info) write(Level::Info, fmt::format(f, std::forward<Args>(args)...));
}
template <typename... Args>
void warn(fmt::format_string<Args...> f, Args&&... args) {
  if (threshold() <= Level::Warn) write(Level::Warn, fmt::format(f, std::forward<Args>(args)...));
}

}  // namespace peft::log
