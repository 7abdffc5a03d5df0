// Line-indexed JSONL files, for the datasets that read their records on demand: one streaming
// pass keeps each usable line's byte offset (a bad line stops the run naming file:line, or is
// skipped and counted), and a record's line is read again by its offset when a batch needs it.
#pragma once

#include <cstdint>
#include <fstream>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace peft::data {

/// The line as a JSON object; otherwise nullopt, with `error` saying why.
std::optional<nlohmann::json> parse_json_object(const std::string& line, std::string& error);

class JsonlRecords {
 public:
  /// `check(line)` returns "" for a usable record, else what is wrong with it.
  JsonlRecords(std::string path, bool skip_bad_records, const std::function<std::string(const std::string&)>& check);
  int64_t size() const { return static_cast<int64_t>(offsets_.size()); }
  int64_t skipped() const { return skipped_; }
  /// Record `index`'s line, read again from the file.
  std::string line(int64_t index) const;

 private:
  std::string path_;
  std::vector<uint64_t> offsets_;  // byte offset of each kept record's line
  int64_t skipped_ = 0;
  mutable std::mutex mutex_;
  mutable std::ifstream file_;
};

}  // namespace peft::data
