#pragma once

#include <string>

namespace peft {

/// The library version, e.g. "0.1.0" (from the CMake project version).
const std::string& version();

}  // namespace peft
