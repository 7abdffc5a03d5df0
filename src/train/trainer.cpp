#include "peft/train/trainer.h"

#include "core/generator_state.h"
#include "core/torch_compat.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cmath>
#include <filesystem>
#include <fstream>

#include <torch/torch.h>

#include "peft/core/atomic_file.h"
#include "peft/core/error.h"
#include "peft/core/process.h"
#include "peft/core/json_io.h"
#include "peft/core/log.h"
#include "peft/core/safetensors.h"
#include "peft/optim/adamw.h"
#include "peft/optim/grad_scaler.h"
#include "peft/optim/schedule.h"
#include "peft/train/distributed.h"
#include "peft/privacy/rdp_accountant.h"
#include "peft/privacy/private_gradient.h"

#include <ATen/CPUGeneratorImpl.h>
#include <random>

namespace peft::train {
namespace fs = std::filesystem;
namespace {

constexpr const char* kC = "train";
std::atomic<bool> g_interrupted{false};
extern "C" void on_sigint(int) { g_interrupted = true; }

/// Installs the SIGINT flag for the duration of a training call.
class SigintScope {
 public:
  SigintScope() {
    g_interrupted = false;
    previous_ = std::signal(SIGINT, on_sigint);
  }
  ~SigintScope() { std::signal(SIGINT, previous_); }

 private:
  void (*previous_)(int);
};

std::string duration(double seconds) {
  const auto s = static_cast<int64_t>(seconds);
  return s >= 3600 ? fmt::format("{}h{:02}m", s / 3600, s / 60 % 60) : fmt::format("{}m{:02}s", s / 60, s % 60);
}

/// Autocast on one device type for a scope (nothing when dtype is unset); restores what it found.
class AutocastScope {
 public:
  AutocastScope(c10::DeviceType device, std::optional<c10::ScalarType> dtype) : device_(device), active_(dtype.has_value()) {
    if (!active_) return;
    was_enabled_ = core::autocast_enabled(device_);
    was_dtype_ = core::autocast_dtype(device_);
    core::set_autocast(device_, true, *dtype);
  }
  ~AutocastScope() {
    if (!active_) return;
    core::set_autocast(device_, was_enabled_, was_dtype_);
    core::clear_autocast_cache();
  }
  AutocastScope(const AutocastScope&) = delete;
  AutocastScope& operator=(const AutocastScope&) = delete;

 private:
  c10::DeviceType device_;
  bool active_;
  bool was_enabled_ = false;
  c10::ScalarType was_dtype_ = c10::kFloat;
};

const std::vector<std::string>& run_outputs() {
  static const std::vector<std::string> names = {"state", "best", "final", "log.jsonl"};
  return names;
}

}  // namespace

void prepare_output_dir(const TrainerConfig& c, bool resuming) {
  if (c.output_dir.empty() || resuming) return;
  std::vector<std::string> found;
  for (const auto& name : run_outputs())
    if (fs::exists(fs::path(c.output_dir) / name)) found.push_back(name);
  if (found.empty()) return;
  PEFT_CHECK(c.overwrite, kC,
             "output_dir {} holds an earlier run ({}); continue it with --resume, replace it with --overwrite "
             "(trainer.overwrite), or choose another output_dir",
             c.output_dir, fmt::join(found, ", "));
  for (const auto& name : found) fs::remove_all(fs::path(c.output_dir) / name);
  log::info("overwrite: removed the earlier run's {} from {}", fmt::join(found, ", "), c.output_dir);
}

struct Trainer::Impl {
  Trainable target;
  TrainerConfig config;
  std::shared_ptr<const data::Dataset> train, eval, test;
  std::vector<std::pair<std::string, at::Tensor>> params;
  // With a test set: the tensors of the best evaluation (parameters, then buffers), kept to be
  // scored on it at the end; in the training state as best.safetensors.
  safetensors::TensorMap best_tensors;
  int64_t best_step = 0;
  std::unique_ptr<optim::AdamW> opt;
  std::unique_ptr<optim::GradScaler> scaler;  // loss scaling, when on
  std::optional<c10::ScalarType> autocast;     // the forward's autocast dtype, when on
  std::unique_ptr<data::Sampler> sampler;
  int64_t step = 0;
  bool resumed = false;
  std::optional<double> best;  // best value of the selection metric (higher is better)
  int64_t bad_evals = 0;
  int64_t nonfinite = 0;
  std::string metric;

  // DP-SGD (config.privacy): the noise multiplier, the sample rate, and the accountant.
  double dp_sigma = 0, dp_rate = 0;
  privacy::PerSampleMethod dp_method = privacy::PerSampleMethod::kAuto;  // kLoop once a batched pass fell back
  std::unique_ptr<privacy::RdpAccountant> accountant;
  std::optional<double> epsilon() const {
    if (!accountant) return std::nullopt;
    return accountant->spent(config.privacy->delta).epsilon;
  }
  /// The step's sampling and noise randomness: from noise_seed and the step (reproducible, and
  /// resumable without saved state), else from the operating system's entropy.
  uint64_t dp_seed(uint64_t stream) const {
    if (!config.privacy->noise_seed) return (static_cast<uint64_t>(std::random_device{}()) << 32) ^ std::random_device{}();
    std::seed_seq seq{*config.privacy->noise_seed, static_cast<uint64_t>(step), stream};
    uint64_t out[2];
    seq.generate(out, out + 2);
    return out[0];
  }
  /// Writes what a private delta's guarantee is beside it.
  void write_privacy(const std::string& dir) const {
    if (!accountant) return;
    const auto spent = accountant->spent(config.privacy->delta);
    nlohmann::json j = {{"mechanism", "DP-SGD (per-example clipping, Gaussian noise)"},
                        {"accountant", "RDP of the subsampled Gaussian, Balle et al. 2020 conversion"},
                        {"epsilon", spent.epsilon}, {"delta", config.privacy->delta}, {"rdp_order", spent.order},
                        {"noise_multiplier", dp_sigma}, {"sample_rate", dp_rate}, {"steps", accountant->steps()},
                        {"max_grad_norm", config.privacy->max_grad_norm}, {"sampling", config.privacy->sampling}};
    core::write_file_atomic(dir + "/privacy.json", j.dump(2) + "\n");
  }

  DistributedContext* dist() const { return config.distributed.get(); }
  /// Rank 0 (or the only process) writes output_dir.
  bool writes() const { return !config.output_dir.empty() && (!dist() || dist()->is_main()); }
  /// This rank's slice of a global batch.
  std::vector<int64_t> my_slice(std::vector<int64_t> global) const {
    if (!dist()) return global;
    const auto per = static_cast<int64_t>(global.size()) / dist()->world_size();
    return {global.begin() + per * dist()->rank(), global.begin() + per * (dist()->rank() + 1)};
  }

  models::ModelOutput forward(const models::ModelInputs& inputs) const {
    AutocastScope scope(config.device.type(), autocast);
    return target.forward(inputs);
  }

  double score(const EvalResult& r) const {
    if (metric == "accuracy") return r.accuracy;
    if (metric == "macro_f1") return r.macro_f1;
    return -r.loss;
  }

  /// Every tensor of the delta (parameters, then buffers) under "param/…" and "buffer/…".
  std::vector<std::pair<std::string, at::Tensor>> tracked() const {
    std::vector<std::pair<std::string, at::Tensor>> all;
    for (const auto& [name, p] : params) all.emplace_back("param/" + name, p);
    if (target.buffers)
      for (const auto& [name, b] : target.buffers()) all.emplace_back("buffer/" + name, b);
    return all;
  }
  void keep_best() {
    best_tensors.clear();
    for (const auto& [name, t] : tracked()) best_tensors[name] = t.detach().cpu().clone();
    best_step = step;
  }

  void log_line(const std::string& json) const {
    if (!writes()) return;
    std::ofstream out(config.output_dir + "/log.jsonl", std::ios::app);
    out << json << "\n";
  }
};

Trainer::Trainer(Trainable target, TrainerConfig config, std::shared_ptr<const data::Dataset> train,
                 std::shared_ptr<const data::Dataset> eval, std::shared_ptr<const data::Dataset> test)
    : impl_(std::make_unique<Impl>()) {
  auto& m = *impl_;
  m.target = std::move(target);
  m.config = std::move(config);
  m.train = std::move(train);
  m.eval = std::move(eval);
  m.test = std::move(test);
  const auto& c = m.config;
  PEFT_CHECK(m.train, kC, "no training data");
  PEFT_CHECK(c.max_steps > 0 && c.batch_size > 0 && c.grad_accum > 0, kC,
             "max_steps, batch_size and grad_accum must be positive (found {}, {}, {})", c.max_steps, c.batch_size,
             c.grad_accum);
  PEFT_CHECK(c.lr > 0 && std::isfinite(c.lr), kC, "lr must be positive, found {}", c.lr);
  PEFT_CHECK(c.warmup_steps >= 0 && c.warmup_steps <= c.max_steps, kC, "warmup_steps must be in [0, max_steps], found {}",
             c.warmup_steps);
  optim::schedule_factor(c.schedule, 0, c.warmup_steps, c.max_steps);  // validates the name
  const bool classifier = !m.train->labels().empty();
  m.metric = c.metric.empty() ? (classifier ? "accuracy" : "loss") : c.metric;
  PEFT_CHECK(m.metric == "loss" || (classifier && (m.metric == "accuracy" || m.metric == "macro_f1")), kC,
             "metric '{}' does not apply here (use loss{})", m.metric, classifier ? ", accuracy or macro_f1" : "");
  torch::manual_seed(c.seed);
  m.params = m.target.parameters();
  optim::AdamWOptions o;
  o.lr = c.lr;
  o.beta1 = c.beta1;
  o.beta2 = c.beta2;
  o.eps = c.eps;
  o.weight_decay = c.weight_decay;
  for (const auto& r : c.no_decay)
    PEFT_CHECK(std::find(optim::parameter_roles().begin(), optim::parameter_roles().end(), r) != optim::parameter_roles().end(),
               kC, "no_decay: unknown role '{}' (roles: {})", r, fmt::join(optim::parameter_roles(), ", "));
  o.decays = [role = m.target.role, exempt = c.no_decay](const std::string& name, const at::Tensor& p) {
    const std::string r = role ? role(name, p) : optim::default_parameter_role(name, p);
    return std::find(exempt.begin(), exempt.end(), r) == exempt.end();
  };
  m.opt = std::make_unique<optim::AdamW>(m.params, o);
  PEFT_CHECK(c.mixed_precision == "no" || c.mixed_precision == "bf16" || c.mixed_precision == "fp16", kC,
             "mixed_precision must be \"no\", \"bf16\" or \"fp16\", found '{}'", c.mixed_precision);
  PEFT_CHECK(c.mixed_precision != "fp16" || c.device.is_cuda(), kC,
             "mixed_precision \"fp16\" autocasts on CUDA only (device is {}); use \"bf16\" on CPU", c.device.str());
  PEFT_CHECK(c.mixed_precision == "no" || c.device.is_cpu() || c.device.is_cuda(), kC,
             "mixed_precision needs a CPU or CUDA device, found {}", c.device.str());
  if (c.mixed_precision != "no") m.autocast = c.mixed_precision == "bf16" ? c10::kBFloat16 : c10::kHalf;
  PEFT_CHECK(c.loss_scaling == "auto" || c.loss_scaling == "dynamic" || c.loss_scaling == "none", kC,
             "loss_scaling must be \"auto\", \"dynamic\" or \"none\", found '{}'", c.loss_scaling);
  if (c.loss_scaling == "dynamic" || (c.loss_scaling == "auto" && c.mixed_precision == "fp16")) {
    optim::GradScalerOptions so;
    so.init_scale = c.loss_scale_init;
    so.growth_interval = c.loss_scale_growth_interval;
    m.scaler = std::make_unique<optim::GradScaler>(so);
  }
  m.sampler = std::make_unique<data::Sampler>(m.train->size(), c.seed, /*shuffle=*/true);
  if (m.writes()) fs::create_directories(c.output_dir);
  if (c.privacy) {
    const auto& p = *c.privacy;
    PEFT_CHECK(c.grad_accum == 1, kC, "privacy: grad_accum must be 1 (accumulated batches are not the Poisson sample the "
               "accountant assumes); raise batch_size instead");
    PEFT_CHECK(!c.distributed, kC, "privacy: DP-SGD does not run data-parallel yet (one process)");
    PEFT_CHECK(!m.scaler && c.mixed_precision != "fp16", kC, "privacy: loss scaling (fp16) is not supported with DP-SGD");
    PEFT_CHECK(p.max_grad_norm > 0 && std::isfinite(p.max_grad_norm), kC, "privacy.max_grad_norm must be > 0, found {}",
               p.max_grad_norm);
    PEFT_CHECK(p.delta > 0 && p.delta < 1, kC, "privacy.delta must be in (0, 1), found {}", p.delta);
    PEFT_CHECK(p.noise_multiplier.has_value() != p.target_epsilon.has_value(), kC,
               "privacy: give noise_multiplier or target_epsilon (one of them)");
    PEFT_CHECK(p.sampling == "poisson" || p.sampling == "shuffle", kC, "privacy.sampling must be poisson or shuffle, found '{}'",
               p.sampling);
    m.dp_rate = static_cast<double>(c.batch_size) / static_cast<double>(m.train->size());
    PEFT_CHECK(m.dp_rate <= 1, kC, "privacy: batch_size {} exceeds the {} training examples", c.batch_size, m.train->size());
    if (p.noise_multiplier) {
      PEFT_CHECK(*p.noise_multiplier >= 0, kC, "privacy.noise_multiplier must be >= 0, found {}", *p.noise_multiplier);
      m.dp_sigma = *p.noise_multiplier;
    } else {
      m.dp_sigma = privacy::noise_multiplier_for(*p.target_epsilon, p.delta, m.dp_rate, c.max_steps);
    }
    m.accountant = std::make_unique<privacy::RdpAccountant>();
    log::info("DP-SGD: noise multiplier {:.4f}{}, sample rate {:.5f} ({} of {} examples expected per batch, {} sampling), "
              "clipping norm {}, delta {}; per-sample gradients: {}",
              m.dp_sigma, p.target_epsilon ? fmt::format(" (for epsilon {} after {} steps)", *p.target_epsilon, c.max_steps) : "",
              m.dp_rate, c.batch_size, m.train->size(), p.sampling, p.max_grad_norm, p.delta,
              p.per_sample_gradients == "loop" ? "a loop over each batch's examples"
                                               : "batched (" + p.per_sample_gradients + ")");
    m.dp_method = privacy::per_sample_method_from_string(p.per_sample_gradients, "privacy");
    if (p.sampling == "shuffle")
      log::warn("privacy.sampling shuffle: epsilon is computed as for Poisson sampling at the same rate (as Opacus and "
                "TF Privacy report it); only poisson sampling matches the accountant's assumption");
    if (!p.noise_seed)
      log::info("DP-SGD: sampling and noise come from the system's entropy (set privacy.noise_seed only for reproducible tests)");
  }
  if (auto* d = m.dist()) {
    PEFT_CHECK(c.batch_size % d->world_size() == 0, kC,
               "batch_size {} (the global batch) must divide by the world size {}: each rank takes an equal slice",
               c.batch_size, d->world_size());
    // Every rank starts from rank 0's delta (random initialisations agree by seed, but need not).
    std::vector<at::Tensor> start;
    for (const auto& [name, t] : m.tracked()) start.push_back(t);
    d->broadcast(start);
  }
}

Trainer::~Trainer() = default;

int64_t Trainer::step() const { return impl_->step; }

void Trainer::save_state(const std::string& dir) const {
  const auto& m = *impl_;
  if (m.dist() && !m.dist()->is_main()) return;  // rank 0 writes; every rank holds the same state
  core::write_directory_atomic(dir, [&](const std::string& staging) {
    safetensors::TensorMap params;
    for (const auto& [name, p] : m.params) params[name] = p.detach().cpu().contiguous();
    safetensors::save_file(staging + "/params.safetensors", params);
    if (m.target.buffers) {
      safetensors::TensorMap buffers;
      for (const auto& [name, b] : m.target.buffers()) buffers[name] = b.detach().cpu().contiguous();
      if (!buffers.empty()) safetensors::save_file(staging + "/buffers.safetensors", buffers);
    }
    if (!m.best_tensors.empty()) safetensors::save_file(staging + "/best.safetensors", m.best_tensors);
    safetensors::TensorMap opt;
    for (auto& [k, t] : m.opt->state_dict()) opt[k] = t.detach().cpu().contiguous();
    safetensors::save_file(staging + "/optimizer.safetensors", opt);
    safetensors::TensorMap rng;
    for (auto& [name, state] : core::generator_states()) rng[name] = state;
    safetensors::save_file(staging + "/rng.safetensors", rng);
    nlohmann::json j = {{"step", m.step},
                        {"epoch", m.sampler->state().epoch},
                        {"cursor", m.sampler->state().cursor},
                        {"bad_evals", m.bad_evals},
                        {"nonfinite", m.nonfinite},
                        {"best_step", m.best_step},
                        {"metric", m.metric},
                        {"seed", m.config.seed},
                        {"batch_size", m.config.batch_size},
                        {"grad_accum", m.config.grad_accum},
                        {"world_size", m.dist() ? m.dist()->world_size() : 1}};
    j["best"] = m.best ? nlohmann::json(*m.best) : nlohmann::json(nullptr);
    if (m.accountant) {
      nlohmann::json h = nlohmann::json::array();
      for (const auto& e : m.accountant->history()) h.push_back({e.noise_multiplier, e.sample_rate, e.steps});
      j["privacy_history"] = h;
    }
    if (m.scaler) {
      j["loss_scale"] = m.scaler->state().scale;
      j["loss_scale_growth_tracker"] = m.scaler->state().growth_tracker;
    }
    core::write_json_file(staging + "/trainer_state.json", j);
  });
}

void Trainer::resume(const std::string& dir) {
  auto& m = *impl_;
  const std::string where = dir + "/trainer_state.json";
  PEFT_CHECK(fs::exists(where), kC, "{}: not a training state (missing trainer_state.json)", dir);
  auto j = core::read_json_file(where);
  const nlohmann::json same = {
      {"seed", m.config.seed}, {"batch_size", m.config.batch_size}, {"grad_accum", m.config.grad_accum}};
  for (auto it = same.begin(); it != same.end(); ++it)
    PEFT_CHECK(j.at(it.key()) == it.value(), kC,
               "{}: saved with {} = {}, this run has {}; resume with the same setting", where, it.key(),
               j.at(it.key()).dump(), it.value().dump());
  // Every tensor is checked before any is copied: a mismatched state changes nothing.
  auto params = safetensors::load_file(dir + "/params.safetensors");
  std::vector<std::pair<at::Tensor, at::Tensor>> copies;  // (destination, saved)
  auto match = [&](const safetensors::TensorMap& saved, const std::string& file,
                   const std::vector<std::pair<std::string, at::Tensor>>& live) {
    for (const auto& [name, t] : live) {
      auto it = saved.find(name);
      PEFT_CHECK(it != saved.end(), kC, "{}/{}: missing '{}' (a different method or model?)", dir, file, name);
      PEFT_CHECK(it->second.sizes() == t.sizes(), kC, "{}/{}: '{}' has shape {}, expected {}", dir, file, name,
                 c10::str(it->second.sizes()), c10::str(t.sizes()));
      copies.emplace_back(t, it->second);
    }
  };
  match(params, "params.safetensors", m.params);
  const auto live_buffers = m.target.buffers ? m.target.buffers() : std::vector<std::pair<std::string, at::Tensor>>{};
  if (!live_buffers.empty()) {
    const std::string file = dir + "/buffers.safetensors";
    if (fs::exists(file))
      match(safetensors::load_file(file), "buffers.safetensors", live_buffers);
    else
      log::warn("{}: no buffers.safetensors (a state saved before buffers were kept): the delta's {} buffers keep the "
                "values they were attached with", dir, live_buffers.size());
  }
  torch::NoGradGuard no_grad;
  for (auto& [dst, saved] : copies) dst.copy_(saved);
  m.opt->load_state_dict(safetensors::load_file(dir + "/optimizer.safetensors"));
  {
    const auto saved = safetensors::load_file(dir + "/rng.safetensors");
    PEFT_CHECK(saved.count("cpu"), kC, "{}/rng.safetensors: missing 'cpu' (the CPU generator's state)", dir);
    std::map<std::string, at::Tensor> states(saved.begin(), saved.end());
    const auto live = core::generator_states();
    for (const auto& [name, state] : live)
      if (!states.count(name)) log::warn("{}/rng.safetensors: no state for generator '{}' (saved without it)", dir, name);
    const auto unknown = core::set_generator_states(states);
    if (!unknown.empty())
      log::warn("{}/rng.safetensors: this process has no generator {}: not restored", dir, fmt::join(unknown, ", "));
  }
  if (m.accountant) {
    PEFT_CHECK(j.contains("privacy_history"), kC, "{}: saved without DP-SGD (no privacy_history): a private run cannot "
               "continue a non-private one", where);
    std::vector<privacy::PrivacyStep> h;
    for (const auto& e : j.at("privacy_history")) h.push_back({e.at(0).get<double>(), e.at(1).get<double>(), e.at(2).get<int64_t>()});
    m.accountant->set_history(std::move(h));
  } else {
    PEFT_CHECK(!j.contains("privacy_history"), kC, "{}: saved by a DP-SGD run: resume it with the same privacy settings", where);
  }
  m.step = j.at("step").get<int64_t>();
  m.sampler->restore({j.at("epoch").get<int64_t>(), j.at("cursor").get<int64_t>()});
  m.bad_evals = j.at("bad_evals").get<int64_t>();
  m.nonfinite = j.at("nonfinite").get<int64_t>();
  if (!j.at("best").is_null()) m.best = j.at("best").get<double>();
  m.best_step = j.value("best_step", int64_t{0});
  if (m.scaler) {
    if (j.contains("loss_scale"))
      m.scaler->load_state({j.at("loss_scale").get<double>(), j.value("loss_scale_growth_tracker", int64_t{0})});
    else
      log::warn("{}: no loss scale (saved without loss scaling): starting from loss_scale_init", where);
  }
  m.best_tensors.clear();
  if (m.test && m.best) {
    const std::string file = dir + "/best.safetensors";
    if (fs::exists(file)) {
      m.best_tensors = safetensors::load_file(file);
      for (const auto& [name, t] : m.tracked())
        PEFT_CHECK(m.best_tensors.count(name) && m.best_tensors.at(name).sizes() == t.sizes(), kC,
                   "{}: '{}' is missing or has another shape (a different method or model?)", file, name);
    } else {
      // Without the kept tensors the earlier best cannot be scored; best/ keeps it all the same.
      log::warn("{}: no best.safetensors (saved without a test set): the test scores the last step's delta "
                "unless a later evaluation beats the best so far", dir);
    }
  }
  const int64_t saved_world = j.value("world_size", int64_t{1}), world = m.dist() ? m.dist()->world_size() : 1;
  if (saved_world != world)
    log::warn("{}: saved by {} process(es), resumed by {}: the global batches continue unchanged (batch_size {} is the "
              "global batch); only each rank's slice of them, and dropout's random draws, differ from an uninterrupted run",
              where, saved_world, world, m.config.batch_size);
  m.resumed = true;
  log::info("resumed from {} at step {}", dir, m.step);
}

TrainResult Trainer::train() {
  auto& m = *impl_;
  const auto& c = m.config;
  if (m.step == 0 && !m.resumed && m.writes()) prepare_output_dir(c, /*resuming=*/false);
  if (c.flush_denormals) core::flush_denormals(true);
  TrainResult result;
  SigintScope sigint;
  const bool tty = c.progress && ::isatty(STDERR_FILENO);
  const auto t0 = std::chrono::steady_clock::now();
  const int64_t first_step = m.step;
  int64_t tokens = 0, window_steps = 0;
  double window_ms = 0;
  auto run_eval = [&]() -> std::optional<EvalResult> {
    if (!m.eval) return std::nullopt;
    m.target.set_training(false);
    auto r = evaluate([&m](const models::ModelInputs& in) { return m.forward(in); }, *m.eval, c.batch_size,
                      c.eval_batches, c.device, m.dist());
    m.target.set_training(true);
    m.log_line(m.accountant ? fmt::format("{{\"step\": {}, \"eval\": {}, \"epsilon\": {:.6f}}}", m.step, r.to_json(), *m.epsilon())
                            : fmt::format("{{\"step\": {}, \"eval\": {}}}", m.step, r.to_json()));
    result.last_eval = r;
    const double s = m.score(r);
    if (!m.best || s > *m.best) {
      m.best = s;
      m.bad_evals = 0;
      result.best_eval = r;
      if (m.test) m.keep_best();
      if (m.writes()) {
        m.target.save(c.output_dir + "/best");
        m.write_privacy(c.output_dir + "/best");
      }
    } else {
      ++m.bad_evals;
    }
    return r;
  };

  m.target.set_training(true);
  bool agreed_interrupt = false;  // distributed: a rank was interrupted (agreed in the last step's exchange)
  while (m.step < c.max_steps) {
    if (m.dist() ? agreed_interrupt : g_interrupted.load()) {
      if (!c.output_dir.empty()) save_state(c.output_dir + "/state");
      log::warn("interrupted at step {}: training state saved to {}/state", m.step, c.output_dir);
      result.interrupted = true;
      break;
    }
    const auto step_start = std::chrono::steady_clock::now();
    const double lr = c.lr * optim::schedule_factor(c.schedule, m.step, c.warmup_steps, c.max_steps);
    m.opt->zero_grad();
    double loss_sum = 0;
    bool finite = true;
    int64_t step_tokens = 0;
    if (m.accountant) {  // DP-SGD: the noised sum of clipped per-example gradients
      std::mt19937_64 sampling_rng(m.dp_seed(0));
      const auto indices = c.privacy->sampling == "poisson" ? privacy::poisson_sample(m.train->size(), m.dp_rate, sampling_rng)
                                                            : m.sampler->next(c.batch_size);
      at::Generator noise = at::make_generator<at::CPUGeneratorImpl>(m.dp_seed(1));
      std::vector<at::Tensor> tensors;
      privacy::PrivateGradientOptions o;
      for (const auto& [name, p] : m.params) {
        tensors.push_back(p);
        o.names.push_back(name);
      }
      o.clip_norm = c.privacy->max_grad_norm;
      o.noise_multiplier = m.dp_sigma;
      o.expected_batch = static_cast<double>(c.batch_size);
      o.max_physical_batch = c.privacy->max_physical_batch > 0 ? c.privacy->max_physical_batch : c.batch_size;
      o.method = m.dp_method;
      const auto pg = privacy::private_gradient([&m](const models::ModelInputs& in) { return m.forward(in); }, *m.train, indices,
                                                tensors, o, noise, c.device);
      if (!pg.fallback.empty()) {
        log::warn("DP-SGD: per-example gradients by a loop over each batch's examples from now on (slower): {}", pg.fallback);
        m.dp_method = privacy::PerSampleMethod::kLoop;
      }
      m.accountant->step(m.dp_sigma, m.dp_rate);
      loss_sum = pg.examples > 0 ? pg.loss_sum / static_cast<double>(pg.examples) : 0.0;
      step_tokens = pg.tokens;
    }
    for (int64_t micro = 0; micro < (m.accountant ? 0 : c.grad_accum); ++micro) {
      // The global batch's indices come from the one sampler every rank runs alike.
      const auto indices = m.my_slice(m.sampler->next(c.batch_size));
      if (!finite) continue;  // a non-finite loss skips the step; the batches it would have used are spent
      auto batch = to_device(m.train->batch(indices), c.device);
      step_tokens += batch.attention_mask.defined() ? batch.attention_mask.sum().item<int64_t>()
                                                    : (batch.input_ids.defined() ? batch.input_ids.numel() : batch.pixel_values.size(0));
      auto out = m.forward(batch);  // autocast covers the forward only, as PyTorch advises
      PEFT_CHECK(out.loss.defined(), kC, "the model returned no loss (does the batch carry labels?)");
      const double value = out.loss.item<double>();
      if (!std::isfinite(value)) {
        finite = false;
        continue;
      }
      at::Tensor loss = out.loss.to(torch::kFloat) / static_cast<double>(c.grad_accum);
      (m.scaler ? m.scaler->scale(loss) : loss).backward();
      loss_sum += value / static_cast<double>(c.grad_accum);
    }
    if (auto* d = m.dist()) {
      // One small exchange: the mean loss, every rank's tokens, whether any rank saw a non-finite
      // loss or was interrupted, and which tensors have a gradient on some rank.
      std::vector<double> local = {loss_sum, finite ? 0.0 : 1.0, static_cast<double>(step_tokens), g_interrupted ? 1.0 : 0.0};
      for (const auto& [name, p] : m.params) local.push_back(p.grad().defined() ? 1.0 : 0.0);
      std::vector<at::Tensor> stats = {torch::tensor(local, torch::kFloat64)};
      d->all_reduce_sum(stats);
      const auto agreed = stats[0].accessor<double, 1>();
      loss_sum = agreed[0] / d->world_size();
      finite = agreed[1] == 0;
      step_tokens = static_cast<int64_t>(agreed[2]);
      agreed_interrupt = agreed[3] > 0;
      if (finite) {
        std::vector<at::Tensor> tensors;
        for (size_t k = 0; k < m.params.size(); ++k)
          if (agreed[static_cast<int64_t>(4 + k)] > 0) tensors.push_back(m.params[k].second);
        // Before unscaling and clipping: they see the reduced gradient.
        d->average_gradients(tensors, 25 << 20, /*agree_on_presence=*/false);
      }
    }
    tokens += step_tokens;
    ++m.step;
    if (!finite) {
      ++m.nonfinite;
      ++result.nonfinite_steps;
      m.opt->zero_grad();
      m.log_line(fmt::format("{{\"step\": {}, \"nonfinite_loss\": true}}", m.step));
      log::warn("step {}: non-finite loss, update skipped ({} of at most {})", m.step, m.nonfinite, c.max_nonfinite);
      PEFT_CHECK(m.nonfinite <= c.max_nonfinite, kC,
                 "aborting: {} non-finite losses (max_nonfinite = {}); lower the learning rate or check the data",
                 m.nonfinite, c.max_nonfinite);
      continue;
    }
    if (m.scaler) {
      std::vector<at::Tensor> tensors;
      for (const auto& [name, p] : m.params) tensors.push_back(p);
      const bool clean = m.scaler->unscale(tensors);
      m.scaler->update(!clean);
      if (!clean) {
        ++result.overflow_steps;
        m.opt->zero_grad();
        m.log_line(fmt::format("{{\"step\": {}, \"overflow\": true, \"loss_scale\": {}}}", m.step,
                               m.scaler->current_scale()));
        continue;
      }
    }
    // DP-SGD clipped each example's gradient already; the noised sum is not clipped again.
    const double norm = optim::clip_grad_norm(m.params, m.accountant ? 0.0 : c.max_grad_norm);
    m.opt->step(lr);
    result.losses.push_back(loss_sum);
    // Training-step time alone (batching, forward, backward, update), without evaluations.
    window_ms += std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - step_start).count();
    ++window_steps;

    const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const double rate = static_cast<double>(tokens) / std::max(elapsed, 1e-9);
    const double eta = elapsed / static_cast<double>(m.step - first_step) * static_cast<double>(c.max_steps - m.step);
    if (c.log_every > 0 && (m.step % c.log_every == 0 || m.step == c.max_steps)) {
      m.log_line(fmt::format("{{\"step\": {}, \"loss\": {:.6f}, \"lr\": {:.6e}, \"grad_norm\": {:.4f}, "
                             "\"tokens_per_s\": {:.1f}, \"step_ms\": {:.2f}, \"elapsed_s\": {:.2f}}}",
                             m.step, loss_sum, lr, norm, rate, window_ms / static_cast<double>(window_steps), elapsed));
      window_ms = 0;
      window_steps = 0;
    }
    if (tty)
      fmt::print(stderr, "\r step {}/{}  loss {:.4f}  lr {:.2e}  {:.0f} tok/s  ETA {}   ", m.step, c.max_steps,
                 loss_sum, lr, rate, duration(eta));
    if (c.eval_every > 0 && m.step % c.eval_every == 0 && m.step < c.max_steps) {
      run_eval();
      if (c.early_stopping_patience > 0 && m.bad_evals >= c.early_stopping_patience) {
        result.early_stopped = true;
        log::info("early stopping at step {}: {} evaluations without improvement", m.step, m.bad_evals);
        break;
      }
    }
    if (c.save_every > 0 && m.step % c.save_every == 0 && m.writes()) save_state(c.output_dir + "/state");
  }
  if (tty) fmt::print(stderr, "\n");
  if (!result.interrupted) {
    if (m.step >= c.max_steps || result.early_stopped) run_eval();
    if (m.writes()) {
      save_state(c.output_dir + "/state");
      m.target.save(c.output_dir + "/final");
      m.write_privacy(c.output_dir + "/final");
    }
    if (m.test) {
      result.selected_step = m.step;
      if (!m.best_tensors.empty()) {
        torch::NoGradGuard no_grad;
        for (const auto& [name, t] : m.tracked()) t.copy_(m.best_tensors.at(name));
        result.selected_step = m.best_step;
      }
      m.target.set_training(false);
      result.test_eval = evaluate([&m](const models::ModelInputs& in) { return m.forward(in); }, *m.test,
                                  c.batch_size, /*max_batches=*/0, c.device, m.dist());
      m.log_line(fmt::format("{{\"step\": {}, \"selected_step\": {}, \"test\": {}}}", m.step, result.selected_step,
                             result.test_eval->to_json()));
    }
  }
  m.target.set_training(false);
  result.steps = m.step;
  result.epsilon = m.epsilon();
  return result;
}

}  // namespace peft::train
