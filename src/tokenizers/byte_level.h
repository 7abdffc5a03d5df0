// GPT-2's byte-level scheme: every byte maps to a printable character, and text is split by
// GPT-2's pattern ('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+).
#pragma once

#include <array>
#include <string>
#include <string_view>
#include <vector>

namespace peft::tokenizers {

/// byte -> its printable stand-in, UTF-8 encoded (GPT-2's bytes_to_unicode).
const std::array<std::string, 256>& byte_to_char();
/// The inverse: a stand-in character's code point -> byte (-1 for other characters).
int char_to_byte(uint32_t cp);

/// Splits `text` into GPT-2 pre-tokens (byte ranges of the input, in order, covering it all).
std::vector<std::string_view> gpt2_pretokenize(std::string_view text);

/// Maps each byte of `piece` to its stand-in character.
std::string bytes_to_chars(std::string_view piece);
/// The inverse of bytes_to_chars; characters outside the byte map are kept as UTF-8.
std::string chars_to_bytes(std::string_view chars);

}  // namespace peft::tokenizers
