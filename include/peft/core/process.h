// Process set-up for programs built on the library (the tools and examples use it): threads,
// the BLAS kernel choice, allocator settings for training, one-line errors.
#pragma once

#include <functional>
#include <string>

namespace peft::core {

/// Sets LibTorch's thread count: `threads` > 0, else the machine's core count (LibTorch's own
/// default is 1 on some machines), and logs it with the BLAS core type. Returns the count chosen.
int configure_threads(int threads);

/// Flushes denormal floats to zero (x86 FTZ/DAZ) on the calling thread and every LibTorch worker
/// thread, or stops. Arithmetic on denormals is ~100x slower on x86: an optimizer's moment
/// estimates for rarely seen embedding rows decay into that range (0.9^700 · 1e-5 < 1e-38) and
/// make long runs slow down step by step. Returns whether the CPU supports it.
bool flush_denormals(bool on);

/// OpenBLAS 0.3.21 misdetects recent AVX-512 CPUs and falls back to a slow SSE3 kernel; the core
/// type can only be chosen before the library loads. When OPENBLAS_CORETYPE is unset and the CPU
/// has AVX-512 (AVX2), re-executes the process with SKYLAKEX (HASWELL) set. Returns only when no
/// re-exec happened; logs the choice.
void select_blas_core(char** argv);

/// What a training program does first: keeps freed large buffers in the process (training
/// re-allocates them every step) and selects the BLAS core type (select_blas_core).
void prepare_process(char** argv);

/// Runs `body`, turning any exception into one clear line on stderr ("<program>: error: ...")
/// and exit code 1.
int run_main(const std::string& program, const std::function<int()>& body);

}  // namespace peft::core
