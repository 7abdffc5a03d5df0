#include "jsonl_records.h"

#include "peft/core/error.h"
#include "peft/core/log.h"

namespace peft::data {
namespace {
constexpr const char* kC = "data";
}

std::optional<nlohmann::json> parse_json_object(const std::string& line, std::string& error) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(line);
  } catch (const nlohmann::json::exception& e) {  // syntax, and numbers out of range (1e309)
    error = fmt::format("invalid JSON ({})", e.what());
    return std::nullopt;
  }
  if (!j.is_object()) {
    error = "expected a JSON object";
    return std::nullopt;
  }
  return j;
}

JsonlRecords::JsonlRecords(std::string path, bool skip_bad_records,
                           const std::function<std::string(const std::string&)>& check)
    : path_(std::move(path)) {
  std::ifstream in(path_, std::ios::binary);
  PEFT_CHECK(in.good(), kC, "{}: cannot open the data file", path_);
  std::string line;
  uint64_t offset = 0;
  for (int64_t number = 1; std::getline(in, line); ++number) {
    const uint64_t here = offset;
    offset += line.size() + 1;
    if (line.empty() || line == "\r") continue;
    const std::string error = check(line);
    if (!error.empty()) {
      PEFT_CHECK(skip_bad_records, kC, "{}:{}: {} (skip_bad_records skips and counts such records)", path_, number,
                 error);
      if (++skipped_ <= 5) log::warn("{}:{}: {} (skipped)", path_, number, error);
      continue;
    }
    offsets_.push_back(here);
  }
  PEFT_CHECK(!offsets_.empty(), kC, "{}: no usable records", path_);
  if (skipped_ > 0) log::warn("{}: skipped {} malformed record(s)", path_, skipped_);
}

std::string JsonlRecords::line(int64_t index) const {
  PEFT_CHECK(index >= 0 && index < size(), kC, "record {} is outside [0, {})", index, size());
  std::string line;
  std::lock_guard<std::mutex> lock(mutex_);
  if (!file_.is_open()) file_.open(path_, std::ios::binary);
  file_.clear();
  file_.seekg(static_cast<std::streamoff>(offsets_[static_cast<size_t>(index)]));
  std::getline(file_, line);
  PEFT_CHECK(!file_.fail(), kC, "{}: could not read record {} (was the file changed?)", path_, index);
  return line;
}

}  // namespace peft::data
