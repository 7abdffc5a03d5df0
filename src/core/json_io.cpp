#include "peft/core/json_io.h"

#include <algorithm>

#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "peft/core/atomic_file.h"
#include "peft/core/error.h"

namespace peft::core {

namespace {
template <class Json>
Json parse_json_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  PEFT_CHECK(in.good(), "json", "{}: cannot open the file", path);
  std::stringstream buf;
  buf << in.rdbuf();
  try {
    return Json::parse(buf.str());
  } catch (const nlohmann::json::exception& e) {
    fail("json", fmt::format("{}: bad JSON: {}", path, e.what()));
  }
}
}  // namespace

nlohmann::json read_json_file(const std::string& path) { return parse_json_file<nlohmann::json>(path); }

nlohmann::ordered_json read_ordered_json_file(const std::string& path) {
  return parse_json_file<nlohmann::ordered_json>(path);
}

void write_json_file(const std::string& path, const nlohmann::json& j) {
  write_file_atomic(path, j.dump(2) + "\n");
}

void write_ordered_json_file(const std::string& path, const nlohmann::ordered_json& j) {
  write_file_atomic(path, j.dump(2) + "\n");
}

void reject_unknown_keys(const nlohmann::json& j, std::initializer_list<const char*> known,
                         const std::string& component, const std::string& what) {
  reject_unknown_keys(j, std::vector<std::string>(known.begin(), known.end()), component, what);
}

void reject_unknown_keys(const nlohmann::json& j, const std::vector<std::string>& known, const std::string& component,
                         const std::string& what) {
  PEFT_CHECK(j.is_object(), component, "{}: expected a JSON object, found {}", what, j.type_name());
  for (auto it = j.begin(); it != j.end(); ++it)
    if (std::find(known.begin(), known.end(), it.key()) == known.end())
      fail(component, fmt::format("{}: unknown key '{}' (known keys: {})", what, it.key(), fmt::join(known, ", ")));
}

}  // namespace peft::core
