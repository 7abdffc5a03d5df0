// UTF-8 decoding with byte positions, and the character classes GPT-2's pattern uses.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace peft::tokenizers {

struct CodePoint {
  uint32_t value;   ///< U+FFFD for a byte that is not valid UTF-8
  uint32_t offset;  ///< byte offset in the input
  uint32_t size;    ///< bytes it spans (an invalid byte spans 1)
  bool valid;
};

/// Every character of `text`; invalid bytes become single invalid entries (nothing is lost).
std::vector<CodePoint> decode_utf8(std::string_view text);
void append_utf8(std::string& out, uint32_t cp);

bool is_letter(uint32_t cp);  ///< \p{L}
bool is_number(uint32_t cp);  ///< \p{N}
bool is_space(uint32_t cp);   ///< \s

}  // namespace peft::tokenizers
