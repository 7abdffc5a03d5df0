// Process set-up shared by the command-line tools.
#pragma once

#include <functional>
#include <optional>
#include <string>

#include <c10/core/ScalarType.h>

namespace peft::apps {

/// Sets LibTorch's thread count: `threads` > 0, else the machine's core count (LibTorch's own
/// default is 1 on some machines), and logs it with the BLAS core type. Returns the count chosen.
int configure_threads(int threads);

/// OpenBLAS 0.3.21 misdetects recent AVX-512 CPUs and falls back to a slow SSE3 kernel; the core
/// type can only be chosen before the library loads. When OPENBLAS_CORETYPE is unset and the CPU
/// has AVX-512 (AVX2), re-executes the process with SKYLAKEX (HASWELL) set. Returns only when no
/// re-exec happened; logs the choice.
void select_blas_core(char** argv);

/// What every tool does first: keeps freed large buffers in the process (training re-allocates
/// them every step) and selects the BLAS core type (select_blas_core).
void prepare_process(char** argv);

/// Runs `body`, turning any exception into one clear line on stderr and exit code 1.
int run_main(const std::string& tool, const std::function<int()>& body);

/// "float32" | "bfloat16" | "float16" | "float64" as a dtype; empty = none (keep the file's).
/// Any other name is an error naming `what` (the option or config key it came from).
std::optional<c10::ScalarType> dtype_from_name(const std::string& name, const std::string& what);

}  // namespace peft::apps
