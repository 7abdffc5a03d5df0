#include "peft/core/process.h"

#include <malloc.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <thread>

#include <torch/torch.h>

#include "peft/core/error.h"
#include "peft/core/log.h"

namespace peft::core {

int configure_threads(int threads) {
  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  const bool chosen = threads > 0;
  if (!chosen) threads = cores;
  torch::set_num_threads(threads);
  const char* blas_core = std::getenv("OPENBLAS_CORETYPE");
  log::info("threads: {} ({}; the machine has {} cores), OPENBLAS_CORETYPE={}", threads,
            chosen ? "as asked" : "one per core, --threads to change", cores, blas_core ? blas_core : "(unset)");
  return threads;
}

bool flush_denormals(bool on) {
  bool supported = at::globalContext().setFlushDenormal(on);
  // The flag is per thread: set it on each of the intra-op pool's threads too (grain 1: one item each).
  const int64_t n = at::get_num_threads();
  at::parallel_for(0, n, 1, [on](int64_t, int64_t) { at::globalContext().setFlushDenormal(on); });
  return supported;
}

namespace {
/// Training frees and re-allocates the same large activation and gradient buffers every step.
/// glibc hands big blocks back to the kernel (munmap, heap trimming) and the next step pays a page
/// fault per 4 KiB to zero them again; keep them in the process instead.
void keep_freed_memory() {
  mallopt(M_MMAP_THRESHOLD, 32 << 20);  // glibc's largest: blocks up to 32 MiB come from the heap
  mallopt(M_TRIM_THRESHOLD, 1 << 30);   // and stay with the process once freed
}
}  // namespace

void prepare_process(char** argv) {
  keep_freed_memory();
  select_blas_core(argv);
}

void select_blas_core(char** argv) {
  if (std::getenv("OPENBLAS_CORETYPE") != nullptr) return;
  std::ifstream cpuinfo("/proc/cpuinfo");
  std::string line, flags;
  while (std::getline(cpuinfo, line))
    if (line.rfind("flags", 0) == 0) {
      flags = " " + line + " ";
      break;
    }
  const char* core = flags.find(" avx512f ") != std::string::npos ? "SKYLAKEX"
                     : flags.find(" avx2 ") != std::string::npos  ? "HASWELL"
                                                                  : nullptr;
  if (core == nullptr) return;
  ::setenv("OPENBLAS_CORETYPE", core, 1);
  fmt::print(stderr, "[peft info] OPENBLAS_CORETYPE={} (set for this CPU; export OPENBLAS_CORETYPE to override)\n", core);
  // The binary's own path, not /proc/self/exe: the process keeps its name (ps, pkill, top).
  std::error_code ec;
  const std::string self = std::filesystem::read_symlink("/proc/self/exe", ec).string();
  if (!ec && !self.empty()) ::execv(self.c_str(), argv);
  ::execv("/proc/self/exe", argv);
  // exec failed: carry on with the default kernels.
}

int run_main(const std::string& program, const std::function<int()>& body) {
  try {
    return body();
  } catch (const std::exception& e) {
    fmt::print(stderr, "{}: error: {}\n", program, e.what());
    return 1;
  }
}

}  // namespace peft::core
