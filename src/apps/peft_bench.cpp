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
#include <optional>
#include <sstream>

#include <CLI/CLI.hpp>
#include <torch/csrc/autograd/profiler_legacy.h>
#include <torch/torch.h>

#include "peft/core/process.h"
#include "peft/checkpoint/delta.h"
#include "peft/core/atomic_file.h"
#include "peft/core/error.h"
#include "peft/models/save.h"
#include "peft/methods/method.h"
#include "peft/models/load.h"
#include "peft/peft_model.h"
#include "peft/optim/adamw.h"

extern char** environ;

namespace {

constexpr const char* kC = "peft-bench";

struct Geometry {
  std::string family = "gpt2";
  int64_t layers = 4, hidden = 256, heads = 4, vocab = 8000, seq = 128, batch = 8;
};

nlohmann::json model_config(const Geometry& g) {
  PEFT_CHECK(g.family == "gpt2", kC, "--family: only gpt2 is benchmarked, found '{}'", g.family);
  // Room for up to 16 virtual tokens before the sequence (prompt and prefix methods).
  return {{"model_type", "gpt2"}, {"vocab_size", g.vocab}, {"n_positions", g.seq + 16},
          {"n_embd", g.hidden}, {"n_layer", g.layers}, {"n_head", g.heads},
          {"resid_pdrop", 0.0}, {"embd_pdrop", 0.0}, {"attn_pdrop", 0.0}};
}

/// The method configurations benchmarked by name ("full" trains every weight); the same
/// settings as bench/torch_reference.py uses for the Python side.
nlohmann::json method_config(const std::string& name) {
  static const std::map<std::string, nlohmann::json> presets = {
      {"lora", {{"peft_type", "LORA"}, {"r", 8}, {"lora_alpha", 16}}},
      {"adapter", {{"peft_type", "BOTTLENECK_ADAPTER"}, {"preset", "houlsby"}, {"bottleneck_size", 16}, {"non_linearity", "gelu"}}},
      {"lst", {{"peft_type", "LST"}, {"reduction_factor", 8}}},
      {"ia3", {{"peft_type", "IA3"}}},
      {"bitfit", {{"peft_type", "BITFIT"}}},
      {"prefix_tuning", {{"peft_type", "PREFIX_TUNING"}, {"num_virtual_tokens", 10}}},
      {"prompt_tuning", {{"peft_type", "PROMPT_TUNING"}, {"num_virtual_tokens", 10}}},
  };
  auto it = presets.find(name);
  if (it != presets.end()) return it->second;
  std::vector<std::string> names = {"full"};
  for (const auto& [n, j] : presets) names.push_back(n);
  peft::fail(kC, fmt::format("--methods: unknown method '{}' (known: {})", name, fmt::join(names, ", ")));
}

/// A /proc/self/status field in MiB (VmRSS: now, VmHWM: peak).
double status_mib(const std::string& field) {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind(field + ":", 0) == 0) return std::stod(line.substr(field.size() + 1)) / 1024.0;
  return -1;
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

/// Multiply-add FLOPs of one forward pass: the block projections (12·d² per token and layer), the
/// attention scores and mixing (4·T·d per token and layer) and the tied LM head (2·d·V per token).
double forward_flops(const Geometry& g) {
  const double n = static_cast<double>(g.batch * g.seq), d = static_cast<double>(g.hidden);
  return static_cast<double>(g.layers) * (24.0 * n * d * d + 4.0 * n * static_cast<double>(g.seq) * d) +
         2.0 * n * d * static_cast<double>(g.vocab);
}

/// FLOPs a training step needs: forward, input gradients, and weight gradients where weights train
/// (3× forward for full fine-tuning, 2× for a frozen base; the deltas' own FLOPs are left out).
/// With a side network the backward may never enter the backbone (LST): none is claimed then.
std::optional<double> step_flops(peft::PeftModel* model, const Geometry& g) {
  if (model == nullptr) return 3.0 * forward_flops(g);
  if (model->side_network(model->active_adapter())) return std::nullopt;
  return 2.0 * forward_flops(g);
}

/// Runs one method in this process and returns its measurements.
nlohmann::json measure(const std::string& method, const Geometry& g, int steps, int warmup,
                       const std::string& profile_dir) {
  const double rss_start = status_mib("VmRSS");
  torch::manual_seed(0);
  auto base = peft::models::create_model(model_config(g), "causal_lm");
  std::unique_ptr<peft::PeftModel> peft_model;
  std::vector<std::pair<std::string, at::Tensor>> params;
  int64_t total = 0;
  for (auto& p : base->parameters()) total += p.numel();
  if (method == "full") {
    for (auto& p : base->named_parameters()) {
      p.value().set_requires_grad(true);
      params.emplace_back(p.key(), p.value());
    }
  } else {
    peft_model = std::make_unique<peft::PeftModel>(base);
    peft_model->add_adapter("default", *peft::methods::parse_config(method_config(method)));
    for (auto& p : base->named_parameters())
      if (p.value().requires_grad()) params.emplace_back(p.key(), p.value());
  }
  int64_t trainable = 0;
  for (auto& [n, p] : params) trainable += p.numel();
  base->train();
  auto forward = [&](const peft::models::ModelInputs& in) {
    return peft_model ? peft_model->forward(in) : base->forward(in);
  };
  peft::optim::AdamW opt(params, {1e-4, 0.9, 0.999, 1e-8, /*weight_decay=*/0.0});
  peft::models::ModelInputs batch;
  batch.input_ids = torch::randint(0, g.vocab, {g.batch, g.seq}, torch::kLong);
  batch.labels = batch.input_ids;
  const double rss_setup = status_mib("VmRSS");  // weights, optimizer state, batch
  std::vector<double> times;
  std::unique_ptr<torch::autograd::profiler::RecordProfile> profile;
  for (int s = 0; s < warmup + steps; ++s) {
    if (s == warmup && !profile_dir.empty())  // the timed steps, as a chrome://tracing file
      profile = std::make_unique<torch::autograd::profiler::RecordProfile>(
          (std::filesystem::path(profile_dir) / (method + ".trace.json")).string());
    const auto t0 = std::chrono::steady_clock::now();
    forward(batch).loss.backward();
    opt.step(1e-4);
    opt.zero_grad();
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    if (s >= warmup) times.push_back(ms);
  }
  profile.reset();
  const double peak = status_mib("VmHWM"), step_ms = median(times);

  // Inference (eval, no autograd): the base alone, with the delta, and with the delta merged.
  base->eval();
  nlohmann::json infer;
  {
    torch::NoGradGuard no_grad;
    peft::models::ModelInputs x;
    x.input_ids = batch.input_ids;
    infer["with_delta_ms"] = median_ms([&] { forward(x); }, steps);
    if (peft_model) {
      peft_model->disable_adapters();
      infer["base_ms"] = median_ms([&] { forward(x); }, steps);
      peft_model->enable_adapters();
      try {
        peft_model->merge_adapter();
        infer["merged_ms"] = median_ms([&] { forward(x); }, steps);
        peft_model->unmerge_adapter();
      } catch (const peft::Error&) {
        infer["merged_ms"] = nullptr;  // not mergeable
      }
    }
  }
  // What a user ships: the delta directory, or the whole model for full fine-tuning.
  const auto dir = std::filesystem::temp_directory_path() / ("peft-bench-" + std::to_string(getpid()));
  if (peft_model) peft::checkpoint::save_adapter(*peft_model, dir.string());
  else peft::models::save_pretrained(*base, dir.string());
  const int64_t saved_bytes = directory_bytes(dir.string());
  std::filesystem::remove_all(dir);

  const auto flops = step_flops(peft_model.get(), g);
  return {{"method", method},
          {"step_gflop", flops ? nlohmann::json(*flops / 1e9) : nlohmann::json(nullptr)},
          {"achieved_gflops", flops ? nlohmann::json(*flops / 1e9 / (step_ms / 1e3)) : nlohmann::json(nullptr)},
          {"saved_bytes", saved_bytes},
          {"inference", infer},
          {"trainable_params", trainable},
          {"total_params", total},
          {"step_ms", step_ms},
          {"tokens_per_s", 1000.0 * static_cast<double>(g.batch * g.seq) / step_ms},
          {"peak_rss_mib", peak},
          {"setup_mib", rss_setup - rss_start},
          {"training_mib", peak - rss_setup},
          {"memory_mib", peak - rss_start},
          {"threads", torch::get_num_threads()},
          {"geometry", {{"family", g.family}, {"layers", g.layers}, {"hidden", g.hidden}, {"heads", g.heads},
                        {"vocab", g.vocab}, {"seq", g.seq}, {"batch", g.batch}}}};
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

int run(int argc, char** argv) {
  CLI::App app{"Benchmark a training step of each PEFT method side by side (JSON lines out).", "peft-bench"};
  Geometry g;
  std::string methods = "full,lora,adapter,lst", child, json_path, profile_dir;
  int steps = 5, warmup = 1, threads = 0;
  app.add_option("--layers", g.layers, "transformer blocks");
  app.add_option("--hidden", g.hidden, "hidden size");
  app.add_option("--heads", g.heads, "attention heads");
  app.add_option("--vocab", g.vocab, "vocabulary size");
  app.add_option("--seq", g.seq, "sequence length");
  app.add_option("--batch", g.batch, "batch size");
  app.add_option("--methods", methods, "comma-separated: full and method presets");
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
  if (!child.empty()) {
    fmt::print("{}\n", measure(child, g, steps, warmup, profile_dir).dump());
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
    if (m != "full") method_config(m);  // unknown names fail before any run
    names.push_back(m);
  }
  for (const auto& m : names) {
    std::vector<std::string> args = {argv[0]};
    for (auto [flag, value] : std::vector<std::pair<std::string, int64_t>>{
             {"--layers", g.layers}, {"--hidden", g.hidden}, {"--heads", g.heads}, {"--vocab", g.vocab},
             {"--seq", g.seq}, {"--batch", g.batch}, {"--steps", steps}, {"--warmup", warmup}, {"--threads", used_threads}})
      args.insert(args.end(), {flag, std::to_string(value)});
    if (!profile_dir.empty()) args.insert(args.end(), {"--profile", profile_dir});
    args.insert(args.end(), {"--child", m});
    rows.push_back(nlohmann::json::parse(run_child(args)));
    if (gemm && rows.back()["achieved_gflops"].is_number())
      rows.back()["gemm_fraction"] = rows.back()["achieved_gflops"].get<double>() / rows.front()["gemm_gflops"].get<double>();
    fmt::print("{}\n", rows.back().dump());
    std::fflush(stdout);
  }
  const nlohmann::json* full = nullptr;
  for (const auto& r : rows)
    if (r.value("method", "") == "full") full = &r;
  fmt::print(stderr, "\n{:<14} {:>12} {:>10} {:>10} {:>12} {:>12} {:>12} {:>9} {:>9} {:>9}\n", "method", "trainable",
             "step ms", "tokens/s", "memory MiB", "vs full FT", "saved bytes", "GFLOP/s", "base ms", "merged");
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
    fmt::print(stderr, "{:<14} {:>12} {:>10.1f} {:>10.0f} {:>12.1f} {:>12} {:>12} {:>9} {:>9} {:>9}\n",
               r["method"].get<std::string>(), r["trainable_params"].get<int64_t>(), r["step_ms"].get<double>(),
               r["tokens_per_s"].get<double>(), mem, saving, r["saved_bytes"].get<int64_t>(),
               number(r["achieved_gflops"], "{:.1f}"), number(inf.value("base_ms", nlohmann::json()), "{:.1f}"),
               inf.contains("merged_ms") && inf["merged_ms"].is_number() && inf.contains("base_ms")
                   ? fmt::format("{:.3f}x", inf["merged_ms"].get<double>() / inf["base_ms"].get<double>())
                   : std::string("-"));
  }
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
