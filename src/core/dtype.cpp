#include "peft/core/dtype.h"

#include "peft/core/error.h"

namespace peft::core {

std::optional<c10::ScalarType> dtype_from_name(const std::string& name, const std::string& what) {
  if (name.empty()) return std::nullopt;
  if (name == "float32") return c10::kFloat;
  if (name == "bfloat16") return c10::kBFloat16;
  if (name == "float16") return c10::kHalf;
  if (name == "float64") return c10::kDouble;
  fail("cli", fmt::format("{}: expected float32, bfloat16, float16 or float64, found '{}'", what, name));
}

}  // namespace peft::core
