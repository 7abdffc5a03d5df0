#include "test_util.h"

#include <cstdlib>
#include <vector>

namespace peft::test {

TempDir::TempDir() {
  std::string tmpl = (std::filesystem::temp_directory_path() / "peft-test-XXXXXX").string();
  std::vector<char> buf(tmpl.begin(), tmpl.end());
  buf.push_back('\0');
  char* p = ::mkdtemp(buf.data());
  if (p == nullptr) throw std::runtime_error("mkdtemp failed");
  path_ = p;
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

}  // namespace peft::test
