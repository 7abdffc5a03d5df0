// Hugging Face tokenizer.json with a BPE model: added tokens, normalizers (Prepend, Replace),
// pre-tokenizers (ByteLevel, Metaspace), byte fallback, TemplateProcessing, and the decoders
// those tokenizers use. Anything else is refused by name rather than approximated.
#include <cstdio>

#include <nlohmann/json.hpp>

#include "bpe_model.h"
#include "byte_level.h"
#include "peft/core/error.h"
#include "peft/core/json_io.h"
#include "peft/tokenizers/tokenizer.h"
#include "unicode.h"

namespace peft::tokenizers {
namespace {

constexpr const char* kC = "tokenizers";

std::string replace_all(std::string s, const std::string& from, const std::string& to) {
  if (from.empty()) return s;
  for (size_t pos = s.find(from); pos != std::string::npos; pos = s.find(from, pos + to.size()))
    s.replace(pos, from.size(), to);
  return s;
}

std::string string_pattern(const nlohmann::json& j, const std::string& where) {
  PEFT_CHECK(j.is_object() && j.contains("String") && j["String"].is_string(), kC,
             "{}: only {{\"String\": ...}} patterns are supported, found {}", where, j.dump());
  return j["String"].get<std::string>();
}

/// The components of a Sequence (or the component itself), null -> none.
std::vector<nlohmann::json> flatten(const nlohmann::json& j, const char* list_key) {
  if (j.is_null()) return {};
  if (j.value("type", "") == "Sequence") {
    std::vector<nlohmann::json> out;
    for (const auto& e : j.at(list_key)) {
      auto sub = flatten(e, list_key);
      out.insert(out.end(), sub.begin(), sub.end());
    }
    return out;
  }
  return {j};
}

struct Normalizer {
  std::string type, a, b;  // Prepend: a = prefix; Replace: a -> b
};

struct PreTokenizer {
  std::string type;  // ByteLevel | Metaspace
  bool add_prefix_space = false;
  bool use_regex = true;
  std::string replacement = "\xE2\x96\x81";  // ▁
  std::string prepend_scheme = "always";
  bool split = true;
};

struct Decoder {
  std::string type, a, b;
  int start = 0, stop = 0;
  bool add_prefix_space = true;
};

struct AddedToken {
  int64_t id;
  std::string content;
  bool special, lstrip, rstrip;
};

struct TemplatePiece {
  bool is_sequence;
  std::vector<int64_t> ids;  // special token ids
};

class TokenizerJson : public Tokenizer {
 public:
  TokenizerJson(const nlohmann::json& j, const std::string& path) : bpe_(load_model(j, path)) {
    load_model_options(j["model"], path);
    for (const auto& n : flatten(j.value("normalizer", nlohmann::json()), "normalizers")) {
      const auto type = n.value("type", "");
      if (type == "Prepend") normalizers_.push_back({type, n.at("prepend").get<std::string>(), ""});
      else if (type == "Replace")
        normalizers_.push_back({type, string_pattern(n.at("pattern"), path + " normalizer"), n.at("content").get<std::string>()});
      else fail(kC, fmt::format("{}: normalizer '{}' is not supported (supported: Prepend, Replace, Sequence)", path, type));
    }
    for (const auto& p : flatten(j.value("pre_tokenizer", nlohmann::json()), "pretokenizers")) {
      PreTokenizer pt;
      pt.type = p.value("type", "");
      if (pt.type == "ByteLevel") {
        pt.add_prefix_space = p.value("add_prefix_space", false);
        pt.use_regex = p.value("use_regex", true);
      } else if (pt.type == "Metaspace") {
        pt.replacement = p.value("replacement", pt.replacement);
        if (p.contains("prepend_scheme")) pt.prepend_scheme = p["prepend_scheme"].get<std::string>();
        else pt.prepend_scheme = p.value("add_prefix_space", true) ? "always" : "never";
        pt.split = p.value("split", true);
      } else {
        fail(kC, fmt::format("{}: pre_tokenizer '{}' is not supported (supported: ByteLevel, Metaspace, Sequence)",
                             path, pt.type));
      }
      pre_.push_back(pt);
    }
    for (const auto& d : flatten(j.value("decoder", nlohmann::json()), "decoders")) {
      Decoder dec;
      dec.type = d.value("type", "");
      if (dec.type == "Replace") {
        dec.a = string_pattern(d.at("pattern"), path + " decoder");
        dec.b = d.at("content").get<std::string>();
      } else if (dec.type == "Strip") {
        dec.a = d.at("content").get<std::string>();
        dec.start = d.value("start", 0);
        dec.stop = d.value("stop", 0);
      } else if (dec.type == "Metaspace") {
        dec.a = d.value("replacement", std::string("\xE2\x96\x81"));
        dec.add_prefix_space = d.contains("prepend_scheme") ? d["prepend_scheme"] != "never" : d.value("add_prefix_space", true);
      } else if (dec.type != "ByteFallback" && dec.type != "Fuse" && dec.type != "ByteLevel") {
        fail(kC, fmt::format("{}: decoder '{}' is not supported (supported: Replace, ByteFallback, Fuse, Strip, "
                             "ByteLevel, Metaspace, Sequence)",
                             path, dec.type));
      }
      decoders_.push_back(dec);
    }
    for (const auto& t : j.value("added_tokens", nlohmann::json::array())) {
      AddedToken a{t.at("id").get<int64_t>(), t.at("content").get<std::string>(), t.value("special", false),
                   t.value("lstrip", false), t.value("rstrip", false)};
      PEFT_CHECK(!a.content.empty() && a.id >= 0, kC, "{}: added token {} is empty or has a negative id", path, t.dump());
      added_.push_back(a);
    }
    load_post_processor(j.value("post_processor", nlohmann::json()), path);
    load_special_tokens(path);
  }

  std::vector<int64_t> encode(std::string_view text, bool add_special_tokens) const override {
    std::vector<int64_t> ids;
    bool first = true;
    for (const auto& [segment, added_id] : split_added(text)) {
      if (added_id >= 0) {
        ids.push_back(added_id);
      } else {
        encode_segment(segment, first, ids);
      }
      first = false;
    }
    if (!add_special_tokens || template_.empty()) return ids;
    std::vector<int64_t> out;
    for (const auto& piece : template_) {
      if (piece.is_sequence) out.insert(out.end(), ids.begin(), ids.end());
      else out.insert(out.end(), piece.ids.begin(), piece.ids.end());
    }
    return out;
  }

  std::string decode(const std::vector<int64_t>& ids, bool skip_special_tokens) const override {
    std::vector<std::string> tokens;
    for (int64_t id : ids) {
      if (skip_special_tokens && is_special(id)) continue;
      tokens.push_back(id_to_token(id));
    }
    for (const auto& d : decoders_) tokens = apply(d, std::move(tokens));
    std::string out;
    for (const auto& t : tokens) out += t;
    return out;
  }

  int64_t vocab_size() const override {
    int64_t n = bpe_.size();
    for (const auto& a : added_) n = std::max(n, a.id + 1);
    return n;
  }
  std::optional<int64_t> token_to_id(const std::string& token) const override {
    for (const auto& a : added_)
      if (a.content == token) return a.id;
    return bpe_.id(token);
  }
  std::string id_to_token(int64_t id) const override {
    for (const auto& a : added_)
      if (a.id == id) return a.content;
    PEFT_CHECK(id >= 0 && id < bpe_.size() && !bpe_.token(id).empty(), kC,
               "token id {} is outside the vocabulary [0, {})", id, vocab_size());
    return bpe_.token(id);
  }
  std::string kind() const override { return "tokenizer.json"; }

 private:
  static BpeModel load_model(const nlohmann::json& j, const std::string& path) {
    PEFT_CHECK(j.is_object() && j.contains("model") && j["model"].is_object(), kC, "{}: missing 'model'", path);
    const auto& m = j["model"];
    const auto type = m.value("type", "BPE");
    PEFT_CHECK(type == "BPE", kC, "{}: model type '{}' is not supported (only BPE)", path, type);
    for (const char* k : {"continuing_subword_prefix", "end_of_word_suffix"})
      PEFT_CHECK(!m.contains(k) || m[k].is_null() || m[k] == "", kC, "{}: model.{} is not supported", path, k);
    PEFT_CHECK(!m.contains("dropout") || m["dropout"].is_null() || m["dropout"] == 0.0, kC,
               "{}: BPE dropout is for training only and not supported here", path);
    BpeModel model(dense_vocab(m.at("vocab"), path + " model.vocab"));
    int32_t rank = 0;
    for (const auto& merge : m.at("merges")) {
      std::string a, b;
      if (merge.is_string()) {
        const auto s = merge.get<std::string>();
        const auto space = s.find(' ');
        PEFT_CHECK(space != std::string::npos, kC, "{}: merge '{}' is not 'a b'", path, s);
        a = s.substr(0, space);
        b = s.substr(space + 1);
      } else {
        PEFT_CHECK(merge.is_array() && merge.size() == 2, kC, "{}: merge {} is not [a, b]", path, merge.dump());
        a = merge[0].get<std::string>();
        b = merge[1].get<std::string>();
      }
      PEFT_CHECK(model.add_merge(a, b, rank++), kC, "{}: merge '{} {}' uses or makes a token not in the vocabulary",
                 path, a, b);
    }
    return model;
  }

  /// Model options read after the vocabulary exists (members initialize after bpe_).
  void load_model_options(const nlohmann::json& m, const std::string& path) {
    byte_fallback_ = m.value("byte_fallback", false);
    fuse_unk_ = m.value("fuse_unk", false);
    if (m.contains("unk_token") && m["unk_token"].is_string()) {
      unk_ = bpe_.id(m["unk_token"].get<std::string>());
      PEFT_CHECK(unk_.has_value(), kC, "{}: unk_token '{}' is not in the vocabulary", path, m["unk_token"].dump());
    }
    for (int b = 0; b < 256; ++b) {
      char name[8];
      std::snprintf(name, sizeof name, "<0x%02X>", b);
      byte_tokens_[b] = byte_fallback_ ? bpe_.id(name).value_or(-1) : -1;
    }
  }

  void load_post_processor(const nlohmann::json& p, const std::string& path) {
    for (const auto& pp : flatten(p, "processors")) {
      const auto type = pp.value("type", "");
      if (type == "ByteLevel") continue;  // offsets only
      PEFT_CHECK(type == "TemplateProcessing", kC,
                 "{}: post_processor '{}' is not supported (supported: TemplateProcessing, ByteLevel)", path, type);
      for (const auto& item : pp.at("single")) {
        if (item.contains("Sequence")) {
          template_.push_back({true, {}});
        } else {
          const auto name = item.at("SpecialToken").at("id").get<std::string>();
          const auto& spec = pp.at("special_tokens").at(name);
          template_.push_back({false, spec.at("ids").get<std::vector<int64_t>>()});
        }
      }
    }
  }

  void load_special_tokens(const std::string&) {
    special_.unk = unk_;
    for (const auto& a : added_) {
      if (a.content == "<s>" || a.content == "<|begin_of_text|>" || a.content == "<|endoftext|>") special_.bos = a.id;
      if (a.content == "</s>" || a.content == "<|end_of_text|>" || a.content == "<|endoftext|>") special_.eos = a.id;
      if (a.content == "<pad>" || a.content == "[PAD]") special_.pad = a.id;
    }
  }

  bool is_special(int64_t id) const {
    for (const auto& a : added_)
      if (a.id == id) return a.special;
    return false;
  }

  /// Splits raw text around added tokens (leftmost, then longest match), as HF does before
  /// normalization: (text, -1) for ordinary text, ("", id) for an added token.
  std::vector<std::pair<std::string, int64_t>> split_added(std::string_view text) const {
    std::vector<std::pair<std::string, int64_t>> out;
    size_t start = 0, i = 0;
    while (i < text.size()) {
      const AddedToken* best = nullptr;
      for (const auto& a : added_)
        if (text.compare(i, a.content.size(), a.content) == 0 && (!best || a.content.size() > best->content.size()))
          best = &a;
      if (!best) {
        ++i;
        continue;
      }
      size_t before_end = i, after = i + best->content.size();
      if (best->lstrip)
        while (before_end > start && is_space(static_cast<unsigned char>(text[before_end - 1]))) --before_end;
      if (best->rstrip)
        while (after < text.size() && is_space(static_cast<unsigned char>(text[after]))) ++after;
      if (before_end > start) out.emplace_back(std::string(text.substr(start, before_end - start)), -1);
      out.emplace_back("", best->id);
      start = i = after;
    }
    if (start < text.size()) out.emplace_back(std::string(text.substr(start)), -1);
    return out;
  }

  void encode_segment(const std::string& raw, bool first, std::vector<int64_t>& ids) const {
    std::string text = raw;
    for (const auto& n : normalizers_) {
      if (n.type == "Prepend") {
        if (!text.empty()) text = n.a + text;
      } else {
        text = replace_all(text, n.a, n.b);
      }
    }
    std::vector<std::string> words{text};
    for (const auto& p : pre_) {
      std::vector<std::string> next;
      for (auto& w : words) {
        if (p.type == "ByteLevel") {
          if (p.add_prefix_space && !w.empty() && w[0] != ' ') w = " " + w;
          if (p.use_regex) {
            for (auto piece : gpt2_pretokenize(w)) next.push_back(bytes_to_chars(piece));
          } else {
            next.push_back(bytes_to_chars(w));
          }
        } else {  // Metaspace
          w = replace_all(w, " ", p.replacement);
          const bool prepend = p.prepend_scheme == "always" || (p.prepend_scheme == "first" && first);
          if (prepend && !w.empty() && w.rfind(p.replacement, 0) != 0) w = p.replacement + w;
          if (!p.split) {
            next.push_back(w);
            continue;
          }
          // Split before each replacement character (it leads the following word).
          size_t from = 0;
          for (size_t pos = w.find(p.replacement, 1); pos != std::string::npos; pos = w.find(p.replacement, pos + 1)) {
            if (pos > from) next.push_back(w.substr(from, pos - from));
            from = pos;
          }
          if (from < w.size()) next.push_back(w.substr(from));
        }
      }
      words = std::move(next);
    }
    for (const auto& w : words) {
      if (w.empty()) continue;
      auto merged = bpe_.merge(symbols(w));
      ids.insert(ids.end(), merged.begin(), merged.end());
    }
  }

  /// One symbol per character; unknown characters become byte tokens (byte_fallback) or unk.
  std::vector<int64_t> symbols(const std::string& word) const {
    std::vector<int64_t> out;
    for (const auto& cp : decode_utf8(word)) {
      const std::string ch = word.substr(cp.offset, cp.size);
      if (auto id = bpe_.id(ch)) {
        out.push_back(*id);
        continue;
      }
      bool all_bytes = byte_fallback_;
      for (size_t k = 0; all_bytes && k < ch.size(); ++k) all_bytes = byte_tokens_[static_cast<unsigned char>(ch[k])] >= 0;
      if (all_bytes) {
        for (unsigned char b : ch) out.push_back(byte_tokens_[b]);
        continue;
      }
      PEFT_CHECK(unk_.has_value(), kC, "character U+{:04X} is not in the vocabulary and there is no unk_token",
                 cp.value);
      if (fuse_unk_ && !out.empty() && out.back() == *unk_) continue;
      out.push_back(*unk_);
    }
    return out;
  }

  static std::vector<std::string> apply(const Decoder& d, std::vector<std::string> tokens) {
    if (d.type == "Replace") {
      for (auto& t : tokens) t = replace_all(t, d.a, d.b);
    } else if (d.type == "Fuse") {
      std::string all;
      for (const auto& t : tokens) all += t;
      tokens = {all};
    } else if (d.type == "Strip") {
      for (auto& t : tokens) {
        for (int k = 0; k < d.start && t.rfind(d.a, 0) == 0; ++k) t.erase(0, d.a.size());
        for (int k = 0; k < d.stop && t.size() >= d.a.size() && t.compare(t.size() - d.a.size(), d.a.size(), d.a) == 0; ++k)
          t.erase(t.size() - d.a.size());
      }
    } else if (d.type == "ByteFallback") {
      std::vector<std::string> out;
      std::string bytes;
      size_t pending = 0;
      auto flush = [&] {
        if (pending == 0) return;
        bool valid = true;
        for (const auto& cp : decode_utf8(bytes)) valid = valid && cp.valid;
        if (valid) out.push_back(bytes);
        else
          for (size_t k = 0; k < pending; ++k) out.push_back("\xEF\xBF\xBD");  // U+FFFD per byte
        bytes.clear();
        pending = 0;
      };
      for (auto& t : tokens) {
        unsigned int b = 0;
        if (t.size() == 6 && t.rfind("<0x", 0) == 0 && t[5] == '>' && std::sscanf(t.c_str() + 3, "%2X", &b) == 1) {
          bytes += static_cast<char>(b);
          ++pending;
        } else {
          flush();
          out.push_back(std::move(t));
        }
      }
      flush();
      tokens = std::move(out);
    } else if (d.type == "ByteLevel") {
      std::string all;
      for (const auto& t : tokens) all += t;
      tokens = {chars_to_bytes(all)};
    } else if (d.type == "Metaspace") {
      for (size_t i = 0; i < tokens.size(); ++i) {
        tokens[i] = replace_all(tokens[i], d.a, " ");
        if (i == 0 && d.add_prefix_space && !tokens[i].empty() && tokens[i][0] == ' ') tokens[i].erase(0, 1);
      }
    }
    return tokens;
  }

  BpeModel bpe_;
  bool byte_fallback_ = false, fuse_unk_ = false;
  std::optional<int64_t> unk_;
  int64_t byte_tokens_[256] = {};
  std::vector<Normalizer> normalizers_;
  std::vector<PreTokenizer> pre_;
  std::vector<Decoder> decoders_;
  std::vector<AddedToken> added_;
  std::vector<TemplatePiece> template_;
};

}  // namespace

std::shared_ptr<Tokenizer> load_tokenizer_json(const std::string& path) {
  auto j = core::read_json_file(path);
  try {
    return std::make_shared<TokenizerJson>(j, path);
  } catch (const nlohmann::json::exception& e) {
    fail(kC, fmt::format("{}: malformed tokenizer.json ({})", path, e.what()));
  }
}

}  // namespace peft::tokenizers
