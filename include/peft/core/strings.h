// Small string helpers for module and parameter names and reports.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>

namespace peft::core {

inline bool ends_with(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

/// `name` is `segment` or ends in "." + segment (HF PEFT's list-entry rule: whole segments only).
inline bool is_or_ends_with_segment(std::string_view name, std::string_view segment) {
  return name == segment ||
         (name.size() > segment.size() && ends_with(name, segment) && name[name.size() - segment.size() - 1] == '.');
}

/// `name` lies inside module `module` ("bert.pooler.dense" is under "bert").
inline bool is_under(std::string_view name, std::string_view module) {
  return name.size() > module.size() && name.compare(0, module.size(), module) == 0 && name[module.size()] == '.';
}

/// 1234567 -> "1,234,567"
inline std::string with_thousands(int64_t n) {
  const std::string digits = std::to_string(n < 0 ? -n : n);
  std::string out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return n < 0 ? "-" + out : out;
}

/// 1536 -> "1.5 KiB", 3 << 30 -> "3.00 GiB"
inline std::string human_bytes(int64_t bytes) {
  const double b = static_cast<double>(bytes);
  char buf[32];
  if (b >= 1024.0 * 1024 * 1024) std::snprintf(buf, sizeof buf, "%.2f GiB", b / (1024.0 * 1024 * 1024));
  else if (b >= 1024.0 * 1024) std::snprintf(buf, sizeof buf, "%.1f MiB", b / (1024.0 * 1024));
  else if (b >= 1024.0) std::snprintf(buf, sizeof buf, "%.1f KiB", b / 1024.0);
  else std::snprintf(buf, sizeof buf, "%lld B", static_cast<long long>(bytes));
  return buf;
}

}  // namespace peft::core
