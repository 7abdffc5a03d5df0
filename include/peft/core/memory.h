// Process memory as benchmarks report it: resident set size (now and peak, from /proc) and the
// CUDA caching allocator's peak.
#pragma once

#include <cstdint>

namespace peft::core {

/// Resident memory now (VmRSS) and at its peak (VmHWM), in MiB; -1 where /proc is missing.
double resident_mib();
double peak_resident_mib();
/// Hands freed heap memory back to the system (glibc keeps freed blocks inside its arenas; after
/// many short-lived buffers between long-lived ones, as when quantizing layer by layer, that
/// retained memory would otherwise count as resident). A no-op elsewhere.
void release_free_memory();
/// Peak bytes allocated on CUDA device `device` since the last reset; -1 without CUDA.
int64_t cuda_peak_bytes(int device = 0);
void reset_cuda_peak_bytes(int device = 0);

}  // namespace peft::core
