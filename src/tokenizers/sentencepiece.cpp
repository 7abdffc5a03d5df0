#include "peft/tokenizers/sentencepiece.h"

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <cstring>
#include <tuple>

#include "peft/core/error.h"
#include "peft/core/json_io.h"
#include "unicode.h"

extern char** environ;

namespace peft::tokenizers {
namespace {

constexpr const char* kC = "tokenizers";
const std::string kSpace = "\xE2\x96\x81";  // ▁

bool is_control_or_byte(const std::string& piece) {
  return piece == "<unk>" || piece == "<s>" || piece == "</s>" ||
         (piece.size() == 6 && piece.rfind("<0x", 0) == 0 && piece.back() == '>');
}

void run_process(const std::vector<std::string>& args, const std::string& log_path) {
  std::vector<char*> argv;
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 1, log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_adddup2(&actions, 1, 2);
  pid_t pid = 0;
  const int rc = posix_spawnp(&pid, args[0].c_str(), &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  PEFT_CHECK(rc == 0, kC, "cannot run {} ({}); install the Debian package 'sentencepiece'", args[0], std::strerror(rc));
  int status = 0;
  waitpid(pid, &status, 0);
  PEFT_CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, kC, "{} failed (exit status {}); see {}", args[0],
             WIFEXITED(status) ? WEXITSTATUS(status) : -1, log_path);
}

}  // namespace

nlohmann::json sentencepiece_bpe_to_tokenizer_json(const std::string& vocab_file) {
  std::ifstream in(vocab_file);
  PEFT_CHECK(in.good(), kC, "{}: cannot open the SentencePiece vocabulary", vocab_file);
  std::vector<std::string> pieces;
  std::map<std::string, int64_t> ids;
  std::string line;
  for (size_t number = 1; std::getline(in, line); ++number) {
    const auto tab = line.find('\t');
    PEFT_CHECK(tab != std::string::npos && tab > 0, kC, "{}:{}: expected piece<TAB>score", vocab_file, number);
    const std::string piece = line.substr(0, tab);
    PEFT_CHECK(!ids.count(piece), kC, "{}:{}: piece '{}' appears twice", vocab_file, number, piece);
    ids[piece] = static_cast<int64_t>(pieces.size());
    pieces.push_back(piece);
  }
  PEFT_CHECK(pieces.size() > 3 && pieces[0] == "<unk>" && pieces[1] == "<s>" && pieces[2] == "</s>", kC,
             "{}: expected <unk>, <s>, </s> as ids 0, 1, 2", vocab_file);
  // Every way to build a piece from two pieces is a merge, ranked by the piece it makes.
  std::vector<std::tuple<int64_t, int64_t, int64_t>> merges;  // (made, left, right)
  for (size_t id = 3; id < pieces.size(); ++id) {
    const std::string& p = pieces[id];
    if (is_control_or_byte(p)) continue;
    for (const auto& cp : decode_utf8(p)) {
      if (cp.offset == 0) continue;
      auto l = ids.find(p.substr(0, cp.offset)), r = ids.find(p.substr(cp.offset));
      if (l != ids.end() && r != ids.end() && !is_control_or_byte(l->first) && !is_control_or_byte(r->first))
        merges.emplace_back(static_cast<int64_t>(id), l->second, r->second);
    }
  }
  std::sort(merges.begin(), merges.end());
  nlohmann::json vocab = nlohmann::json::object(), merge_list = nlohmann::json::array();
  for (size_t i = 0; i < pieces.size(); ++i) vocab[pieces[i]] = i;
  for (const auto& [made, l, r] : merges) merge_list.push_back(pieces[l] + " " + pieces[r]);
  auto special = [](int id, const char* content) {
    return nlohmann::json{{"id", id},         {"content", content}, {"single_word", false}, {"lstrip", false},
                          {"rstrip", false},  {"normalized", false}, {"special", true}};
  };
  return {
      {"version", "1.0"},
      {"truncation", nullptr},
      {"padding", nullptr},
      {"added_tokens", {special(0, "<unk>"), special(1, "<s>"), special(2, "</s>")}},
      {"normalizer",
       {{"type", "Sequence"},
        {"normalizers",
         {{{"type", "Prepend"}, {"prepend", kSpace}},
          {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", kSpace}}}}}},
      {"pre_tokenizer", nullptr},
      {"post_processor",
       {{"type", "TemplateProcessing"},
        {"single", {{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}}, {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}},
        {"pair",
         {{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}},
          {{"Sequence", {{"id", "A"}, {"type_id", 0}}}},
          {{"SpecialToken", {{"id", "<s>"}, {"type_id", 1}}}},
          {{"Sequence", {{"id", "B"}, {"type_id", 1}}}}}},
        {"special_tokens", {{"<s>", {{"id", "<s>"}, {"ids", {1}}, {"tokens", {"<s>"}}}}}}}},
      {"decoder",
       {{"type", "Sequence"},
        {"decoders",
         {{{"type", "Replace"}, {"pattern", {{"String", kSpace}}}, {"content", " "}},
          {{"type", "ByteFallback"}},
          {{"type", "Fuse"}},
          {{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}}}}},
      {"model",
       {{"type", "BPE"},
        {"dropout", nullptr},
        {"unk_token", "<unk>"},
        {"continuing_subword_prefix", nullptr},
        {"end_of_word_suffix", nullptr},
        {"fuse_unk", true},
        {"byte_fallback", true},
        {"vocab", vocab},
        {"merges", merge_list}}},
  };
}

void train_sentencepiece_bpe(const std::string& corpus, const std::string& out_dir, const SentencePieceOptions& o) {
  namespace fs = std::filesystem;
  PEFT_CHECK(fs::exists(corpus), kC, "{}: the training corpus does not exist", corpus);
  PEFT_CHECK(o.vocab_size >= 300, kC, "vocab_size must be at least 300 (256 byte pieces + specials), found {}",
             o.vocab_size);
  fs::create_directories(out_dir);
  const std::string prefix = (fs::path(out_dir) / "spm").string();
  run_process({"spm_train", "--input=" + corpus, "--model_prefix=" + prefix, "--model_type=bpe",
               "--vocab_size=" + std::to_string(o.vocab_size), "--byte_fallback=true",
               "--normalization_rule_name=identity", "--remove_extra_whitespaces=false",
               "--character_coverage=" + std::to_string(o.character_coverage),
               "--input_sentence_size=" + std::to_string(o.max_sentences), "--shuffle_input_sentence=true",
               "--num_threads=" + std::to_string(o.threads), "--unk_id=0", "--bos_id=1", "--eos_id=2", "--pad_id=-1"},
              prefix + ".train.log");
  core::write_json_file((fs::path(out_dir) / "tokenizer.json").string(),
                        sentencepiece_bpe_to_tokenizer_json(prefix + ".vocab"));
  core::write_json_file((fs::path(out_dir) / "tokenizer_config.json").string(),
                        {{"tokenizer_class", "LlamaTokenizer"}, {"bos_token", "<s>"}, {"eos_token", "</s>"},
                         {"unk_token", "<unk>"}, {"add_bos_token", true}, {"add_eos_token", false}, {"legacy", true}});
}

}  // namespace peft::tokenizers
