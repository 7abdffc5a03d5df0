#include "peft/core/atomic_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <random>
#include <vector>

#include "peft/core/error.h"

namespace peft::core {

void write_all(int fd, const void* data, std::size_t size, const std::string& path) {
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    ssize_t n = ::write(fd, p, size);
    if (n < 0 && errno == EINTR) continue;
    PEFT_CHECK(n > 0, "io", "{}: write failed: {}", path, std::strerror(errno));
    p += n;
    size -= static_cast<std::size_t>(n);
  }
}

void write_file_atomic(const std::string& path, const std::function<void(int fd)>& write) {
  namespace fs = std::filesystem;
  fs::path target(path);
  fs::path dir = target.has_parent_path() ? target.parent_path() : fs::path(".");
  PEFT_CHECK(fs::is_directory(dir), "io", "{}: directory '{}' does not exist", path, dir.string());

  std::string tmpl = (dir / ("." + target.filename().string() + ".tmp-XXXXXX")).string();
  std::vector<char> name(tmpl.begin(), tmpl.end());
  name.push_back('\0');
  int fd = ::mkstemp(name.data());
  PEFT_CHECK(fd >= 0, "io", "{}: cannot create a temporary file in '{}': {}", path, dir.string(),
             std::strerror(errno));
  const std::string tmp(name.data());
  try {
    write(fd);
    PEFT_CHECK(::fsync(fd) == 0, "io", "{}: fsync failed: {}", path, std::strerror(errno));
    // mkstemp creates 0600; checkpoints are meant to be shared like any written file.
    ::fchmod(fd, 0644);
    PEFT_CHECK(::close(fd) == 0, "io", "{}: close failed: {}", path, std::strerror(errno));
    fd = -1;
    PEFT_CHECK(::rename(tmp.c_str(), path.c_str()) == 0, "io", "{}: rename from '{}' failed: {}",
               path, tmp, std::strerror(errno));
  } catch (...) {
    if (fd >= 0) ::close(fd);
    ::unlink(tmp.c_str());
    throw;
  }
}

void write_file_atomic(const std::string& path, std::string_view bytes) {
  write_file_atomic(path, [&](int fd) { write_all(fd, bytes.data(), bytes.size(), path); });
}

void write_directory_atomic(const std::string& path, const std::function<void(const std::string& dir)>& fill) {
  namespace fs = std::filesystem;
  const fs::path target = fs::absolute(path);
  fs::create_directories(target.parent_path());
  const auto tag = fmt::format("{}-{}", ::getpid(), std::random_device{}());
  const fs::path staging = target.parent_path() / fmt::format(".{}.tmp-{}", target.filename().string(), tag);
  const fs::path old = target.parent_path() / fmt::format(".{}.old-{}", target.filename().string(), tag);
  std::error_code ec;
  try {
    fs::create_directory(staging);
    fill(staging.string());
    if (fs::exists(target)) fs::rename(target, old);
    fs::rename(staging, target);
  } catch (const std::exception& e) {
    fs::remove_all(staging, ec);
    if (!fs::exists(target) && fs::exists(old)) fs::rename(old, target, ec);
    if (dynamic_cast<const Error*>(&e)) throw;
    fail("io", fmt::format("{}: could not write the directory ({})", path, e.what()));
  }
  fs::remove_all(old, ec);
}

}  // namespace peft::core
