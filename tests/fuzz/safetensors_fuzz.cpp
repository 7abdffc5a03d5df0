// The safetensors reader: open, list, and load every tensor of an arbitrary file.
#include <filesystem>

#include "fuzz_input.h"
#include "peft/core/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto& path = peft::fuzz::write_input(data, size, "model.safetensors");
  return peft::fuzz::accept_errors([&] {
    peft::safetensors::File f(path);
    for (const auto& t : f.tensors()) f.load(t.name);
  });
}
