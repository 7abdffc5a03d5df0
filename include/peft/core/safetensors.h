// safetensors: read (memory-mapped, fully validated) and write (byte-compatible with the
// reference Rust writer: tensors ordered by descending dtype then name, compact JSON header
// padded with spaces to a multiple of 8).
//
// Format: [u64 little-endian header length N][N bytes of JSON][tensor data].
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <ATen/core/Tensor.h>

namespace peft::safetensors {

enum class DType { BOOL, U8, I8, I16, F16, BF16, I32, F32, F64, I64 };

std::string_view dtype_name(DType dtype);
std::optional<DType> parse_dtype(std::string_view name);
std::size_t dtype_size(DType dtype);
c10::ScalarType to_scalar_type(DType dtype);
/// Throws for LibTorch types that safetensors cannot hold (complex, quantized, ...).
DType from_scalar_type(c10::ScalarType type);

struct TensorInfo {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  ///< offset of the first byte, relative to the data section
  uint64_t end = 0;    ///< one past the last byte
  uint64_t nbytes() const { return end - begin; }
};

/// A safetensors file opened read-only through mmap. The whole header is validated on open;
/// every malformed file is rejected with a peft::Error naming the file and the problem.
class File {
 public:
  explicit File(const std::string& path);
  ~File();
  File(File&&) noexcept;
  File& operator=(File&&) noexcept;
  File(const File&) = delete;
  File& operator=(const File&) = delete;

  const std::string& path() const { return path_; }
  /// Tensors in on-disk data order.
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  bool contains(const std::string& name) const { return index_.count(name) != 0; }
  /// Throws naming the file and the missing tensor.
  const TensorInfo& info(const std::string& name) const;
  /// An owned CPU copy of one tensor (safe after the file is closed or replaced).
  at::Tensor load(const std::string& name) const;
  /// Every tensor, as owned copies.
  std::map<std::string, at::Tensor> load_all() const;

 private:
  struct Mapping;
  std::string path_;
  std::shared_ptr<Mapping> map_;
  uint64_t data_start_ = 0;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, std::size_t> index_;
  std::map<std::string, std::string> metadata_;
};

using TensorMap = std::map<std::string, at::Tensor>;
using Metadata = std::map<std::string, std::string>;

/// Reads every tensor of a file (owned copies).
TensorMap load_file(const std::string& path);
/// Parses a header and checks it against a data section of `data_size` bytes; `source` names
/// the origin in errors. Exposed for tests and tools that read headers only.
void parse_header(std::string_view header, uint64_t data_size, const std::string& source,
                  std::vector<TensorInfo>& tensors, Metadata& metadata);

/// The complete file contents for `tensors` (CPU, any layout; copied as contiguous).
std::string serialize(const TensorMap& tensors, const Metadata& metadata = {});
/// Writes atomically (temporary file + rename); streams tensor data without a full copy.
void save_file(const std::string& path, const TensorMap& tensors, const Metadata& metadata = {});

}  // namespace peft::safetensors
