// Floating-point dtypes by the names configs and flags use.
#pragma once

#include <optional>
#include <string>

#include <c10/core/ScalarType.h>

namespace peft::core {

/// "float32" | "bfloat16" | "float16" | "float64" as a dtype; empty = none (keep the file's).
/// Any other name is an error naming `what` (the option or config key it came from).
std::optional<c10::ScalarType> dtype_from_name(const std::string& name, const std::string& what);
/// The name dtype_from_name reads ("float32", ...); other dtypes by LibTorch's name.
std::string dtype_name(c10::ScalarType dtype);

}  // namespace peft::core
