#include "peft/data/idx_images.h"

#include <fstream>

#include <torch/torch.h>

#include "peft/core/error.h"

namespace peft::data {
namespace F = torch::nn::functional;

at::Tensor read_idx(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  PEFT_CHECK(in.good(), "data", "{}: cannot open the IDX file", path);
  unsigned char magic[4];
  in.read(reinterpret_cast<char*>(magic), 4);
  PEFT_CHECK(in.gcount() == 4 && magic[0] == 0 && magic[1] == 0 && magic[2] == 0x08 && magic[3] >= 1 && magic[3] <= 4,
             "data", "{}: not a uint8 IDX file (expected magic 00 00 08 0D with 1 <= D <= 4)", path);
  std::vector<int64_t> dims(magic[3]);
  int64_t count = 1;
  for (auto& d : dims) {
    unsigned char b[4];
    in.read(reinterpret_cast<char*>(b), 4);
    PEFT_CHECK(in.gcount() == 4, "data", "{}: truncated header", path);
    d = (int64_t{b[0]} << 24) | (int64_t{b[1]} << 16) | (int64_t{b[2]} << 8) | int64_t{b[3]};
    PEFT_CHECK(d > 0 && d < (int64_t{1} << 31), "data", "{}: bad dimension {}", path, d);
    count *= d;
  }
  auto t = torch::empty(dims, torch::kUInt8);
  in.read(reinterpret_cast<char*>(t.data_ptr<uint8_t>()), count);
  PEFT_CHECK(in.gcount() == count, "data", "{}: expected {} bytes of data after the header, found {}", path, count,
             in.gcount());
  return t;
}

IdxImagesDataset::IdxImagesDataset(const std::string& images_path, const std::string& labels_path,
                                   IdxImagesOptions options)
    : path_(images_path), options_(options) {
  images_ = read_idx(images_path);
  PEFT_CHECK(images_.dim() == 3, "data", "{}: expected images [N, rows, cols], found {}", images_path,
             c10::str(images_.sizes()));
  labels_ = read_idx(labels_path);
  PEFT_CHECK(labels_.dim() == 1 && labels_.size(0) == images_.size(0), "data",
             "{}: expected {} labels for {} images, found shape {}", labels_path, images_.size(0), images_path,
             c10::str(labels_.sizes()));
  labels_ = labels_.to(torch::kLong);
  PEFT_CHECK(options_.channels >= 1 && options_.max_value > 0 && options_.std > 0, "data",
             "channels, max_value and std must be positive");
}

models::ModelInputs IdxImagesDataset::batch(const std::vector<int64_t>& indices) const {
  auto idx = torch::tensor(indices, torch::kLong);
  at::Tensor x = images_.index_select(0, idx).to(torch::kFloat).unsqueeze(1) / options_.max_value;
  if (options_.image_size > 0 && (x.size(2) != options_.image_size || x.size(3) != options_.image_size))
    x = F::interpolate(x, F::InterpolateFuncOptions()
                              .size(std::vector<int64_t>{options_.image_size, options_.image_size})
                              .mode(torch::kBilinear)
                              .align_corners(false));
  x = ((x - options_.mean) / options_.std).repeat({1, options_.channels, 1, 1});
  models::ModelInputs in;
  in.pixel_values = x;
  in.labels = labels_.index_select(0, idx);
  return in;
}

std::vector<std::string> IdxImagesDataset::labels() const {
  std::vector<std::string> out;
  const int64_t n = labels_.max().item<int64_t>() + 1;
  for (int64_t i = 0; i < n; ++i) out.push_back(std::to_string(i));
  return out;
}

std::string IdxImagesDataset::describe() const {
  return fmt::format("{}: {} images {}x{}, {} classes", path_, size(), images_.size(1), images_.size(2),
                     labels().size());
}

}  // namespace peft::data
