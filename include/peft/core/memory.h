// Process memory as benchmarks report it: resident set size (now and peak, from /proc) and the
// CUDA caching allocator's peak.
#pragma once

#include <cstdint>

namespace peft::core {

/// Resident memory now (VmRSS) and at its peak (VmHWM), in MiB; -1 where /proc is missing.
double resident_mib();
double peak_resident_mib();
/// Peak bytes allocated on CUDA device `device` since the last reset; -1 without CUDA.
int64_t cuda_peak_bytes(int device = 0);
void reset_cuda_peak_bytes(int device = 0);

}  // namespace peft::core
