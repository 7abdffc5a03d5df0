#include "peft/serve/classifier_pool.h"

#include <algorithm>
#include <filesystem>

#include <fmt/ranges.h>

#include <torch/torch.h>

#include "peft/checkpoint/delta.h"
#include "peft/core/error.h"
#include "peft/core/json_io.h"
#include "peft/models/heads.h"
#include "peft/core/safetensors.h"
#include "peft/models/share_weights.h"
#include "peft/peft_model.h"

namespace peft::serve {
namespace {
constexpr const char* kC = "classify";
namespace fs = std::filesystem;
}  // namespace

struct ClassifierPool::Head {
  std::unique_ptr<PeftModel> model;
  std::vector<std::string> labels;
  bool multi_label = false;
};

ClassifierPool::ClassifierPool(std::string model_dir, models::LoadOptions options,
                               std::shared_ptr<models::PretrainedModel> base)
    : model_dir_(std::move(model_dir)), options_(std::move(options)), base_(std::move(base)) {
  options_.task = "sequence_classification";
}

ClassifierPool::~ClassifierPool() = default;

bool ClassifierPool::is_classifier_delta(const std::string& dir) {
  return checkpoint::read_adapter_config(dir)->common.task_type == "SEQ_CLS";
}

ClassifierPool::Head& ClassifierPool::head_for(int64_t num_labels) {
  auto& slot = heads_[num_labels];
  if (slot) return *slot;
  auto options = options_;
  if (num_labels > 0) options.num_labels = num_labels;
  auto model = models::load_pretrained(model_dir_, options);
  if (!base_) base_ = model;  // the first classifier's backbone is the one the others share
  if (base_ != model)
    PEFT_CHECK(models::share_weights(*model, *base_) > 0, kC,
               "{}: the classifier shares no tensor with the served base (load both with the same dtype and device)",
               model_dir_);
  auto head = std::make_unique<Head>();
  const auto config = model->config_json();
  for (int64_t i = 0; i < num_labels; ++i) {
    const auto key = std::to_string(i);
    head->labels.push_back(config.contains("id2label") && config["id2label"].contains(key)
                               ? config["id2label"][key].get<std::string>()
                               : fmt::format("LABEL_{}", i));
  }
  head->multi_label = config.value("problem_type", nlohmann::json()) == "multi_label_classification";
  head->model = std::make_unique<PeftModel>(model);
  head->model->eval();
  slot = std::move(head);
  return *slot;
}

int64_t ClassifierPool::delta_num_labels(const std::string& dir) {
  const int64_t configured =
      models::HeadConfig::from_json(core::read_json_file((fs::path(model_dir_) / "config.json").string()), kC).num_labels;
  const int64_t base_count = options_.num_labels.value_or(configured);
  // The base-sized classifier names the head's tensors; the delta's copy of the one sized by the
  // label count (score.weight, classifier[.out_proj].weight, ...) gives the delta's count.
  Head& probe = head_for(base_count);
  const safetensors::File weights((fs::path(dir) / checkpoint::kWeightsFile).string());
  const auto heads = probe.model->base_model().head_modules();
  for (const auto& p : probe.model->base_model().named_parameters()) {
    const std::string& name = p.key();
    const bool in_head = std::any_of(heads.begin(), heads.end(), [&](const std::string& h) { return name.rfind(h + ".", 0) == 0; });
    if (!in_head || p.value().dim() == 0 || p.value().size(0) != base_count) continue;
    const std::string key = "base_model.model." + name;
    if (!weights.contains(key)) continue;
    const auto& shape = weights.info(key).shape;
    PEFT_CHECK(!shape.empty() && shape[0] >= 1, kC, "{}: {} has shape [{}], expected [labels, ...]", weights.path(), key,
               fmt::join(shape, ", "));
    return shape[0];
  }
  return base_count;
}

void ClassifierPool::load(const std::string& name, const std::string& dir) {
  PEFT_CHECK(is_classifier_delta(dir), kC, "{}: adapter_config.json task_type is not SEQ_CLS (a classification delta)", dir);
  std::lock_guard<std::mutex> lock(mutex_);
  PEFT_CHECK(!deltas_.count(name), kC, "adapter '{}' is already loaded", name);
  const int64_t n = delta_num_labels(dir);
  Head& head = head_for(n);
  checkpoint::load_adapter(*head.model, dir, name);
  deltas_[name] = n;
}

bool ClassifierPool::has(const std::string& name) const {
  std::lock_guard<std::mutex> lock(mutex_);
  return deltas_.count(name) != 0;
}

bool ClassifierPool::remove(const std::string& name) {
  std::lock_guard<std::mutex> lock(mutex_);
  const auto it = deltas_.find(name);
  if (it == deltas_.end()) return false;
  heads_.at(it->second)->model->delete_adapter(name);
  deltas_.erase(it);
  return true;
}

std::vector<std::string> ClassifierPool::adapters() const {
  std::lock_guard<std::mutex> lock(mutex_);
  std::vector<std::string> out;
  for (const auto& [name, n] : deltas_) out.push_back(name);
  return out;
}

ClassifierPool::Head& ClassifierPool::head_of(const std::string& name) const {
  const auto it = deltas_.find(name);
  PEFT_CHECK(it != deltas_.end(), kC, "adapter: no classification delta named '{}' is loaded", name);
  return *heads_.at(it->second);
}

std::string ClassifierPool::method(const std::string& name) const {
  std::lock_guard<std::mutex> lock(mutex_);
  return head_of(name).model->adapter_config(name).method();
}

std::vector<std::string> ClassifierPool::labels(const std::string& name) const {
  std::lock_guard<std::mutex> lock(mutex_);
  return head_of(name).labels;
}

std::vector<Classification> ClassifierPool::classify(const std::string& name,
                                                     const std::vector<std::vector<int64_t>>& inputs) {
  std::lock_guard<std::mutex> lock(mutex_);
  Head& head = head_of(name);
  PeftModel& model = *head.model;
  const auto geometry = model.base_model().geometry();
  const c10::Device device = model.base_model().parameters().front().device();
  torch::NoGradGuard no_grad;
  model.set_adapter(name);
  std::vector<Classification> out;
  for (size_t i = 0; i < inputs.size(); ++i) {
    const auto& ids = inputs[i];
    PEFT_CHECK(!ids.empty(), kC, "input {}: no tokens", i);
    PEFT_CHECK(geometry.max_positions <= 0 || static_cast<int64_t>(ids.size()) <= geometry.max_positions, kC,
               "input {}: {} tokens exceed the model's {} positions", i, ids.size(), geometry.max_positions);
    for (int64_t t : ids)
      PEFT_CHECK(t >= 0 && (geometry.vocab_size <= 0 || t < geometry.vocab_size), kC,
                 "input {}: token {} is outside the vocabulary ({} tokens)", i, t, geometry.vocab_size);
    models::ModelInputs in;
    in.input_ids = torch::tensor(ids, torch::kLong).unsqueeze(0).to(device);
    const at::Tensor logits = model.forward(in).logits.reshape({-1}).to(torch::kFloat64).cpu();
    const at::Tensor p = head.multi_label ? logits.sigmoid() : logits.softmax(0);
    Classification c;
    c.label = p.argmax().item<int64_t>();
    c.probabilities.assign(p.data_ptr<double>(), p.data_ptr<double>() + p.numel());
    out.push_back(std::move(c));
  }
  return out;
}

}  // namespace peft::serve
