// Shared by the fuzz harnesses: the libraries read files by path, so each input is written to
// one scratch file per process; every peft::Error is an accepted outcome (a clear refusal), any
// other exception or a crash is a finding.
#pragma once

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>

#include "peft/core/error.h"

namespace peft::fuzz {

/// A path under the system temp directory (TMPDIR) holding exactly `data`.
inline const std::string& write_input(const uint8_t* data, size_t size, const std::string& name) {
  static const std::string dir = [] {
    const std::string d =
        (std::filesystem::temp_directory_path() / ("peft-fuzz-" + std::to_string(::getpid()))).string();
    std::filesystem::create_directories(d);
    return d;
  }();
  static std::string path;
  path = dir + "/" + name;
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  return path;
}

/// Runs `body`; a peft::Error is the expected refusal of a bad input.
inline int accept_errors(const std::function<void()>& body) {
  try {
    body();
  } catch (const peft::Error&) {
  }
  return 0;
}

}  // namespace peft::fuzz
