// Atomic file writes: every writer in the library goes through here, so a crash or a full
// disk never leaves a half-written file behind (write to a temporary sibling, fsync, rename).
#pragma once

#include <cstddef>
#include <functional>
#include <string>
#include <string_view>

namespace peft::core {

/// Calls `write(fd)` on a temporary file next to `path`, then renames it over `path`.
/// On any failure the temporary is removed and peft::Error names the file.
void write_file_atomic(const std::string& path, const std::function<void(int fd)>& write);

/// Convenience: atomically writes `bytes` to `path`.
void write_file_atomic(const std::string& path, std::string_view bytes);

/// Builds a directory with `fill(staging_dir)` in a sibling staging folder, then swaps it in
/// for `path` (an existing `path` is replaced only once the new one is complete).
void write_directory_atomic(const std::string& path, const std::function<void(const std::string& dir)>& fill);

/// Writes all of `data` to `fd`, retrying short writes; throws naming `path` on error.
void write_all(int fd, const void* data, std::size_t size, const std::string& path);

}  // namespace peft::core
