// Image classification from IDX files (the MNIST format): uint8 images N×rows×cols and uint8
// labels, resized and normalized per batch to what a vision model expects.
#pragma once

#include <string>

#include <ATen/core/Tensor.h>

#include "peft/data/dataset.h"

namespace peft::data {

struct IdxImagesOptions {
  int64_t image_size = 0;    ///< resize (bilinear) to image_size × image_size; 0 keeps the file's size
  int64_t channels = 1;      ///< grey images are repeated over this many channels
  double max_value = 255.0;  ///< the largest pixel value (255 for MNIST, 16 for the 8×8 digits)
  double mean = 0.5, std = 0.5;  ///< (x / max_value - mean) / std, as HF's ViT image processor
};

class IdxImagesDataset : public Dataset {
 public:
  IdxImagesDataset(const std::string& images_path, const std::string& labels_path, IdxImagesOptions options);
  int64_t size() const override { return images_.size(0); }
  models::ModelInputs batch(const std::vector<int64_t>& indices) const override;
  std::vector<std::string> labels() const override;
  std::string describe() const override;

 private:
  std::string path_;
  IdxImagesOptions options_;
  at::Tensor images_;  // uint8 [N, rows, cols]
  at::Tensor labels_;  // int64 [N]
};

/// Reads one IDX file (magic 0x0000080D: type 0x08 = uint8, D dimensions) as a uint8 tensor.
at::Tensor read_idx(const std::string& path);

}  // namespace peft::data
