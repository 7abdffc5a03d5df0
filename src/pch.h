// Precompiled header for the library, tools and tests: the heavy LibTorch headers, parsed once.
#pragma once
#include <torch/torch.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>
