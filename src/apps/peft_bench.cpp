// peft-bench: one training step of each method side by side on the same model and batch —
// median step time, tokens/s, trainable parameters and peak memory. Each method runs in a fresh
// child process so that its peak resident memory is its own. JSON lines on stdout (one per
// method), a table on stderr. memory_mib = peak resident memory minus the process's before the
// model was built: weights, optimizer state, activations and gradients of the training steps.
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <optional>
#include <sstream>

#include <ATen/CPUGeneratorImpl.h>
#include <CLI/CLI.hpp>
#include <torch/csrc/autograd/profiler_legacy.h>
#include <torch/torch.h>

#include "peft/core/process.h"
#include "peft/checkpoint/delta.h"
#include "peft/core/atomic_file.h"
#include "peft/core/dtype.h"
#include "peft/core/error.h"
#include "peft/core/json_io.h"
#include "peft/core/memory.h"
#include "peft/generate.h"
#include "peft/models/save.h"
#include "peft/methods/method.h"
#include "peft/models/load.h"
#include "peft/peft_model.h"
#include "peft/privacy/private_gradient.h"
#include "peft/optim/adamw.h"

extern char** environ;

namespace {

constexpr const char* kC = "peft-bench";

struct Geometry {
  std::string family = "gpt2";
  int64_t layers = 4, hidden = 256, heads = 4, vocab = 8000, seq = 128, batch = 8;
  int64_t kv_heads = 0;      ///< llama: 0 = heads
  int64_t generate = 0;      ///< tokens to generate after a prompt of `seq` (0: a training step)
  int64_t intermediate = 0;  ///< 0 = the family's default (gpt2 4·hidden, llama 8/3·hidden rounded to 256)
  int64_t ffn() const {
    if (intermediate > 0) return intermediate;
    return family == "gpt2" ? 4 * hidden : (8 * hidden / 3 + 255) / 256 * 256;
  }
  int64_t kv() const { return kv_heads > 0 ? kv_heads : heads; }
};

/// How a run is set up beyond the geometry.
struct Setup {
  std::string model_dir;  ///< load this model (its config.json gives the geometry) instead of drawing one
  std::string dtype = "float32";
  std::string device = "cpu";
  bool checkpointing = false;
  bool dp = false;  ///< also time a DP-SGD step (per-example clipping and noise) on the same batch
  std::string quant = "none";  ///< none | int8 | nf4 | fp4: the frozen linears' storage (compute in `dtype`)
  bool double_quant = false;

  std::optional<peft::models::QuantizationConfig> quantization() const {
    if (quant == "none") return std::nullopt;
    nlohmann::json q = {{"type", quant}, {"double_quant", double_quant && quant != "int8"}, {"compute_dtype", dtype}};
    return peft::models::QuantizationConfig::from_json(q, "--quant");
  }
};

/// The benchmark batch as a dataset of its rows, for DP-SGD's per-example gradients.
class BatchRows : public peft::data::Dataset {
 public:
  explicit BatchRows(at::Tensor ids) : ids_(std::move(ids)) {}
  int64_t size() const override { return ids_.size(0); }
  peft::models::ModelInputs batch(const std::vector<int64_t>& indices) const override {
    peft::models::ModelInputs in;
    in.input_ids = ids_.index_select(0, torch::tensor(indices, torch::kLong).to(ids_.device()));
    in.labels = in.input_ids;
    return in;
  }
  std::string describe() const override { return "the benchmark batch"; }

 private:
  at::Tensor ids_;
};

nlohmann::json model_config(const Geometry& g) {
  // Room for up to 16 virtual tokens before the sequence (prompt and prefix methods).
  const int64_t positions = g.seq + g.generate + 16;
  if (g.family == "gpt2")
    return {{"model_type", "gpt2"}, {"vocab_size", g.vocab}, {"n_positions", positions},
            {"n_embd", g.hidden}, {"n_layer", g.layers}, {"n_head", g.heads}, {"n_inner", g.ffn()},
            {"resid_pdrop", 0.0}, {"embd_pdrop", 0.0}, {"attn_pdrop", 0.0}};
  PEFT_CHECK(g.family == "llama", kC, "--family must be gpt2 or llama, found '{}'", g.family);
  return {{"model_type", "llama"}, {"vocab_size", g.vocab}, {"max_position_embeddings", positions},
          {"hidden_size", g.hidden}, {"num_hidden_layers", g.layers}, {"num_attention_heads", g.heads},
          {"num_key_value_heads", g.kv()}, {"intermediate_size", g.ffn()}, {"rms_norm_eps", 1e-5},
          {"architectures", {"LlamaForCausalLM"}}};
}

/// The geometry a model directory's config.json describes (batch and seq stay the run's).
Geometry geometry_of(const std::string& dir, Geometry g) {
  const auto c = peft::core::read_json_file((std::filesystem::path(dir) / "config.json").string());
  const auto m = peft::models::model_geometry(c);
  g.family = c.at("model_type").get<std::string>();
  PEFT_CHECK(g.family == "gpt2" || g.family == "llama", kC, "--model: {} is a {} model; gpt2 and llama are benchmarked",
             dir, g.family);
  g.layers = m.num_layers;
  g.hidden = m.hidden_size;
  g.heads = m.num_heads;
  g.kv_heads = m.num_kv_heads;
  g.vocab = m.vocab_size;
  g.intermediate = m.intermediate_size;
  return g;
}

/// The method configurations benchmarked by name ("full" trains every weight); the same
/// settings as bench/torch_reference.py uses for the Python side.
nlohmann::json method_config(const std::string& name, const std::string& family = "gpt2") {
  static const std::map<std::string, nlohmann::json> presets = {
      {"lora", {{"peft_type", "LORA"}, {"r", 8}, {"lora_alpha", 16}}},
      // r = 16 on every projection of a block (QLoRA's recipe).
      {"lora_all", {{"peft_type", "LORA"}, {"r", 16}, {"lora_alpha", 32}}},
      {"adapter", {{"peft_type", "BOTTLENECK_ADAPTER"}, {"preset", "houlsby"}, {"bottleneck_size", 16}, {"non_linearity", "gelu"}}},
      {"lst", {{"peft_type", "LST"}, {"reduction_factor", 8}}},
      {"ia3", {{"peft_type", "IA3"}}},
      {"bitfit", {{"peft_type", "BITFIT"}}},
      {"prefix_tuning", {{"peft_type", "PREFIX_TUNING"}, {"num_virtual_tokens", 10}}},
      {"prompt_tuning", {{"peft_type", "PROMPT_TUNING"}, {"num_virtual_tokens", 10}}},
  };
  auto it = presets.find(name);
  if (it != presets.end()) {
    nlohmann::json j = it->second;
    if (name == "lora_all")
      j["target_modules"] = family == "llama" ? nlohmann::json{"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
                                              : nlohmann::json{"c_attn", "c_proj", "c_fc"};
    return j;
  }
  std::vector<std::string> names = {"full"};
  for (const auto& [n, j] : presets) names.push_back(n);
  peft::fail(kC, fmt::format("--methods: unknown method '{}' (known: {})", name, fmt::join(names, ", ")));
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : (v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]));
}

/// Bytes of every file under `dir`.
int64_t directory_bytes(const std::string& dir) {
  int64_t n = 0;
  for (const auto& e : std::filesystem::recursive_directory_iterator(dir))
    if (e.is_regular_file()) n += static_cast<int64_t>(e.file_size());
  return n;
}

/// Median milliseconds of `runs` calls of `f` after one untimed call.
double median_ms(const std::function<void()>& f, int runs) {
  f();
  std::vector<double> t;
  for (int i = 0; i < runs; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    t.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  return median(t);
}

/// Float32 GEMM rate at the model's feed-forward shape ([batch·seq, d] × [d, 4d]), in GFLOP/s.
double gemm_gflops(const Geometry& g, int runs) {
  const int64_t m = g.batch * g.seq, k = g.hidden, n = 4 * g.hidden;
  at::Tensor a = torch::randn({m, k}), b = torch::randn({k, n});
  const double ms = median_ms([&] { (void)torch::matmul(a, b); }, runs);
  return 2.0 * static_cast<double>(m * k * n) / (ms * 1e6);
}

/// FLOPs (2 per multiply-add) of one forward pass: the block projections, the attention scores
/// and mixing (4·T·d per token and layer) and the LM head (2·d·V per token).
double forward_flops(const Geometry& g) {
  const double n = static_cast<double>(g.batch * g.seq), d = static_cast<double>(g.hidden);
  const double f = static_cast<double>(g.ffn()), kv = d / static_cast<double>(g.heads) * static_cast<double>(g.kv());
  const double per_token = g.family == "llama" ? 2.0 * d * d + 2.0 * d * kv + 3.0 * d * f : 4.0 * d * d + 2.0 * d * f;
  return static_cast<double>(g.layers) * (2.0 * n * per_token + 4.0 * n * static_cast<double>(g.seq) * d) +
         2.0 * n * d * static_cast<double>(g.vocab);
}

/// A rough model of the activation bytes one training step keeps for backward (for the
/// "predicted" column): per block, the inputs of its projections and of the attention product,
/// the scores and probabilities, the norms' float32 intermediates and the float32 copies a
/// float32 delta makes of its inputs; with checkpointing, one input per block plus one block's
/// worth; then the logits with their float32 softmax and gradient.
double predicted_activation_bytes(const Geometry& g, double elt, bool checkpointing, bool float32_delta_inputs) {
  const double n = static_cast<double>(g.batch * g.seq), d = static_cast<double>(g.hidden);
  const double f = static_cast<double>(g.ffn()), t = static_cast<double>(g.seq);
  const double scores = static_cast<double>(g.batch * g.heads) * t * t * (2.0 * elt + 4.0);
  const double projections = g.family == "llama" ? n * (6.0 * d + 4.0 * f) * elt : n * (6.0 * d + 2.0 * f) * elt;
  const double norms = 4.0 * n * d * 4.0;
  const double delta_copies = float32_delta_inputs ? n * (7.0 * d + f) * 4.0 : 0.0;
  const double block = scores + projections + norms + delta_copies;
  const double layers = static_cast<double>(g.layers);
  const double logits = n * static_cast<double>(g.vocab) * (elt + 8.0);
  return (checkpointing ? layers * n * d * elt + block : layers * block) + logits;
}

/// FLOPs a training step needs: forward, input gradients, and weight gradients where weights train
/// (3× forward for full fine-tuning, 2× for a frozen base; the deltas' own FLOPs are left out).
/// With a side network the backward may never enter the backbone (LST): none is claimed then.
std::optional<double> step_flops(peft::PeftModel* model, const Geometry& g) {
  if (model == nullptr) return 3.0 * forward_flops(g);
  if (model->side_network(model->active_adapter())) return std::nullopt;
  return 2.0 * forward_flops(g);
}

int64_t bytes_of(const std::vector<at::Tensor>& tensors) {
  int64_t n = 0;
  for (const auto& t : tensors) n += static_cast<int64_t>(t.numel() * t.element_size());
  return n;
}

double mib(double bytes) { return bytes / (1024.0 * 1024.0); }

/// The causal LM a run measures: --model loaded (each tensor quantized as its shard is read), else
/// drawn at random in place (quantized: one linear at a time, never the whole model wide).
std::shared_ptr<peft::models::PretrainedModel> benchmark_base(const Geometry& g, const Setup& setup, c10::Device device,
                                                              c10::ScalarType dtype) {
  if (setup.model_dir.empty())
    return peft::models::create_model_on(model_config(g), device, dtype, "causal_lm", setup.quantization());
  peft::models::LoadOptions load;
  load.dtype = dtype;
  load.device = device;
  load.task = "causal_lm";
  load.quantization = setup.quantization();
  return peft::models::load_pretrained(setup.model_dir, load);
}

/// Runs one method in this process and returns its measurements.
nlohmann::json measure(const std::string& method, Geometry g, const Setup& setup, int steps, int warmup,
                       const std::string& profile_dir) {
  const double rss_start = peft::core::resident_mib();
  const c10::Device device(setup.device);
  const auto dtype = peft::core::dtype_from_name(setup.dtype, "--dtype").value_or(torch::kFloat);
  torch::manual_seed(0);
  const auto t_load = std::chrono::steady_clock::now();
  const auto base = benchmark_base(g, setup, device, dtype);
  const double load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_load).count();
  const double rss_loaded = peft::core::peak_resident_mib();
  base->set_gradient_checkpointing(setup.checkpointing);
  std::unique_ptr<peft::PeftModel> peft_model;
  std::vector<std::pair<std::string, at::Tensor>> params;
  int64_t total = 0;
  const int64_t weight_bytes = bytes_of(base->parameters());
  for (auto& p : base->parameters()) total += p.numel();
  const auto quantized = peft::models::quantized_storage(*base);
  total += quantized.weights;
  double format_bits = 0;  // the format's arithmetic, layer by layer
  for (const auto& [name, lin] : base->adaptable_linears())
    if (const auto* q = lin->quantized_weight())
      format_bits += peft::nn::bits_per_weight(q->type, q->double_quant(), q->shape[0], q->shape[1], q->block_size) *
                     static_cast<double>(q->numel());
  if (method == "full") {
    PEFT_CHECK(!setup.quantization(), kC, "full fine-tuning trains the weights: it cannot run on a quantized base");
    for (auto& p : base->named_parameters()) {
      p.value().set_requires_grad(true);
      params.emplace_back(p.key(), p.value());
    }
  } else {
    peft_model = std::make_unique<peft::PeftModel>(base);
    peft_model->add_adapter("default", *peft::methods::parse_config(method_config(method, g.family)));
    for (auto& p : base->named_parameters())
      if (p.value().requires_grad()) params.emplace_back(p.key(), p.value());
  }
  int64_t trainable = 0;
  std::vector<at::Tensor> trained;
  for (auto& [n, p] : params) {
    trainable += p.numel();
    trained.push_back(p);
  }
  const int64_t delta_bytes = method == "full" ? 0 : bytes_of(trained);
  base->train();
  auto forward = [&](const peft::models::ModelInputs& in) {
    return peft_model ? peft_model->forward(in) : base->forward(in);
  };
  auto sync = [&] {
    if (device.is_cuda()) torch::cuda::synchronize();
  };
  peft::optim::AdamW opt(params, {1e-4, 0.9, 0.999, 1e-8, /*weight_decay=*/0.0});
  peft::models::ModelInputs batch;
  batch.input_ids = torch::randint(0, g.vocab, {g.batch, g.seq}, torch::kLong).to(device);
  batch.labels = batch.input_ids;
  const double rss_setup = peft::core::resident_mib();  // weights, delta, batch
  if (device.is_cuda()) peft::core::reset_cuda_peak_bytes(device.index() < 0 ? 0 : device.index());
  std::vector<double> times;
  std::unique_ptr<torch::autograd::profiler::RecordProfile> profile;
  for (int s = 0; s < warmup + steps; ++s) {
    if (s == warmup && !profile_dir.empty())  // the timed steps, as a chrome://tracing file
      profile = std::make_unique<torch::autograd::profiler::RecordProfile>(
          (std::filesystem::path(profile_dir) / (method + ".trace.json")).string());
    sync();
    const auto t0 = std::chrono::steady_clock::now();
    forward(batch).loss.backward();
    opt.step(1e-4);
    opt.zero_grad();
    sync();
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    if (s >= warmup) times.push_back(ms);
  }
  profile.reset();
  // DP-SGD on the same batch: each row's gradient clipped (C = 1), summed, noised (σ = 1), stepped;
  // batched per-sample gradients and the per-example loop, timed beside the ordinary step.
  nlohmann::json dp = nullptr;
  if (setup.dp) {
    const BatchRows rows(batch.input_ids);
    std::vector<int64_t> all(static_cast<size_t>(g.batch));
    std::iota(all.begin(), all.end(), 0);
    at::Generator noise = at::make_generator<at::CPUGeneratorImpl>(0);
    dp = nlohmann::json::object();
    for (const auto how : {peft::privacy::PerSampleMethod::kAuto, peft::privacy::PerSampleMethod::kLoop}) {
      peft::privacy::PrivateGradientOptions o;
      o.noise_multiplier = 1.0;
      o.expected_batch = static_cast<double>(g.batch);
      o.method = how;
      std::vector<double> dp_times;
      peft::privacy::PrivateGradient last;
      for (int s = 0; s < warmup + steps; ++s) {
        sync();
        const auto t0 = std::chrono::steady_clock::now();
        last = peft::privacy::private_gradient(forward, rows, all, trained, o, noise, device);
        opt.step(1e-4);
        opt.zero_grad();
        sync();
        const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
        if (s >= warmup) dp_times.push_back(ms);
      }
      if (how == peft::privacy::PerSampleMethod::kLoop) {
        dp["loop_step_ms"] = median(dp_times);
        dp["loop_vs_step"] = median(dp_times) / median(times);
      } else {
        dp["dp_step_ms"] = median(dp_times);
        dp["dp_vs_step"] = median(dp_times) / median(times);
        dp["per_sample_gradients"] = last.vectorized ? "batched" : "per-example loop";
        if (!last.fallback.empty()) dp["fallback"] = last.fallback;
      }
    }
    dp["batched_speedup"] = dp["loop_step_ms"].get<double>() / dp["dp_step_ms"].get<double>();
  }
  const double peak = peft::core::peak_resident_mib(), step_ms = median(times);
  const int64_t cuda_peak = device.is_cuda() ? peft::core::cuda_peak_bytes(device.index() < 0 ? 0 : device.index()) : -1;
  int64_t optimizer_bytes = 0;
  for (auto& [k, t] : opt.state_dict()) optimizer_bytes += static_cast<int64_t>(t.numel() * t.element_size());
  const int64_t grad_bytes = bytes_of(trained);  // zero_grad keeps the buffers (as torch does)

  // Inference (eval, no autograd): the base alone, with the delta, and with the delta merged.
  base->eval();
  nlohmann::json infer;
  {
    torch::NoGradGuard no_grad;
    peft::models::ModelInputs x;
    x.input_ids = batch.input_ids;
    auto timed = [&] {
      forward(x);
      sync();
    };
    infer["with_delta_ms"] = median_ms(timed, steps);
    if (peft_model) {
      peft_model->disable_adapters();
      infer["base_ms"] = median_ms(timed, steps);
      peft_model->enable_adapters();
      try {
        peft_model->merge_adapter();
        infer["merged_ms"] = median_ms(timed, steps);
        peft_model->unmerge_adapter();
      } catch (const peft::Error&) {
        infer["merged_ms"] = nullptr;  // not mergeable
      }
    }
  }
  // What a user ships: the delta directory, or the whole model for full fine-tuning.
  int64_t saved_bytes = -1;
  if (peft_model || setup.model_dir.empty()) {
    const auto dir = std::filesystem::temp_directory_path() / ("peft-bench-" + std::to_string(getpid()));
    if (peft_model) peft::checkpoint::save_adapter(*peft_model, dir.string());
    else peft::models::save_pretrained(*base, dir.string());
    saved_bytes = directory_bytes(dir.string());
    std::filesystem::remove_all(dir);
  }

  const double elt = static_cast<double>(c10::elementSize(dtype));
  const bool f32_delta_inputs = peft_model && method.rfind("lora", 0) == 0 && elt < 4;
  const double predicted_act = predicted_activation_bytes(g, elt, setup.checkpointing, f32_delta_inputs);
  // What the steps added beyond weights, delta and batch: optimizer state, gradients, activations.
  const double measured_act = (peak - rss_setup) - mib(static_cast<double>(optimizer_bytes + grad_bytes));
  const auto flops = step_flops(peft_model.get(), g);
  return {{"method", method},
          {"step_gflop", flops ? nlohmann::json(*flops / 1e9) : nlohmann::json(nullptr)},
          {"achieved_gflops", flops ? nlohmann::json(*flops / 1e9 / (step_ms / 1e3)) : nlohmann::json(nullptr)},
          {"saved_bytes", saved_bytes},
          {"inference", infer},
          {"trainable_params", trainable},
          {"total_params", total},
          {"step_ms", step_ms},
          {"dp", dp},
          {"tokens_per_s", 1000.0 * static_cast<double>(g.batch * g.seq) / step_ms},
          {"peak_rss_mib", peak},
          {"setup_mib", rss_setup - rss_start},
          {"training_mib", peak - rss_setup},
          {"memory_mib", peak - rss_start},
          {"load_s", load_s},
          {"load_peak_rss_mib", rss_loaded},
          {"cuda_peak_mib", cuda_peak >= 0 ? nlohmann::json(mib(static_cast<double>(cuda_peak))) : nlohmann::json(nullptr)},
          {"quantized_weights",
           quantized.layers == 0
               ? nlohmann::json(nullptr)
               : nlohmann::json{{"layers", quantized.layers},
                                {"formats", quantized.formats},
                                {"weights", quantized.weights},
                                {"bytes", quantized.bytes},
                                {"bits_per_weight", 8.0 * static_cast<double>(quantized.bytes) /
                                                        static_cast<double>(quantized.weights)},
                                {"format_bits_per_weight", format_bits / static_cast<double>(quantized.weights)}}},
          {"memory_breakdown_mib",
           {{"weights", mib(static_cast<double>(weight_bytes + quantized.bytes))},
            {"quantized_weights", mib(static_cast<double>(quantized.bytes))},
            {"wide_weights", mib(static_cast<double>(weight_bytes))},
            {"delta", mib(static_cast<double>(delta_bytes))},
            {"gradients", mib(static_cast<double>(grad_bytes))},
            {"optimizer_state", mib(static_cast<double>(optimizer_bytes))},
            {"activations_measured", measured_act},
            {"activations_predicted", mib(predicted_act)}}},
          {"threads", torch::get_num_threads()},
          {"setup", {{"model", setup.model_dir}, {"dtype", setup.dtype}, {"device", setup.device},
                     {"checkpointing", setup.checkpointing}, {"quant", setup.quant},
                     {"double_quant", setup.double_quant}}},
          {"geometry", {{"family", g.family}, {"layers", g.layers}, {"hidden", g.hidden}, {"heads", g.heads},
                        {"kv_heads", g.kv()}, {"intermediate", g.ffn()}, {"vocab", g.vocab}, {"seq", g.seq},
                        {"batch", g.batch}}}};
}

/// Generation instead of training: `g.generate` greedy tokens after `g.batch` random prompts of
/// `g.seq` tokens, with the key/value cache, without it (every step recomputes the context), and
/// with the delta merged (where it merges), each timed once after an untimed short run.
nlohmann::json measure_generation(const std::string& method, const Geometry& g, const Setup& setup) {
  PEFT_CHECK(method != "full", kC, "--generate: 'full' is a training setup; benchmark a method (or lora)");
  const c10::Device device(setup.device);
  const auto dtype = peft::core::dtype_from_name(setup.dtype, "--dtype").value_or(torch::kFloat);
  torch::manual_seed(0);
  const auto base = benchmark_base(g, setup, device, dtype);
  peft::PeftModel model(base);
  model.add_adapter("default", *peft::methods::parse_config(method_config(method, g.family)));
  std::vector<std::vector<int64_t>> prompts;
  for (int64_t b = 0; b < g.batch; ++b) {
    const at::Tensor ids = torch::randint(0, g.vocab, {g.seq}, torch::kLong);
    prompts.emplace_back(ids.data_ptr<int64_t>(), ids.data_ptr<int64_t>() + g.seq);
  }
  auto tokens_per_s = [&](bool cached) {
    peft::GenerationConfig c;
    c.use_cache = cached;
    c.max_new_tokens = std::min<int64_t>(g.generate, 4);
    peft::generate_batch(model, prompts, c);  // untimed: first-call allocations
    c.max_new_tokens = g.generate;
    if (device.is_cuda()) torch::cuda::synchronize();
    const auto t0 = std::chrono::steady_clock::now();
    const auto out = peft::generate_batch(model, prompts, c);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    int64_t n = 0;
    for (const auto& r : out) n += static_cast<int64_t>(r.tokens.size());
    return static_cast<double>(n) / s;
  };
  const double cached = tokens_per_s(true), uncached = tokens_per_s(false);
  nlohmann::json merged = nullptr;
  try {
    model.merge_adapter();
    merged = tokens_per_s(true);
    model.unmerge_adapter();
  } catch (const peft::Error&) {
    // not mergeable
  }
  const auto geo = base->geometry();
  const double cache_bytes = 2.0 * static_cast<double>(geo.num_layers * g.batch * geo.num_kv_heads * geo.head_dim) *
                             static_cast<double>(g.seq + g.generate) * static_cast<double>(c10::elementSize(dtype));
  return {{"method", method},
          {"generate", g.generate},
          {"prompt_tokens", g.seq},
          {"batch", g.batch},
          {"cached_tokens_per_s", cached},
          {"uncached_tokens_per_s", uncached},
          {"cache_speedup", cached / uncached},
          {"merged_cached_tokens_per_s", merged},
          {"kv_cache_mib", mib(cache_bytes)},
          {"threads", torch::get_num_threads()},
          {"setup", {{"model", setup.model_dir}, {"dtype", setup.dtype}, {"device", setup.device}, {"quant", setup.quant}}},
          {"geometry", {{"family", g.family}, {"layers", g.layers}, {"hidden", g.hidden}, {"heads", g.heads},
                        {"kv_heads", g.kv()}, {"intermediate", g.ffn()}, {"vocab", g.vocab}}}};
}

/// Serving many deltas: `g.batch` rows spread round-robin over `adapters` deltas of `method`, run
/// as one mixed-adapter batch, as one batch per delta (switching between them), and as one merged
/// delta for every row (the base's cost); forward throughput over `steps` timed runs, and with
/// --generate the same three ways of decoding.
nlohmann::json measure_mixed(const std::string& method, const Geometry& g, const Setup& setup, int steps,
                             int64_t adapters) {
  PEFT_CHECK(method != "full", kC, "--adapters: benchmark a method (e.g. lora), not full fine-tuning");
  PEFT_CHECK(g.batch >= adapters, kC, "--adapters {} needs --batch >= {} (a row per delta at least)", adapters, adapters);
  const c10::Device device(setup.device);
  const auto dtype = peft::core::dtype_from_name(setup.dtype, "--dtype").value_or(torch::kFloat);
  torch::manual_seed(0);
  peft::PeftModel model(benchmark_base(g, setup, device, dtype));
  std::vector<std::string> names, delta_names;
  for (int64_t a = 0; a < adapters; ++a) {
    delta_names.push_back(fmt::format("d{}", a));
    model.add_adapter(delta_names.back(), *peft::methods::parse_config(method_config(method, g.family)));
  }
  model.eval();
  torch::NoGradGuard no_grad;
  const at::Tensor ids = torch::randint(0, g.vocab, {g.batch, g.seq}, torch::kLong);
  std::vector<std::vector<int64_t>> rows_of(static_cast<size_t>(adapters));
  for (int64_t b = 0; b < g.batch; ++b) {
    names.push_back(delta_names[static_cast<size_t>(b % adapters)]);
    rows_of[static_cast<size_t>(b % adapters)].push_back(b);
  }
  auto inputs = [&](const at::Tensor& rows) {
    peft::models::ModelInputs in;
    in.input_ids = rows.to(device);
    return in;
  };
  auto sync = [&] {
    if (device.is_cuda()) torch::cuda::synchronize();
  };
  const auto all = inputs(ids);
  const double mixed_ms = median_ms([&] { model.forward(all, names); sync(); }, steps);
  const double sequential_ms = median_ms([&] {
    for (int64_t a = 0; a < adapters; ++a) {
      model.set_adapter(delta_names[static_cast<size_t>(a)]);
      model.forward(inputs(ids.index_select(0, torch::tensor(rows_of[static_cast<size_t>(a)], torch::kLong))));
    }
    sync();
  }, steps);
  model.set_adapter(delta_names.front());
  const double single_ms = median_ms([&] { model.forward(all); sync(); }, steps);
  nlohmann::json merged_ms = nullptr;
  try {
    model.merge_adapter();
    merged_ms = median_ms([&] { model.forward(all); sync(); }, steps);
    model.unmerge_adapter();
  } catch (const peft::Error&) {
    // not mergeable
  }
  const double tokens = static_cast<double>(g.batch * g.seq);
  auto per_s = [&](double ms) { return tokens / (ms / 1000.0); };
  nlohmann::json out = {
      {"method", method},
      {"adapters", adapters},
      {"batch", g.batch},
      {"seq", g.seq},
      {"mixed_tokens_per_s", per_s(mixed_ms)},
      {"sequential_tokens_per_s", per_s(sequential_ms)},
      {"single_unmerged_tokens_per_s", per_s(single_ms)},
      {"merged_tokens_per_s", merged_ms.is_number() ? nlohmann::json(per_s(merged_ms.get<double>())) : nlohmann::json()},
      {"mixed_vs_sequential", sequential_ms / mixed_ms},
      {"mixed_vs_merged", merged_ms.is_number() ? nlohmann::json(merged_ms.get<double>() / mixed_ms) : nlohmann::json()},
      {"threads", torch::get_num_threads()},
      {"setup", {{"model", setup.model_dir}, {"dtype", setup.dtype}, {"device", setup.device}, {"quant", setup.quant}}},
      {"geometry", {{"family", g.family}, {"layers", g.layers}, {"hidden", g.hidden}, {"heads", g.heads}, {"vocab", g.vocab}}}};
  if (g.generate > 0) {
    std::vector<std::vector<int64_t>> prompts;
    for (int64_t b = 0; b < g.batch; ++b) {
      const at::Tensor row = ids[b].contiguous();
      prompts.emplace_back(row.data_ptr<int64_t>(), row.data_ptr<int64_t>() + g.seq);
    }
    auto timed = [&](const std::function<int64_t()>& f) {
      sync();
      const auto t0 = std::chrono::steady_clock::now();
      const int64_t n = f();
      return static_cast<double>(n) / std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    };
    auto count = [](const std::vector<peft::GenerationResult>& r) {
      int64_t n = 0;
      for (const auto& x : r) n += static_cast<int64_t>(x.tokens.size());
      return n;
    };
    peft::GenerationConfig c;
    c.max_new_tokens = g.generate;
    peft::GenerationConfig mixed = c;
    mixed.adapter_names = names;
    out["generate"] = g.generate;
    out["mixed_generate_tokens_per_s"] = timed([&] { return count(peft::generate_batch(model, prompts, mixed)); });
    out["sequential_generate_tokens_per_s"] = timed([&] {
      int64_t n = 0;
      for (int64_t a = 0; a < adapters; ++a) {
        model.set_adapter(delta_names[static_cast<size_t>(a)]);
        std::vector<std::vector<int64_t>> mine;
        for (int64_t b : rows_of[static_cast<size_t>(a)]) mine.push_back(prompts[static_cast<size_t>(b)]);
        n += count(peft::generate_batch(model, mine, c));
      }
      return n;
    });
    if (merged_ms.is_number()) {
      model.set_adapter(delta_names.front());
      model.merge_adapter();
      out["merged_generate_tokens_per_s"] = timed([&] { return count(peft::generate_batch(model, prompts, c)); });
      model.unmerge_adapter();
    }
  }
  return out;
}

/// The mixed-adapter runs side by side on stderr.
void print_mixed_table(const std::vector<nlohmann::json>& rows) {
  auto num = [](const nlohmann::json& v) { return v.is_number() ? fmt::format("{:.0f}", v.get<double>()) : std::string("-"); };
  fmt::print(stderr, "\n{:<10} {:>8} {:>6} {:>12} {:>14} {:>12} {:>10} {:>10}\n", "method", "adapters", "rows",
             "mixed tok/s", "sequential", "merged", "vs seq", "vs merged");
  for (const auto& r : rows)
    fmt::print(stderr, "{:<10} {:>8} {:>6} {:>12} {:>14} {:>12} {:>9.2f}x {:>10}\n", r["method"].get<std::string>(),
               r["adapters"].get<int64_t>(), r["batch"].get<int64_t>(), num(r["mixed_tokens_per_s"]),
               num(r["sequential_tokens_per_s"]), num(r["merged_tokens_per_s"]), r["mixed_vs_sequential"].get<double>(),
               r["mixed_vs_merged"].is_number() ? fmt::format("{:.2f}x", r["mixed_vs_merged"].get<double>()) : "-");
  for (const auto& r : rows)
    if (r.contains("mixed_generate_tokens_per_s"))
      fmt::print(stderr, "{} generation ({} tokens): mixed {} tok/s, sequential {}, merged {}\n",
                 r["method"].get<std::string>(), r["generate"].get<int64_t>(), num(r["mixed_generate_tokens_per_s"]),
                 num(r["sequential_generate_tokens_per_s"]), num(r["merged_generate_tokens_per_s"]));
}

/// Runs `args` as a child process and returns its stdout.
std::string run_child(const std::vector<std::string>& args) {
  int out[2];
  PEFT_CHECK(pipe(out) == 0, kC, "cannot create a pipe for the child process");
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, out[1], STDOUT_FILENO);
  posix_spawn_file_actions_addclose(&actions, out[0]);
  std::vector<char*> argv;
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  pid_t pid = 0;
  const int rc = posix_spawn(&pid, "/proc/self/exe", &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  close(out[1]);
  PEFT_CHECK(rc == 0, kC, "cannot start the child process for {} (error {})", args.back(), rc);
  std::string text;
  char buf[4096];
  for (ssize_t n; (n = read(out[0], buf, sizeof buf)) > 0;) text.append(buf, static_cast<size_t>(n));
  close(out[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  PEFT_CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, kC, "the benchmark of '{}' failed (see its error above)",
             args.back());
  return text;
}

/// The generation runs side by side on stderr.
void print_generation_table(const std::vector<nlohmann::json>& rows) {
  fmt::print(stderr, "\n{:<14} {:>7} {:>8} {:>12} {:>14} {:>9} {:>14} {:>10}\n", "method", "storage", "tokens",
             "cached tok/s", "uncached tok/s", "speedup", "merged tok/s", "cache MiB");
  for (const auto& r : rows)
    fmt::print(stderr, "{:<14} {:>7} {:>8} {:>12.1f} {:>14.1f} {:>8.1f}x {:>14} {:>10.1f}\n", r["method"].get<std::string>(),
               r["setup"]["quant"].get<std::string>(), r["generate"].get<int64_t>(),
               r["cached_tokens_per_s"].get<double>(), r["uncached_tokens_per_s"].get<double>(),
               r["cache_speedup"].get<double>(),
               r["merged_cached_tokens_per_s"].is_number() ? fmt::format("{:.1f}", r["merged_cached_tokens_per_s"].get<double>()) : "-",
               r["kv_cache_mib"].get<double>());
}

/// The training runs side by side on stderr.
void print_training_table(const std::vector<nlohmann::json>& rows) {
  const nlohmann::json* full = nullptr;
  for (const auto& r : rows)
    if (r.value("method", "") == "full") full = &r;
  // The same method on the wide base of this run: what a storage saves and costs.
  auto wide_row = [&](const nlohmann::json& r) -> const nlohmann::json* {
    for (const auto& w : rows)
      if (w.value("method", "") == r["method"] && w["setup"]["quant"] == "none") return &w;
    return nullptr;
  };
  fmt::print(stderr, "\n{:<14} {:>7} {:>12} {:>10} {:>10} {:>12} {:>12} {:>12} {:>9} {:>9} {:>9} {:>9}\n", "method",
             "storage", "trainable", "step ms", "tokens/s", "memory MiB", "vs full FT", "saved bytes", "GFLOP/s",
             "base ms", "merged", "vs wide");
  for (const auto& r : rows) {
    if (!r.contains("method")) {
      fmt::print(stderr, "float32 GEMM: {:.1f} GFLOP/s\n", r["gemm_gflops"].get<double>());
      continue;
    }
    const double mem = r["memory_mib"].get<double>();
    const std::string saving =
        full ? fmt::format("{:+.1f} %", 100.0 * (mem / (*full)["memory_mib"].get<double>() - 1.0)) : "";
    const auto& inf = r["inference"];
    const auto number = [](const nlohmann::json& v, const char* f) {
      return v.is_number() ? fmt::format(fmt::runtime(f), v.get<double>()) : std::string("-");
    };
    const auto* wide = wide_row(r);
    const std::string vs_wide =
        wide && wide != &r ? fmt::format("{:.2f}x mem {:.2f}x step", r["peak_rss_mib"].get<double>() /
                                                                       (*wide)["peak_rss_mib"].get<double>(),
                                         r["step_ms"].get<double>() / (*wide)["step_ms"].get<double>())
                           : std::string("-");
    fmt::print(stderr, "{:<14} {:>7} {:>12} {:>10.1f} {:>10.0f} {:>12.1f} {:>12} {:>12} {:>9} {:>9} {:>9} {}\n",
               r["method"].get<std::string>(), r["setup"]["quant"].get<std::string>(),
               r["trainable_params"].get<int64_t>(), r["step_ms"].get<double>(), r["tokens_per_s"].get<double>(), mem,
               saving, r["saved_bytes"].get<int64_t>(), number(r["achieved_gflops"], "{:.1f}"),
               number(inf.value("base_ms", nlohmann::json()), "{:.1f}"),
               inf.contains("merged_ms") && inf["merged_ms"].is_number() && inf.contains("base_ms")
                   ? fmt::format("{:.3f}x", inf["merged_ms"].get<double>() / inf["base_ms"].get<double>())
                   : std::string("-"),
               vs_wide);
  }
}

int run(int argc, char** argv) {
  CLI::App app{"Benchmark a training step of each PEFT method side by side (JSON lines out).", "peft-bench"};
  Geometry g;
  std::string methods = "full,lora,adapter,lst", child, json_path, profile_dir;
  int steps = 5, warmup = 1, threads = 0;
  Setup setup;
  app.add_option("--family", g.family, "gpt2 or llama (a model drawn at random)");
  app.add_option("--model", setup.model_dir, "benchmark this model directory instead (its config.json gives the geometry)");
  app.add_option("--dtype", setup.dtype, "the frozen base's dtype: float32, bfloat16 or float16");
  app.add_option("--device", setup.device, "cpu or cuda");
  app.add_flag("--checkpointing", setup.checkpointing, "activation checkpointing of every block");
  app.add_flag("--dp", setup.dp, "also time a DP-SGD step on the same batch (per-example clipping and noise)");
  std::string quants = "none";
  app.add_option("--quant", quants,
                 "comma-separated storages of the frozen linears, each run side by side: none | int8 | nf4 | fp4 "
                 "(they compute in --dtype)");
  app.add_flag("--double-quant", setup.double_quant, "nf4 / fp4: quantize the absmax values too (4.127 bits per weight)");
  app.add_option("--kv-heads", g.kv_heads, "llama: key/value heads (grouped-query attention; default: --heads)");
  app.add_option("--intermediate", g.intermediate, "feed-forward width (default: the family's)");
  app.add_option("--layers", g.layers, "transformer blocks");
  app.add_option("--hidden", g.hidden, "hidden size");
  app.add_option("--heads", g.heads, "attention heads");
  app.add_option("--vocab", g.vocab, "vocabulary size");
  app.add_option("--seq", g.seq, "sequence length");
  app.add_option("--batch", g.batch, "batch size");
  app.add_option("--generate", g.generate,
                 "benchmark generation instead: this many greedy tokens after --batch prompts of --seq tokens, with "
                 "and without the key/value cache, and merged");
  app.add_option("--methods", methods, "comma-separated: full and method presets");
  int64_t adapters = 0;
  app.add_option("--adapters", adapters,
                 "serve this many deltas of each method in one mixed-adapter batch of --batch rows, against one batch "
                 "per delta and one merged delta (forward throughput; with --generate, decoding too)");
  app.add_option("--steps", steps, "timed steps per method");
  app.add_option("--warmup", warmup, "untimed steps first");
  app.add_option("--threads", threads, "CPU threads (default: all cores)");
  app.add_option("--json", json_path, "also write the JSON lines to this file");
  app.add_option("--profile", profile_dir, "write each method's timed steps as <dir>/<method>.trace.json (chrome://tracing)");
  bool gemm = false;
  app.add_flag("--gemm", gemm, "also measure the float32 GEMM rate at the model's feed-forward shape");
  app.add_option("--child", child, "(internal) measure one method in this process")->group("");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  PEFT_CHECK(steps >= 1 && warmup >= 0, kC, "--steps must be >= 1 and --warmup >= 0, found {} and {}", steps, warmup);
  const int used_threads = peft::core::configure_threads(threads);
  peft::core::dtype_from_name(setup.dtype, "--dtype");  // a bad name fails before any run
  if (!setup.model_dir.empty()) g = geometry_of(setup.model_dir, g);
  std::vector<std::string> storages;
  std::stringstream quant_list(quants);
  for (std::string q; std::getline(quant_list, q, ',');) {
    Setup probe = setup;
    probe.quant = q;
    probe.quantization();  // a bad name fails before any run
    storages.push_back(q);
  }
  PEFT_CHECK(!storages.empty(), kC, "--quant: expected at least one of none, int8, nf4, fp4");
  if (!child.empty()) {
    PEFT_CHECK(storages.size() == 1, kC, "(internal) a child measures one storage");
    setup.quant = storages.front();
    fmt::print("{}\n", (adapters > 0       ? measure_mixed(child, g, setup, steps, adapters)
                         : g.generate > 0 ? measure_generation(child, g, setup)
                                          : measure(child, g, setup, steps, warmup, profile_dir))
                            .dump());
    return 0;
  }
  std::vector<nlohmann::json> rows;
  if (gemm) {
    rows.push_back({{"gemm_gflops", gemm_gflops(g, std::max(steps, 5))}, {"threads", used_threads}});
    fmt::print("{}\n", rows.back().dump());
  }
  std::vector<std::string> names;
  std::stringstream list(methods);
  for (std::string m; std::getline(list, m, ',');) {
    if (m != "full") method_config(m, g.family);  // unknown names fail before any run
    names.push_back(m);
  }
  std::vector<std::pair<std::string, std::string>> runs;  // (storage, method)
  for (const auto& storage : storages)
    for (const auto& m : names)
      if (m != "full" || (storage == "none" && g.generate == 0 && adapters == 0)) runs.emplace_back(storage, m);  // full FT trains the weights themselves
  for (const auto& [storage, m] : runs) {
    std::vector<std::string> args = {argv[0]};
    for (auto [flag, value] : std::vector<std::pair<std::string, int64_t>>{
             {"--layers", g.layers}, {"--hidden", g.hidden}, {"--heads", g.heads}, {"--vocab", g.vocab},
             {"--seq", g.seq}, {"--batch", g.batch}, {"--steps", steps}, {"--warmup", warmup}, {"--threads", used_threads},
             {"--kv-heads", g.kv_heads}, {"--intermediate", g.intermediate}, {"--generate", g.generate},
             {"--adapters", adapters}})
      args.insert(args.end(), {flag, std::to_string(value)});
    args.insert(args.end(), {"--family", g.family, "--dtype", setup.dtype, "--device", setup.device});
    if (!setup.model_dir.empty()) args.insert(args.end(), {"--model", setup.model_dir});
    if (setup.checkpointing) args.push_back("--checkpointing");
    if (setup.dp) args.push_back("--dp");
    args.insert(args.end(), {"--quant", storage});
    if (setup.double_quant) args.push_back("--double-quant");
    if (!profile_dir.empty()) args.insert(args.end(), {"--profile", profile_dir});
    args.insert(args.end(), {"--child", m});
    rows.push_back(nlohmann::json::parse(run_child(args)));
    if (gemm && rows.back()["achieved_gflops"].is_number())
      rows.back()["gemm_fraction"] = rows.back()["achieved_gflops"].get<double>() / rows.front()["gemm_gflops"].get<double>();
    fmt::print("{}\n", rows.back().dump());
    std::fflush(stdout);
  }
  if (adapters > 0) print_mixed_table(rows);
  else if (g.generate > 0) print_generation_table(rows);
  else print_training_table(rows);
  if (!json_path.empty()) {
    std::string text;
    for (const auto& r : rows) text += r.dump() + "\n";
    peft::core::write_file_atomic(json_path, text);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  peft::core::prepare_process(argv);
  return peft::core::run_main("peft-bench", [&] { return run(argc, argv); });
}
