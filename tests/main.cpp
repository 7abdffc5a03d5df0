#include <gtest/gtest.h>
#include <torch/torch.h>

#include "peft/core/process.h"

int main(int argc, char** argv) {
  // The BLAS kernel the tools pick (they re-execute with it), so that a tool run by a test and
  // the test itself compute bit for bit alike. ctest sets it already (no re-execution then).
  peft::core::select_blas_core(argv);
  ::testing::InitGoogleTest(&argc, argv);
  // Tests compare against fixtures made with one thread; the result does not depend on it,
  // but one thread keeps ctest -j2 from oversubscribing the cores.
  torch::set_num_threads(1);
  // Tests named *_CUDA need a GPU; skip them where there is none.
  if (!torch::cuda::is_available()) {
    std::string filter = ::testing::GTEST_FLAG(filter);
    ::testing::GTEST_FLAG(filter) = filter + (filter.find('-') == std::string::npos ? "-" : ":") + "*_CUDA*";
  }
  return RUN_ALL_TESTS();
}
