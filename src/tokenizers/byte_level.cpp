#include "byte_level.h"

#include "unicode.h"

namespace peft::tokenizers {
namespace {

std::array<uint32_t, 256> byte_map() {
  std::array<uint32_t, 256> map{};
  std::array<bool, 256> printable{};
  for (int b = '!'; b <= '~'; ++b) printable[b] = true;
  for (int b = 0xA1; b <= 0xAC; ++b) printable[b] = true;
  for (int b = 0xAE; b <= 0xFF; ++b) printable[b] = true;
  uint32_t n = 0;
  for (int b = 0; b < 256; ++b) map[b] = printable[b] ? static_cast<uint32_t>(b) : 256 + n++;
  return map;
}

const std::array<uint32_t, 256>& byte_code_points() {
  static const auto map = byte_map();
  return map;
}

}  // namespace

const std::array<std::string, 256>& byte_to_char() {
  static const auto table = [] {
    std::array<std::string, 256> t;
    for (int b = 0; b < 256; ++b) append_utf8(t[b], byte_code_points()[b]);
    return t;
  }();
  return table;
}

int char_to_byte(uint32_t cp) {
  static const auto inverse = [] {
    std::vector<int> inv(512, -1);
    for (int b = 0; b < 256; ++b) inv[byte_code_points()[b]] = b;
    return inv;
  }();
  return cp < inverse.size() ? inverse[cp] : -1;
}

std::vector<std::string_view> gpt2_pretokenize(std::string_view text) {
  const auto cps = decode_utf8(text);
  const size_t n = cps.size();
  // An invalid byte belongs to no class: it is treated like punctuation, as its own bytes.
  auto letter = [&](size_t i) { return i < n && cps[i].valid && is_letter(cps[i].value); };
  auto number = [&](size_t i) { return i < n && cps[i].valid && is_number(cps[i].value); };
  auto space = [&](size_t i) { return i < n && cps[i].valid && is_space(cps[i].value); };
  auto other = [&](size_t i) { return i < n && !letter(i) && !number(i) && !space(i); };
  auto is = [&](size_t i, char c) { return i < n && cps[i].valid && cps[i].value == static_cast<uint32_t>(c); };

  std::vector<std::string_view> out;
  auto emit = [&](size_t from, size_t to) {
    const size_t begin = cps[from].offset, end = to < n ? cps[to].offset : text.size();
    out.push_back(text.substr(begin, end - begin));
  };
  size_t i = 0;
  while (i < n) {
    // 's 't 're 've 'm 'll 'd (case-sensitive, as the pattern is)
    if (is(i, '\'')) {
      size_t len = 0;
      if (is(i + 1, 's') || is(i + 1, 't') || is(i + 1, 'm') || is(i + 1, 'd')) len = 2;
      else if ((is(i + 1, 'r') && is(i + 2, 'e')) || (is(i + 1, 'v') && is(i + 2, 'e')) ||
               (is(i + 1, 'l') && is(i + 2, 'l')))
        len = 3;
      if (len) {
        emit(i, i + len);
        i += len;
        continue;
      }
    }
    const size_t start = i;
    const size_t body = is(i, ' ') ? i + 1 : i;  // the optional leading space
    size_t j = body;
    if (letter(body)) {
      while (letter(j)) ++j;
    } else if (number(body)) {
      while (number(j)) ++j;
    } else if (other(body)) {
      while (other(j)) ++j;
    }
    if (j > body) {
      emit(start, j);
      i = j;
      continue;
    }
    // Whitespace: \s+(?!\S), else \s+ (a run followed by a non-space leaves its last
    // character to lead the next token).
    j = i;
    while (space(j)) ++j;
    if (j < n && j - i > 1) --j;
    emit(i, j);
    i = j;
  }
  return out;
}

std::string bytes_to_chars(std::string_view piece) {
  std::string out;
  out.reserve(piece.size() * 2);
  for (unsigned char b : piece) out += byte_to_char()[b];
  return out;
}

std::string chars_to_bytes(std::string_view chars) {
  std::string out;
  for (const auto& cp : decode_utf8(chars)) {
    const int b = cp.valid ? char_to_byte(cp.value) : -1;
    if (b >= 0) out += static_cast<char>(b);
    else out.append(chars.substr(cp.offset, cp.size));
  }
  return out;
}

}  // namespace peft::tokenizers
