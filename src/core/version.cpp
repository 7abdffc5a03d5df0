#include "peft/core/version.h"

namespace peft {

const std::string& version() {
  static const std::string v = PEFT_VERSION_STRING;
  return v;
}

}  // namespace peft
