#include "peft/core/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <set>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include "peft/core/atomic_file.h"
#include "peft/core/error.h"

namespace peft::safetensors {
namespace {

constexpr const char* kComponent = "safetensors";
// Same cap as the reference implementation: a larger header is a corrupt length field.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;

struct DTypeRow {
  DType dtype;
  const char* name;
  std::size_t size;
  c10::ScalarType scalar;
  int rust_rank;  // position in the reference writer's Dtype enum; files sort by it, descending
};

constexpr DTypeRow kDTypes[] = {
    {DType::BOOL, "BOOL", 1, c10::ScalarType::Bool, 0},
    {DType::U8, "U8", 1, c10::ScalarType::Byte, 1},
    {DType::I8, "I8", 1, c10::ScalarType::Char, 2},
    {DType::I16, "I16", 2, c10::ScalarType::Short, 5},
    {DType::F16, "F16", 2, c10::ScalarType::Half, 7},
    {DType::BF16, "BF16", 2, c10::ScalarType::BFloat16, 8},
    {DType::I32, "I32", 4, c10::ScalarType::Int, 9},
    {DType::F32, "F32", 4, c10::ScalarType::Float, 11},
    {DType::F64, "F64", 8, c10::ScalarType::Double, 12},
    {DType::I64, "I64", 8, c10::ScalarType::Long, 13},
};

const DTypeRow& row(DType d) {
  for (const auto& r : kDTypes)
    if (r.dtype == d) return r;
  fail(kComponent, "internal: unhandled dtype");
}

std::string known_dtypes() {
  std::string s;
  for (const auto& r : kDTypes) s += (s.empty() ? "" : ", ") + std::string(r.name);
  return s;
}

bool little_endian_host() {
  const uint16_t probe = 1;
  unsigned char first;
  std::memcpy(&first, &probe, 1);
  return first == 1;
}

uint64_t read_u64_le(const unsigned char* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

std::string shape_str(const std::vector<int64_t>& shape) {
  return fmt::format("[{}]", fmt::join(shape, ","));
}

}  // namespace

std::string_view dtype_name(DType dtype) { return row(dtype).name; }
std::size_t dtype_size(DType dtype) { return row(dtype).size; }
c10::ScalarType to_scalar_type(DType dtype) { return row(dtype).scalar; }

std::optional<DType> parse_dtype(std::string_view name) {
  for (const auto& r : kDTypes)
    if (name == r.name) return r.dtype;
  return std::nullopt;
}

DType from_scalar_type(c10::ScalarType type) {
  for (const auto& r : kDTypes)
    if (r.scalar == type) return r.dtype;
  fail(kComponent, fmt::format("cannot store LibTorch dtype {} (supported: {})",
                               c10::toString(type), known_dtypes()));
}

// ---- reading -----------------------------------------------------------------

void parse_header(std::string_view header, uint64_t data_size, const std::string& source,
                  std::vector<TensorInfo>& tensors, Metadata& metadata) {
  using nlohmann::json;
  std::set<std::string> seen;
  std::string duplicate;
  json::parser_callback_t on_event = [&](int depth, json::parse_event_t event, json& parsed) {
    if (event == json::parse_event_t::key && depth == 1) {
      auto key = parsed.get<std::string>();
      if (!seen.insert(key).second && duplicate.empty()) duplicate = key;
    }
    return true;
  };
  json j;
  try {
    j = json::parse(header.begin(), header.end(), on_event);
  } catch (const json::exception& e) {
    fail(kComponent, fmt::format("{}: bad JSON header: {}", source, e.what()));
  }
  PEFT_CHECK(duplicate.empty(), kComponent, "{}: duplicate tensor name '{}' in the header", source,
             duplicate);
  PEFT_CHECK(j.is_object(), kComponent, "{}: header must be a JSON object, found {}", source,
             j.type_name());

  tensors.clear();
  metadata.clear();
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& name = it.key();
    const json& v = it.value();
    if (name == "__metadata__") {
      PEFT_CHECK(v.is_object(), kComponent, "{}: __metadata__ must be an object of strings, found {}",
                 source, v.type_name());
      for (auto m = v.begin(); m != v.end(); ++m) {
        PEFT_CHECK(m.value().is_string(), kComponent,
                   "{}: __metadata__ value of '{}' must be a string, found {}", source, m.key(),
                   m.value().type_name());
        metadata[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    PEFT_CHECK(v.is_object(), kComponent, "{}: entry of tensor '{}' must be an object, found {}",
               source, name, v.type_name());
    for (const char* field : {"dtype", "shape", "data_offsets"})
      PEFT_CHECK(v.contains(field), kComponent, "{}: tensor '{}' has no '{}'", source, name, field);
    for (auto f = v.begin(); f != v.end(); ++f)
      PEFT_CHECK(f.key() == "dtype" || f.key() == "shape" || f.key() == "data_offsets", kComponent,
                 "{}: tensor '{}' has an unknown field '{}' (expected dtype, shape, data_offsets)",
                 source, name, f.key());
    TensorInfo info;
    info.name = name;
    PEFT_CHECK(v["dtype"].is_string(), kComponent, "{}: tensor '{}': dtype must be a string", source,
               name);
    auto dtype_str = v["dtype"].get<std::string>();
    auto dtype = parse_dtype(dtype_str);
    PEFT_CHECK(dtype.has_value(), kComponent, "{}: tensor '{}' has unknown dtype '{}' (expected one of {})",
               source, name, dtype_str, known_dtypes());
    info.dtype = *dtype;
    PEFT_CHECK(v["shape"].is_array(), kComponent, "{}: tensor '{}': shape must be an array", source,
               name);
    // Element count with overflow checks: a hostile shape must not wrap around.
    uint64_t numel = 1;
    bool overflow = false;
    for (const auto& d : v["shape"]) {
      PEFT_CHECK(d.is_number_unsigned() || (d.is_number_integer() && d.get<int64_t>() >= 0),
                 kComponent, "{}: tensor '{}': shape entries must be non-negative integers, found {}",
                 source, name, d.dump());
      uint64_t dim = d.get<uint64_t>();
      PEFT_CHECK(dim <= static_cast<uint64_t>(INT64_MAX), kComponent,
                 "{}: tensor '{}': dimension {} is too large", source, name, dim);
      if (dim != 0 && numel > UINT64_MAX / dim) overflow = true;
      numel *= dim;
      info.shape.push_back(static_cast<int64_t>(dim));
    }
    const auto& offs = v["data_offsets"];
    PEFT_CHECK(offs.is_array() && offs.size() == 2 && offs[0].is_number_unsigned() &&
                   offs[1].is_number_unsigned(),
               kComponent, "{}: tensor '{}': data_offsets must be two non-negative integers, found {}",
               source, name, offs.dump());
    info.begin = offs[0].get<uint64_t>();
    info.end = offs[1].get<uint64_t>();
    PEFT_CHECK(info.begin <= info.end, kComponent,
               "{}: tensor '{}': data_offsets [{},{}] are out of order (begin after end)", source,
               name, info.begin, info.end);
    const uint64_t esize = dtype_size(info.dtype);
    PEFT_CHECK(!overflow && numel <= UINT64_MAX / esize, kComponent,
               "{}: tensor '{}': shape {} overflows the byte count", source, name,
               shape_str(info.shape));
    PEFT_CHECK(info.nbytes() == numel * esize, kComponent,
               "{}: tensor '{}' ({} {}) expects {} bytes, but data_offsets [{},{}] span {} bytes",
               source, name, dtype_str, shape_str(info.shape), numel * esize, info.begin, info.end,
               info.nbytes());
    PEFT_CHECK(info.end <= data_size, kComponent,
               "{}: tensor '{}' ends at byte {} of the data section, but the data section has only {} "
               "bytes (file truncated?)",
               source, name, info.end, data_size);
    tensors.push_back(std::move(info));
  }

  // The data section must be covered exactly once, in offset order: no overlap, no gap.
  std::stable_sort(tensors.begin(), tensors.end(), [](const TensorInfo& a, const TensorInfo& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  uint64_t expected = 0;
  const TensorInfo* prev = nullptr;
  for (const auto& t : tensors) {
    PEFT_CHECK(t.begin >= expected, kComponent,
               "{}: tensor '{}' (bytes [{},{})) overlaps tensor '{}' (bytes [{},{}))", source, t.name,
               t.begin, t.end, prev ? prev->name : "", prev ? prev->begin : 0, expected);
    PEFT_CHECK(t.begin == expected, kComponent,
               "{}: gap in the data section: tensor '{}' starts at byte {}, expected {}", source,
               t.name, t.begin, expected);
    expected = t.end;
    prev = &t;
  }
  PEFT_CHECK(expected == data_size, kComponent,
             "{}: the tensors cover {} bytes but the data section has {} (trailing bytes)", source,
             expected, data_size);
}

struct File::Mapping {
  void* addr = nullptr;
  std::size_t size = 0;
  ~Mapping() {
    if (addr != nullptr) ::munmap(addr, size);
  }
};

File::File(const std::string& path) : path_(path) {
  PEFT_CHECK(little_endian_host(), kComponent, "{}: big-endian hosts are not supported", path);
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  PEFT_CHECK(fd >= 0, kComponent, "{}: cannot open: {}", path, std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    fail(kComponent, fmt::format("{}: not a regular file", path));
  }
  const auto file_size = static_cast<uint64_t>(st.st_size);
  map_ = std::make_shared<Mapping>();
  if (file_size > 0) {
    void* addr = ::mmap(nullptr, file_size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (addr == MAP_FAILED) {
      ::close(fd);
      fail(kComponent, fmt::format("{}: mmap failed: {}", path, std::strerror(errno)));
    }
    map_->addr = addr;
    map_->size = file_size;
  }
  ::close(fd);

  PEFT_CHECK(file_size >= 8, kComponent,
             "{}: truncated: {} bytes, too short for the 8-byte header length", path, file_size);
  const auto* bytes = static_cast<const unsigned char*>(map_->addr);
  const uint64_t header_len = read_u64_le(bytes);
  PEFT_CHECK(header_len <= kMaxHeaderBytes, kComponent,
             "{}: header length {} exceeds the {}-byte limit (corrupt length field?)", path,
             header_len, kMaxHeaderBytes);
  PEFT_CHECK(header_len <= file_size - 8, kComponent,
             "{}: header length {} goes beyond the end of the file ({} bytes)", path, header_len,
             file_size);
  data_start_ = 8 + header_len;
  std::string_view header(reinterpret_cast<const char*>(bytes + 8), header_len);
  parse_header(header, file_size - data_start_, path, tensors_, metadata_);
  for (std::size_t i = 0; i < tensors_.size(); ++i) index_[tensors_[i].name] = i;
}

File::~File() = default;
File::File(File&&) noexcept = default;
File& File::operator=(File&&) noexcept = default;

const TensorInfo& File::info(const std::string& name) const {
  auto it = index_.find(name);
  PEFT_CHECK(it != index_.end(), kComponent, "{}: no tensor named '{}'", path_, name);
  return tensors_[it->second];
}

at::Tensor File::load(const std::string& name) const {
  const TensorInfo& t = info(name);
  auto options = at::TensorOptions().dtype(to_scalar_type(t.dtype)).device(at::kCPU);
  at::Tensor out = at::empty(t.shape, options);
  if (t.nbytes() == 0) return out;
  const char* src = static_cast<const char*>(map_->addr) + data_start_ + t.begin;
  std::memcpy(out.data_ptr(), src, t.nbytes());
  // The copy is what stays: hand the file's pages back (a later read maps them in again), so that
  // loading a checkpoint costs its size once, not twice, in resident memory.
  static const auto page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const auto first = (reinterpret_cast<uintptr_t>(src) + page - 1) / page * page;
  const auto last = (reinterpret_cast<uintptr_t>(src) + t.nbytes()) / page * page;
  if (last > first) ::madvise(reinterpret_cast<void*>(first), last - first, MADV_DONTNEED);
  return out;
}

std::map<std::string, at::Tensor> File::load_all() const {
  std::map<std::string, at::Tensor> out;
  for (const auto& t : tensors_) out[t.name] = load(t.name);
  return out;
}

TensorMap load_file(const std::string& path) { return File(path).load_all(); }

// ---- writing -----------------------------------------------------------------

namespace {

struct Planned {
  std::string name;
  DType dtype;
  at::Tensor data;  // contiguous CPU
};

std::vector<Planned> plan(const TensorMap& tensors) {
  std::vector<Planned> out;
  for (const auto& [name, t] : tensors) {
    PEFT_CHECK(name != "__metadata__", kComponent, "'__metadata__' is reserved and cannot name a tensor");
    PEFT_CHECK(t.defined(), kComponent, "tensor '{}' is undefined", name);
    PEFT_CHECK(!t.is_sparse(), kComponent, "tensor '{}' is sparse; store indices and values instead",
               name);
    at::Tensor data = t.detach().to(at::kCPU).contiguous();
    out.push_back({name, from_scalar_type(data.scalar_type()), data});
  }
  std::stable_sort(out.begin(), out.end(), [](const Planned& a, const Planned& b) {
    int ra = row(a.dtype).rust_rank, rb = row(b.dtype).rust_rank;
    return ra != rb ? ra > rb : a.name < b.name;
  });
  return out;
}

std::string header_for(const std::vector<Planned>& planned, const Metadata& metadata) {
  using nlohmann::json;
  std::string h = "{";
  bool first = true;
  if (!metadata.empty()) {
    h += "\"__metadata__\":{";
    bool mfirst = true;
    for (const auto& [k, v] : metadata) {
      h += (mfirst ? "" : ",") + json(k).dump() + ":" + json(v).dump();
      mfirst = false;
    }
    h += "}";
    first = false;
  }
  uint64_t offset = 0;
  for (const auto& p : planned) {
    const uint64_t n = p.data.numel() * dtype_size(p.dtype);
    std::vector<int64_t> shape(p.data.sizes().begin(), p.data.sizes().end());
    h += fmt::format("{}{}:{{\"dtype\":\"{}\",\"shape\":{},\"data_offsets\":[{},{}]}}", first ? "" : ",",
                     json(p.name).dump(), dtype_name(p.dtype), shape_str(shape), offset, offset + n);
    offset += n;
    first = false;
  }
  h += "}";
  h.append((8 - h.size() % 8) % 8, ' ');
  return h;
}

std::string length_prefix(uint64_t n) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return s;
}

}  // namespace

std::string serialize(const TensorMap& tensors, const Metadata& metadata) {
  auto planned = plan(tensors);
  std::string header = header_for(planned, metadata);
  std::string out = length_prefix(header.size()) + header;
  for (const auto& p : planned)
    if (p.data.numel() > 0)
      out.append(static_cast<const char*>(p.data.data_ptr()), p.data.numel() * dtype_size(p.dtype));
  return out;
}

void save_file(const std::string& path, const TensorMap& tensors, const Metadata& metadata) {
  PEFT_CHECK(little_endian_host(), kComponent, "{}: big-endian hosts are not supported", path);
  auto planned = plan(tensors);
  std::string header = header_for(planned, metadata);
  core::write_file_atomic(path, [&](int fd) {
    std::string prefix = length_prefix(header.size());
    core::write_all(fd, prefix.data(), prefix.size(), path);
    core::write_all(fd, header.data(), header.size(), path);
    for (const auto& p : planned)
      core::write_all(fd, p.data.data_ptr(), p.data.numel() * dtype_size(p.dtype), path);
  });
}

}  // namespace peft::safetensors
