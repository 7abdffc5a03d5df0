// Small string helpers for module and parameter names.
#pragma once

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

}  // namespace peft::core
