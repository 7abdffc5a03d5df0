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

std::string dtype_name(c10::ScalarType dtype) {
  switch (dtype) {
    case c10::kFloat: return "float32";
    case c10::kBFloat16: return "bfloat16";
    case c10::kHalf: return "float16";
    case c10::kDouble: return "float64";
    default: return c10::toString(dtype);
  }
}

}  // namespace peft::core
