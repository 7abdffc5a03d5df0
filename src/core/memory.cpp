#include "peft/core/memory.h"

#include <fstream>
#include <string>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include "core/torch_compat.h"

namespace peft::core {
namespace {
double status_mib(const std::string& field) {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind(field + ":", 0) == 0) return std::stod(line.substr(field.size() + 1)) / 1024.0;
  return -1;
}
}  // namespace

double resident_mib() { return status_mib("VmRSS"); }

void release_free_memory() {
#if defined(__GLIBC__)
  ::malloc_trim(0);
#endif
}
double peak_resident_mib() { return status_mib("VmHWM"); }
int64_t cuda_peak_bytes(int device) { return cuda_peak_allocated_bytes(device); }
void reset_cuda_peak_bytes(int device) { reset_cuda_peak(device); }

}  // namespace peft::core
