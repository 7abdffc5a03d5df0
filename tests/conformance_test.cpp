// The conformance suite: every registered method must pass these, on every backbone family. A
// method joins with one line in kCases (a name, a config, and the families it applies to).
#include <map>
#include <set>

#include <torch/torch.h>

#include "peft/checkpoint/delta.h"
#include "peft/core/json_io.h"
#include "peft/core/strings.h"
#include "peft/generate.h"
#include "peft/methods/method.h"
#include "peft/models/load.h"
#include "peft/models/quantize.h"
#include "peft/peft_model.h"
#include "peft/privacy/per_sample_gradients.h"
#include "peft/train/trainer.h"
#include "test_util.h"
#include "tiny_models.h"

namespace peft::test {
namespace {

struct MethodCase {
  std::string name;
  nlohmann::json config;
  std::vector<std::string> families;  ///< empty: every family
  bool mergeable = true;              ///< false: merging must be refused with a clear reason
  bool identity_at_init = true;       ///< false: the method changes the output from the start (prompts)
  bool reparameterized = false;       ///< trains an encoder, saves only its output
  /// Gradient checkpointing: "exact" (bit-identical gradients), "close" (a tensor shared across
  /// blocks sums its per-block gradients in another order), "refused" (a clear error).
  std::string checkpointing = "exact";
};

const std::vector<MethodCase> kCases = {
    {"lora", {{"peft_type", "LORA"}, {"r", 4}, {"lora_alpha", 8}}, {}},
    {"ia3", {{"peft_type", "IA3"}}, {}},
    {"bitfit", {{"peft_type", "BITFIT"}}, {"gpt2", "bert", "roberta", "vit"}},
    {"bitfit_added", {{"peft_type", "BITFIT"}, {"add_missing_biases", true}, {"bias_modules", {"q_proj", "down_proj"}}}, {"llama"}, false},
    {"adapter_pfeiffer", {{"peft_type", "BOTTLENECK_ADAPTER"}, {"preset", "pfeiffer"}, {"reduction_factor", 4}}, {}, false},
    {"adapter_houlsby", {{"peft_type", "BOTTLENECK_ADAPTER"}, {"preset", "houlsby"}, {"bottleneck_size", 5}}, {}, false},
    {"compacter", {{"peft_type", "COMPACTER"}, {"bottleneck_size", 4}, {"phm_dim", 2}}, {}, false, true, false, "close"},
    {"compacter_pp_full", {{"peft_type", "COMPACTER"}, {"variant", "compacter++"}, {"bottleneck_size", 6}, {"phm_dim", 2}, {"factorized_phm", false}}, {}, false, true, false, "close"},
    {"sparse_adapter", {{"peft_type", "SPARSE_ADAPTER"}, {"pruned_fraction", 0.0},
                        {"adapter", {{"preset", "houlsby"}, {"reduction_factor", 4}, {"init_weights", "zero_up"}}}}, {}, false},
    {"adamix", {{"peft_type", "ADAMIX"}, {"num_experts", 3}, {"bottleneck_size", 4}, {"sharing_up", false}}, {}, false},
    {"adapter_parallel", {{"peft_type", "BOTTLENECK_ADAPTER"}, {"preset", "parallel"}, {"reduction_factor", 8}, {"layers_to_transform", {1}}}, {}, false},
    {"prefix_tuning", {{"peft_type", "PREFIX_TUNING"}, {"num_virtual_tokens", 3}}, {}, false, false},
    {"prefix_projection", {{"peft_type", "PREFIX_TUNING"}, {"num_virtual_tokens", 4}, {"prefix_projection", true}, {"encoder_hidden_size", 12}}, {}, false, false, true},
    {"prompt_tuning", {{"peft_type", "PROMPT_TUNING"}, {"num_virtual_tokens", 3}}, {}, false, false},
    {"p_tuning_mlp", {{"peft_type", "P_TUNING"}, {"num_virtual_tokens", 3}, {"encoder_hidden_size", 10}}, {}, false, false, true},
    {"p_tuning_lstm", {{"peft_type", "P_TUNING"}, {"num_virtual_tokens", 3}, {"encoder_reparameterization_type", "LSTM"}, {"encoder_hidden_size", 6}}, {"gpt2", "bert", "llama"}, false, false, true},
    {"llama_adapter", {{"peft_type", "ADAPTION_PROMPT"}, {"adapter_len", 3}, {"adapter_layers", 1}}, {}, false},
    {"llama_adapter_per_head", {{"peft_type", "ADAPTION_PROMPT"}, {"adapter_len", 2}, {"gate", "per_head_tanh"}}, {}, false},
    {"kadaptation", {{"peft_type", "KADAPTATION"}, {"phm_dim", 4}, {"scaling", 2.0}}, {}},
    {"kadaptation_weight_dropout", {{"peft_type", "KADAPTATION"}, {"phm_dim", 2}, {"weight_dropout", 0.5}, {"train_bias", false}}, {"vit", "gpt2"}},
    {"fact_tt", {{"peft_type", "FACT"}, {"rank", 3}, {"scaling", 2.0}}, {}, true, true, false, "close"},
    {"fact_tk", {{"peft_type", "FACT"}, {"variant", "tk"}, {"rank", 3}, {"dropout", 0.1}}, {}, true, true, false, "close"},
    {"dsee", {{"peft_type", "DSEE"}, {"r", 2}, {"num_sparse", 20}, {"grebsmo_iterations", 5}}, {}},
    {"dsee_random", {{"peft_type", "DSEE"}, {"r", 3}, {"lora_alpha", 6}, {"num_sparse", 7}, {"sparse_init", "random"}, {"target_modules", {"c_fc"}}}, {"gpt2"}},
    {"lst", {{"peft_type", "LST"}, {"reduction_factor", 2}}, {}, false, false},
    {"lst_gated_dropping_random", {{"peft_type", "LST"}, {"reduction_factor", 2}, {"output", "gated"}, {"side_layers", {1}}, {"side_init", "random"}}, {}, false, false},
    {"s3pet_search_space", {{"peft_type", "S3PET"}, {"budget", 0.05}, {"shift_gradient", "implicit"}}, {}, false, true, false, "refused"},
    {"s3pet_structure_gpt2", {{"peft_type", "S3PET"}, {"structure", {{{"kind", "lora"}, {"module", "h.0.attn.c_attn"}}, {{"kind", "bias"}, {"module", "h.1.mlp.c_fc"}},
                              {{"kind", "ln"}, {"module", "h.0.ln_2"}}, {{"kind", "lora"}, {"module", "h.1.mlp.c_proj"}}}}}, {"gpt2"}},
    {"s3pet_structure_bert", {{"peft_type", "S3PET"}, {"adapter_size", 2}, {"structure", {{{"kind", "lora"}, {"module", "layer.0.attention.self.query"}}, {{"kind", "bias"}, {"module", "layer.1.output.dense"}},
                              {{"kind", "adapter"}, {"module", "layer.1"}, {"slot", "ffn"}}, {{"kind", "ln"}, {"module", "layer.0.attention.output.LayerNorm"}}}}}, {"bert", "roberta"}, false},
    {"s3pet_structure_llama", {{"peft_type", "S3PET"}, {"structure", {{{"kind", "lora"}, {"module", "layers.1.self_attn.v_proj"}}, {{"kind", "bias"}, {"module", "layers.0.mlp.down_proj"}},
                               {{"kind", "ln"}, {"module", "layers.1.input_layernorm"}}, {{"kind", "ln"}, {"module", "model.norm"}}}}}, {"llama"}, false},
    {"s3pet_structure_vit", {{"peft_type", "S3PET"}, {"structure", {{{"kind", "adapter"}, {"module", "layer.0"}, {"slot", "attention"}}, {{"kind", "lora"}, {"module", "layer.1.attention.attention.value"}},
                             {{"kind", "ln"}, {"module", "vit.layernorm"}}}}}, {"vit"}, false},
    {"lora_all_linear", {{"peft_type", "LORA"}, {"r", 4}, {"lora_alpha", 8}, {"fan_in_fan_out", true}, {"target_modules", {"c_attn", "c_proj", "c_fc"}}}, {"gpt2"}},
    {"lora_rslora_bias", {{"peft_type", "LORA"}, {"r", 2}, {"fan_in_fan_out", true}, {"lora_alpha", 4}, {"use_rslora", true}, {"bias", "lora_only"},
                          {"target_modules", "transformer\\.h\\.1\\..*c_(attn|fc)"}, {"modules_to_save", {"ln_f"}}}, {"gpt2"}},
};

/// The tiny families and T5 (a sequence-to-sequence LM; tiny_model and tiny_batch make it too).
const std::vector<std::string>& conformance_families() {
  static const std::vector<std::string> f = [] {
    auto out = tiny_families();
    out.push_back("t5");
    return out;
  }();
  return f;
}

/// Cases that do not apply to T5, each refused with a reason naming what is missing
/// (MethodsThatDoNotApplyToT5AreRefusedByName).
const std::map<std::string, std::string> kRefusedOnT5 = {
    {"llama_adapter", "encoder-decoder"},
    {"llama_adapter_per_head", "encoder-decoder"},
};

/// One method case on one family; classification families train their head (SEQ_CLS).
struct Combo {
  MethodCase method;
  std::string family;
  friend void PrintTo(const Combo& c, std::ostream* os) { *os << c.method.name << "_" << c.family; }
};

std::vector<Combo> combos() {
  std::vector<Combo> out;
  for (const auto& c : kCases)
    for (const auto& f : conformance_families())
      if ((c.families.empty() || std::find(c.families.begin(), c.families.end(), f) != c.families.end()) &&
          !(f == "t5" && kRefusedOnT5.count(c.name))) {
        Combo combo{c, f};
        combo.method.config["task_type"] = is_classifier(f) ? "SEQ_CLS" : f == "t5" ? "SEQ_2_SEQ_LM" : "CAUSAL_LM";
        out.push_back(combo);
      }
  return out;
}

/// Parameters of the task head a SEQ_CLS adapter trains beside its method.
int64_t head_params(PeftModel& model) {
  int64_t n = 0;
  const auto heads = model.implicit_modules_to_save(model.adapter_config(model.active_adapter()));
  for (const auto& p : model.base_model().named_parameters())
    for (const auto& h : heads) n += core::is_under(p.key(), h) ? p.value().numel() : 0;
  return n;
}

/// Makes every trainable tensor non-trivial (zero-initialized halves would hide bugs).
void perturb(PeftModel& model, double scale = 0.05) {
  torch::NoGradGuard g;
  for (auto& p : model.trainable_parameters()) p.add_(torch::randn_like(p) * scale);
}

std::map<std::string, at::Tensor> clone_base(models::PretrainedModel& m, const std::vector<std::string>& names) {
  std::map<std::string, at::Tensor> out;
  auto params = m.named_parameters();
  for (const auto& n : names) out[n] = params[n].detach().clone();
  return out;
}

class Conformance : public ::testing::TestWithParam<Combo> {
 protected:
  std::shared_ptr<methods::MethodConfig> config() { return methods::parse_config(GetParam().method.config); }
  std::shared_ptr<models::PretrainedModel> tiny_base(c10::ScalarType dtype = c10::kFloat) {
    return tiny_model(GetParam().family, dtype);
  }
  models::ModelInputs batch() { return tiny_batch(GetParam().family); }
  /// `steps` AdamW steps (lr 1e-2) in training mode, each loss finite.
  void train_steps(PeftModel& model, int steps) {
    model.train();
    torch::optim::AdamW opt(model.trainable_parameters(), torch::optim::AdamWOptions(1e-2));
    for (int step = 0; step < steps; ++step) {
      opt.zero_grad();
      auto loss = model.forward_train(batch()).loss;
      ASSERT_TRUE(std::isfinite(loss.item<double>()));
      loss.backward();
      opt.step();
    }
  }
};

TEST_P(Conformance, IdentityAtInit) {
  auto base = tiny_base();
  base->eval();
  torch::NoGradGuard g;
  auto ref = base->forward(batch()).logits.clone();
  PeftModel model(base);
  model.add_adapter("default", *config());
  if (GetParam().method.identity_at_init) {
    EXPECT_TRUE(bit_equal(model.forward(batch()).logits, ref));
  } else {
    EXPECT_GT(max_abs_diff(model.forward(batch()).logits.narrow(1, 0, ref.size(1)), ref), 1e-6)
        << "a prompt that changes nothing would hide a disconnected prompt";
  }
  model.disable_adapters();  // and the bare base is still there, bit for bit
  EXPECT_TRUE(bit_equal(model.forward(batch()).logits, ref));
}

TEST_P(Conformance, OnlyDeltasTrainAndBaseStaysBitIdentical) {
  auto base = tiny_base();
  PeftModel model(base);
  model.add_adapter("default", *config());
  auto params = model.trainable_parameters();
  ASSERT_FALSE(params.empty());
  // Everything trainable is a delta or an adapter-owned copy; no base tensor takes gradients.
  auto counts = model.count_parameters();
  int64_t n = 0;
  for (auto& p : params) n += p.numel();
  EXPECT_EQ(counts.trainable, n);
  auto state = model.adapter_state_dict("default");
  int64_t saved = 0;
  for (auto& [k, t] : state) saved += t.is_floating_point() ? t.numel() : 0;  // integer entries are masks
  if (GetParam().method.reparameterized) {
    // The encoder trains; the delta holds only its output, one table (and a classifier's head).
    ASSERT_TRUE(state.count("prompt_embeddings"));
    EXPECT_EQ(saved - state.at("prompt_embeddings").numel(), head_params(model));
    EXPECT_GT(n, saved);
  } else {
    EXPECT_EQ(saved, n) << "the delta holds exactly the trainable tensors";
  }
  auto geometry = base->geometry();
  const auto& method = methods::find_method(GetParam().method.config["peft_type"]);
  if (method.count) EXPECT_EQ(method.count(model.adapter_config("default"), geometry), counts.trainable - head_params(model));

  auto before = clone_base(*base, model.base_parameter_names());
  model.train();
  torch::optim::AdamW opt(params, torch::optim::AdamWOptions(1e-2).weight_decay(0.1));
  double first = 0, last = 0;
  for (int step = 0; step < 5; ++step) {
    opt.zero_grad();
    auto loss = model.forward(batch()).loss;
    loss.backward();
    opt.step();
    (step == 0 ? first : last) = loss.item<double>();
  }
  EXPECT_LT(last, first);
  model.disable_adapters();
  auto after = base->named_parameters();
  for (auto& [name, t] : before) EXPECT_TRUE(bit_equal(after[name], t)) << name;
}

TEST_P(Conformance, MergedEqualsUnmerged) {
  auto base = tiny_base();
  base->eval();
  PeftModel model(base);
  model.add_adapter("default", *config());
  perturb(model);
  torch::NoGradGuard g;
  auto unmerged = model.forward(batch()).logits.clone();
  auto w_before = clone_base(*base, model.base_parameter_names());
  if (!GetParam().method.mergeable) {
    // Nothing can absorb this delta (an added bias on a bias-less layer, a nonlinearity): the refusal says so.
    try {
      model.merge_adapter();
      FAIL() << "merging should be refused";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("cannot be merged"), std::string::npos) << e.what();
    }
    return;
  }
  // float32 rounding of the merged weights, relative to the logits' scale (T5's untied head gives larger ones).
  const double tol = 1e-5 * std::max(1.0, unmerged.abs().max().item<double>());
  model.merge_adapter();
  EXPECT_LT(max_abs_diff(model.forward(batch()).logits, unmerged), tol);
  model.unmerge_adapter();
  EXPECT_LT(max_abs_diff(model.forward(batch()).logits, unmerged), tol);
  for (auto& [name, t] : w_before) EXPECT_LT(max_abs_diff(base->named_parameters()[name], t), 1e-6) << name;
  auto merged = model.merge_and_unload();
  EXPECT_LT(max_abs_diff(merged->forward(batch()).logits, unmerged), tol);
  for (const auto& [name, lin] : merged->adaptable_linears()) EXPECT_TRUE(lin->adapters().empty()) << name;
}

TEST_P(Conformance, SaveLoadIsBitExact) {
  auto base = tiny_base();
  base->eval();
  PeftModel model(base);
  model.add_adapter("default", *config());
  perturb(model);
  TempDir dir;
  const auto path = dir.file("delta");
  checkpoint::save_adapter(model, path, "default");
  torch::NoGradGuard g;
  auto expected = model.forward(batch()).logits.clone();
  auto saved = model.adapter_state_dict("default");

  PeftModel fresh(tiny_base());
  fresh.eval();
  checkpoint::load_adapter(fresh, path, "default");
  auto loaded = fresh.adapter_state_dict("default");
  ASSERT_EQ(loaded.size(), saved.size());
  for (auto& [k, t] : saved) EXPECT_TRUE(bit_equal(loaded.at(k), t)) << k;
  EXPECT_TRUE(bit_equal(fresh.forward(batch()).logits, expected));
  EXPECT_TRUE(fresh.trainable_parameters().empty()) << "inference load freezes the adapter";
  // Only the delta is on disk: far smaller than the base.
  EXPECT_LT(std::filesystem::file_size(path + "/adapter_model.safetensors"), 200000u);
}

TEST_P(Conformance, ConfigJsonRoundTripAndUnknownKeys) {
  auto c = config();
  auto j = c->to_json();
  auto again = methods::parse_config(j);
  EXPECT_EQ(again->to_json(), j);
  auto bad = j;
  bad["definitely_not_a_key"] = 1;
  try {
    methods::parse_config(bad);
    FAIL() << "unknown key accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("definitely_not_a_key"), std::string::npos) << e.what();
  }
}

TEST_P(Conformance, GradientsMatchFiniteDifferencesInFloat64) {
  auto base = tiny_base(torch::kDouble);
  base->eval();
  PeftModel model(base);
  model.add_adapter("default", *config());
  perturb(model, 0.2);
  auto params = model.trainable_parameters();
  auto loss = model.forward(batch()).loss;
  auto grads = torch::autograd::grad({loss}, params);
  torch::NoGradGuard g;
  torch::manual_seed(3);
  for (size_t i = 0; i < params.size(); ++i) {
    auto flat = params[i].view(-1);
    for (int probe = 0; probe < 3; ++probe) {
      int64_t idx = torch::randint(flat.numel(), {1}).item<int64_t>();
      const double h = 1e-6, orig = flat[idx].item<double>();
      flat[idx].fill_(orig + h);
      double up = model.forward(batch()).loss.item<double>();
      flat[idx].fill_(orig - h);
      double down = model.forward(batch()).loss.item<double>();
      flat[idx].fill_(orig);
      double numeric = (up - down) / (2 * h);
      double analytic = grads[i].reshape(-1)[idx].item<double>();
      EXPECT_NEAR(analytic, numeric, 1e-6 + 1e-5 * std::abs(numeric)) << "param " << i << " index " << idx;
    }
  }
}

TEST_P(Conformance, GradientCheckpointingKeepsGradientsBitIdentical) {
  // Every T5 decoder block reads the encoder's output, so its gradient sums per-block parts,
  // in another order when the blocks are recomputed: close, not bit-equal.
  std::string mode = GetParam().method.checkpointing;
  if (GetParam().family == "t5" && mode == "exact") mode = "close";
  for (const bool dropout : {false, true}) {
    std::vector<at::Tensor> reference;
    double reference_loss = 0, reference_draw = 0;
    for (const bool checkpointing : {false, true}) {
      auto base = tiny_model(GetParam().family, c10::kFloat, 7,
                             dropout ? tiny_dropout(GetParam().family) : nlohmann::json::object());
      PeftModel model(base);
      torch::manual_seed(5);
      model.add_adapter("default", *config());
      perturb(model);
      model.train();
      model.set_gradient_checkpointing(checkpointing);
      torch::manual_seed(21);  // the same dropout draws in both runs
      if (checkpointing && mode == "refused") {
        EXPECT_THROW(model.forward_train(batch()), Error);
        return;
      }
      auto loss = model.forward_train(batch()).loss;
      loss.backward();
      const double draw = torch::rand({1}).item<double>();  // the recompute leaves the generator where it was
      std::vector<at::Tensor> grads;
      for (auto& p : model.trainable_parameters()) grads.push_back(p.grad().defined() ? p.grad().clone() : at::Tensor());
      if (!checkpointing) {
        reference = grads;
        reference_loss = loss.item<double>();
        reference_draw = draw;
        continue;
      }
      EXPECT_EQ(loss.item<double>(), reference_loss) << "dropout " << dropout;
      EXPECT_EQ(draw, reference_draw);
      ASSERT_EQ(grads.size(), reference.size());
      for (size_t i = 0; i < grads.size(); ++i) {
        ASSERT_EQ(grads[i].defined(), reference[i].defined()) << i;
        if (!grads[i].defined()) continue;
        if (mode == "close")
          EXPECT_LE(max_abs_diff(grads[i], reference[i]), 1e-6 * (1.0 + reference[i].abs().max().item<double>())) << i;
        else
          EXPECT_TRUE(bit_equal(grads[i], reference[i])) << "dropout " << dropout << " tensor " << i << " max diff "
                                                         << max_abs_diff(grads[i], reference[i]);
      }
    }
  }
}

TEST_P(Conformance, HalfPrecisionBaseTrainsFloat32Deltas) {
  auto base = tiny_base(torch::kBFloat16);
  PeftModel model(base);
  auto before = clone_base(*base, model.base_parameter_names());
  model.add_adapter("default", *config());
  perturb(model);
  std::set<const c10::TensorImpl*> base_tensors;
  auto named = base->named_parameters();
  for (const auto& name : model.base_parameter_names()) base_tensors.insert(named[name].unsafeGetTensorImpl());
  auto check_dtypes = [&] {
    for (const auto& p : model.trainable_parameters()) {
      // Trainable copies of base tensors (heads, norms, biases) keep the base's dtype.
      const bool copy = base_tensors.count(p.unsafeGetTensorImpl()) != 0;
      EXPECT_EQ(p.scalar_type(), copy ? torch::kBFloat16 : torch::kFloat) << "a " << c10::str(p.sizes()) << " tensor";
    }
  };
  check_dtypes();
  ASSERT_NO_FATAL_FAILURE(train_steps(model, 3));
  check_dtypes();
  model.disable_adapters();
  auto after = base->named_parameters();
  for (auto& [name, t] : before) {
    EXPECT_EQ(after[name].scalar_type(), torch::kBFloat16) << name;
    EXPECT_TRUE(bit_equal(after[name], t)) << name;
  }
}

TEST_P(Conformance, TrainsOnAQuantizedBaseAsOnItsDequantizedWeights) {
  // The NF4 base and a wide base holding its dequantized weights compute one function: the
  // method's loss and gradients agree, and training leaves the codes untouched.
  models::QuantizationConfig q;
  q.double_quant = true;
  auto quantized = tiny_base(), reference = tiny_base();
  models::quantize_model(*quantized, q);
  copy_dequantized_weights(*quantized, *reference);
  ASSERT_GT(models::quantized_storage(*quantized).layers, 0);
  std::vector<std::pair<double, std::vector<at::Tensor>>> runs;
  for (auto base : {quantized, reference}) {
    PeftModel model(base);
    torch::manual_seed(5);
    model.add_adapter("default", *config());
    perturb(model);
    model.eval();  // no dropout draws: both runs see the same function
    auto loss = model.forward_train(batch()).loss;
    loss.backward();
    std::vector<at::Tensor> grads;
    for (auto& p : model.trainable_parameters())
      grads.push_back(p.grad().defined() ? p.grad().clone() : torch::zeros_like(p));
    runs.emplace_back(loss.item<double>(), grads);
    model.unload();  // the quantized base trains again below
  }
  EXPECT_NEAR(runs[0].first, runs[1].first, 1e-5 * (1 + std::abs(runs[1].first)));
  ASSERT_EQ(runs[0].second.size(), runs[1].second.size());
  for (size_t i = 0; i < runs[0].second.size(); ++i) {
    const auto& a = runs[0].second[i];
    const auto& b = runs[1].second[i];
    EXPECT_LE(max_abs_diff(a, b), 1e-4 * (1 + b.abs().max().item<double>())) << "tensor " << i << " " << c10::str(b.sizes());
  }

  PeftModel model(quantized);
  torch::manual_seed(5);
  model.add_adapter("default", *config());
  std::map<std::string, at::Tensor> codes;
  for (auto& [name, lin] : quantized->adaptable_linears())
    if (lin->quantized()) codes[name] = lin->quantized_weight()->codes.clone();
  ASSERT_NO_FATAL_FAILURE(train_steps(model, 2));
  for (auto& [name, lin] : quantized->adaptable_linears())
    if (lin->quantized()) EXPECT_TRUE(bit_equal(lin->quantized_weight()->codes, codes.at(name))) << name;
}

TEST_P(Conformance, MatchesCpuOnCuda_CUDA) {
  ASSERT_TRUE(torch::cuda::is_available());
  // Adapters draw their init from the device's own generator, so the CUDA model is built on the
  // device (as an application would) and then given the CPU model's every tensor: both compute
  // the same function, and only the device's arithmetic differs.
  std::map<std::string, at::Tensor> cpu_tensors;
  auto run = [&](c10::Device device) {
    auto base = tiny_base();
    base->to(device);  // the base goes to the device first; adapters are created beside it
    PeftModel model(base);
    torch::manual_seed(5);
    model.add_adapter("default", *config());
    {
      torch::NoGradGuard g;
      if (device.is_cpu()) {
        auto gen = at::make_generator<at::CPUGeneratorImpl>(9);
        for (auto& p : model.trainable_parameters()) p.add_(torch::randn(p.sizes(), gen) * 0.05);
        for (const auto& p : base->named_parameters()) cpu_tensors[p.key()] = p.value().detach().clone();
        for (const auto& b : base->named_buffers()) cpu_tensors[b.key()] = b.value().detach().clone();
      } else {
        for (auto& p : base->named_parameters()) p.value().copy_(cpu_tensors.at(p.key()));
        for (auto& b : base->named_buffers()) b.value().copy_(cpu_tensors.at(b.key()));
      }
    }
    model.eval();
    auto out = model.forward(train::to_device(batch(), device));
    out.loss.backward();
    std::vector<at::Tensor> grads;
    for (auto& p : model.trainable_parameters()) grads.push_back(p.grad().cpu());
    return std::make_pair(out.logits.detach().cpu(), grads);
  };
  auto cpu = run(c10::Device(c10::kCPU));
  auto gpu = run(c10::Device(c10::kCUDA));
  EXPECT_LT(max_abs_diff(gpu.first, cpu.first), 1e-4);
  ASSERT_EQ(gpu.second.size(), cpu.second.size());
  for (size_t i = 0; i < cpu.second.size(); ++i)
    EXPECT_LT(max_abs_diff(gpu.second[i], cpu.second[i]), 1e-4 + 1e-3 * cpu.second[i].abs().max().item<double>()) << i;
}

bool is_prompt_method(const MethodCase& m) {
  const std::string type = m.config["peft_type"];
  return type == "PREFIX_TUNING" || type == "PROMPT_TUNING" || type == "P_TUNING";
}

/// What a mixed-adapter batch refuses for a case, as its error says it ("": supported).
std::string mixed_batch_refusal(const MethodCase& m) {
  const std::string type = m.config["peft_type"];
  if (type == "LST" || m.name == "s3pet_search_space") return "side network";
  return "";
}

/// The rows `which` of a batch (every per-row field), in that order.
models::ModelInputs rows_of(const models::ModelInputs& in, const std::vector<int64_t>& which) {
  const at::Tensor index = torch::tensor(which, torch::kLong);
  auto pick = [&](const at::Tensor& t) { return t.defined() ? t.index_select(0, index) : t; };
  models::ModelInputs out = in;
  out.input_ids = pick(in.input_ids);
  out.attention_mask = pick(in.attention_mask);
  out.token_type_ids = pick(in.token_type_ids);
  out.pixel_values = pick(in.pixel_values);
  out.labels = pick(in.labels);
  return out;
}

/// Four distinct rows of different lengths (right-padded text; images for ViT) with the family's labels.
models::ModelInputs varied_batch(const std::string& family) {
  torch::manual_seed(21);
  models::ModelInputs in;
  if (family == "vit") {
    in.pixel_values = torch::randn({4, 2, 12, 12});
    in.labels = torch::tensor({1, 4, 0, 2}, torch::kLong);
    return in;
  }
  const std::vector<int64_t> lengths = {9, 6, 8, 4};
  const int64_t pad = family == "roberta" ? 1 : 0;
  in.input_ids = torch::randint(2, 61, {4, 9}, torch::kLong);
  in.attention_mask = torch::ones({4, 9}, torch::kLong);
  for (int64_t i = 0; i < 4; ++i) {
    in.attention_mask.index_put_({i, torch::indexing::Slice(lengths[i], 9)}, 0);
    in.input_ids.index_put_({i, torch::indexing::Slice(lengths[i], 9)}, pad);
  }
  if (family == "bert") in.token_type_ids = (torch::arange(9) >= 3).to(torch::kLong).unsqueeze(0).repeat({4, 1});
  in.labels = is_classifier(family) ? torch::tensor({2, 0, 1, 2}, torch::kLong)
                                    : torch::where(in.attention_mask.to(torch::kBool), in.input_ids, torch::full_like(in.input_ids, -100));
  return in;
}

/// The methods whose every trainable tensor has a per-sample rule (DP-SGD runs them batched).
bool has_per_sample_rules(const MethodCase& m) {
  static const std::set<std::string> kTypes = {"LORA", "IA3", "BITFIT", "BOTTLENECK_ADAPTER", "DSEE", "SPARSE_ADAPTER"};
  return kTypes.count(m.config["peft_type"].get<std::string>()) != 0 || m.name.rfind("s3pet_structure", 0) == 0;
}

TEST_P(Conformance, PerSampleGradientsEqualThePerExampleLoopInFloat64) {
  auto base = tiny_base(torch::kDouble);
  PeftModel model(base);
  model.add_adapter("default", *config());
  perturb(model, 0.2);
  model.eval();  // dropout off: the batched pass and the loop see the same function
  std::vector<at::Tensor> params;
  std::vector<std::string> names;
  for (const auto& p : model.base_model().named_parameters())
    if (p.value().requires_grad()) {
      params.push_back(p.value());
      names.push_back(p.key());
    }
  const auto in = varied_batch(GetParam().family);
  auto forward = [&](const models::ModelInputs& x) { return model.forward(x); };
  privacy::PerSampleBatch batched(forward, in, params, privacy::PerSampleNorms::kMaterialize, names);
  if (!batched.ok()) {
    EXPECT_FALSE(has_per_sample_rules(GetParam().method)) << batched.why();
    const bool named = std::any_of(names.begin(), names.end(), [&](const std::string& n) { return batched.why().find("'" + n + "'") != std::string::npos; });
    EXPECT_TRUE(named) << "the reason names the tensor: " << batched.why();
    return;
  }
  const auto& o = batched.norms();
  const std::vector<double> factors = {0.3, 1.0, 0.7, 0.1};
  std::vector<at::Tensor> expected_sum, sum;
  for (const auto& p : params) {
    expected_sum.push_back(torch::zeros_like(p));
    sum.push_back(torch::zeros_like(p));
  }
  for (int64_t i = 0; i < 4; ++i) {
    for (const auto& p : params) p.mutable_grad().reset();
    model.forward(rows_of(in, {i})).loss.backward();
    double norm_sq = 0;
    for (size_t k = 0; k < params.size(); ++k) {
      const at::Tensor own = params[k].grad().defined() ? params[k].grad() : torch::zeros_like(params[k]);
      norm_sq += own.pow(2).sum().item<double>();
      expected_sum[k] += own * factors[static_cast<size_t>(i)];
      const double tol = 1e-10 * std::max(1.0, own.abs().max().item<double>());
      EXPECT_LT(max_abs_diff(batched.gradient(k)[i], own), tol) << "example " << i << " tensor " << k;
    }
    EXPECT_NEAR(o[i].item<double>(), std::sqrt(norm_sq), 1e-10 * std::max(1.0, std::sqrt(norm_sq))) << "example " << i;
  }
  batched.add_weighted(sum, torch::tensor(factors, torch::kFloat64));
  for (size_t k = 0; k < params.size(); ++k)
    EXPECT_LT(max_abs_diff(sum[k], expected_sum[k]), 1e-10 * std::max(1.0, expected_sum[k].abs().max().item<double>())) << k;
  // The ghost norm (no per-sample gradient formed) gives the same norms and sums.
  privacy::PerSampleBatch ghost(forward, in, params, privacy::PerSampleNorms::kGhost);
  ASSERT_TRUE(ghost.ok()) << ghost.why();
  EXPECT_LT(max_abs_diff(ghost.norms(), o), 1e-10 * std::max(1.0, o.max().item<double>()));
  for (auto& t : sum) t.zero_();
  ghost.add_weighted(sum, torch::tensor(factors, torch::kFloat64));
  for (size_t k = 0; k < params.size(); ++k)
    EXPECT_LT(max_abs_diff(sum[k], expected_sum[k]), 1e-10 * std::max(1.0, expected_sum[k].abs().max().item<double>())) << k;
}

TEST_P(Conformance, MixedAdapterBatchEqualsEachRowAlone) {
  PeftModel model(tiny_base());
  model.eval();
  model.add_adapter("a", *config());
  perturb(model);
  model.add_adapter("b", *config());
  model.set_adapter("b");
  perturb(model, 0.08);
  model.set_adapter("a");
  torch::NoGradGuard g;
  const auto in = rows_of(batch(), {0, 1, 1, 0});
  // Prompt methods share a batch only with prompts of the same length: no bare-base row.
  const bool prompt = is_prompt_method(GetParam().method);
  const std::vector<std::string> names = prompt ? std::vector<std::string>{"a", "b", "a", "b"}
                                                : std::vector<std::string>{"a", "__base__", "b", "b"};
  const std::string refusal = mixed_batch_refusal(GetParam().method);
  if (!refusal.empty()) {
    const std::string error = error_of([&] { model.forward(in, names); });
    EXPECT_NE(error.find(refusal), std::string::npos) << error;
    EXPECT_NE(error.find("'a'"), std::string::npos) << error;
  } else {
    const at::Tensor mixed = model.forward(in, names).logits.clone();
    EXPECT_EQ(model.active_adapter(), "a") << "the active adapter is left as it was";
    for (int64_t i = 0; i < 4; ++i) {
      const auto& name = names[static_cast<size_t>(i)];
      if (name == "__base__") {
        model.disable_adapters();
      } else {
        model.enable_adapters();
        model.set_adapter(name);
      }
      const at::Tensor alone = model.forward(rows_of(in, {i})).logits;
      // Batched products round differently; relative to the logits' scale (T5's untied head gives larger ones).
      EXPECT_LT(max_abs_diff(mixed[i], alone[0]), 1e-6 * std::max(1.0, alone.abs().max().item<double>()))
          << "row " << i << " (" << name << ")";
    }
    model.enable_adapters();
    if (prompt) {
      const std::string error = error_of([&] { model.forward(in, {"a", "__base__", "a", "b"}); });
      EXPECT_NE(error.find("virtual tokens"), std::string::npos) << error;
    }
  }
  // Every row on one adapter: the active-adapter forward, bit for bit (for refused methods too).
  model.set_adapter("b");
  const at::Tensor active_b = model.forward(in).logits.clone();
  model.set_adapter("a");
  EXPECT_TRUE(bit_equal(model.forward(in, {"b", "b", "b", "b"}).logits, active_b));
  EXPECT_EQ(model.active_adapter(), "a");
  model.disable_adapters();
  const at::Tensor bare = model.forward(in).logits.clone();
  model.enable_adapters();
  EXPECT_TRUE(bit_equal(model.forward(in, {"__base__", "__base__", "__base__", "__base__"}).logits, bare));
}

bool is_decoder(const std::string& family) { return family == "gpt2" || family == "llama"; }

/// The method cases on the causal-LM families (what can decode).
class Decoding : public Conformance {};

std::vector<Combo> decoder_combos() {
  std::vector<Combo> out;
  for (const auto& c : combos())
    if (is_decoder(c.family)) out.push_back(c);
  return out;
}

bool is_side_network(const MethodCase& m) { return m.config["peft_type"] == "LST"; }

/// Greedy decoding with each step's logits kept.
GenerationConfig greedy_with_logits(int64_t tokens, bool cached) {
  GenerationConfig c;
  c.max_new_tokens = tokens;
  c.output_logits = true;
  c.use_cache = cached;
  return c;
}

void expect_same_decoding(const GenerationResult& a, const GenerationResult& b, const std::string& what) {
  EXPECT_EQ(a.tokens, b.tokens) << what;
  ASSERT_EQ(a.logits.size(), b.logits.size()) << what;
  for (size_t i = 0; i < a.logits.size(); ++i) EXPECT_LT(max_abs_diff(a.logits[i], b.logits[i]), 1e-5) << what << " step " << i;
}

TEST_P(Decoding, CachedEqualsRecomputingTheContext) {
  PeftModel model(tiny_base());
  model.add_adapter("default", *config());
  perturb(model);
  const std::vector<int64_t> prompt = {3, 17, 42, 8, 25};
  const auto reference = generate(model, prompt, greedy_with_logits(6, false));
  ASSERT_EQ(reference.tokens.size(), 6u);
  // An adapter whose side network cannot decode with a cache (LST) is recomputed instead.
  expect_same_decoding(generate(model, prompt, greedy_with_logits(6, true)), reference, "cached");
}

TEST_P(Decoding, BatchedEqualsEachRowAlone) {
  PeftModel model(tiny_base());
  model.add_adapter("default", *config());
  perturb(model);
  const std::vector<std::vector<int64_t>> prompts = {{3, 17, 42, 8, 25}, {9}, {11, 12, 13}};
  const auto c = greedy_with_logits(5, !is_side_network(GetParam().method));
  const auto batch = generate_batch(model, prompts, c);
  ASSERT_EQ(batch.size(), prompts.size());
  for (size_t r = 0; r < prompts.size(); ++r)
    expect_same_decoding(batch[r], generate(model, prompts[r], c), "row " + std::to_string(r));
}

TEST_P(Decoding, MixedAdapterGenerationEqualsEachRowAlone) {
  PeftModel model(tiny_base());
  model.add_adapter("a", *config());
  perturb(model);
  model.add_adapter("b", *config());
  model.set_adapter("b");
  perturb(model, 0.08);
  const bool prompt = is_prompt_method(GetParam().method);
  const std::vector<std::vector<int64_t>> prompts = {{3, 17, 42, 8, 25}, {9}, {11, 12, 13}};
  auto c = greedy_with_logits(5, !is_side_network(GetParam().method));
  c.adapter_names = prompt ? std::vector<std::string>{"a", "b", "a"} : std::vector<std::string>{"a", "__base__", "b"};
  const std::string refusal = mixed_batch_refusal(GetParam().method);
  if (!refusal.empty() && c.use_cache) {
    const std::string error = error_of([&] { generate_batch(model, prompts, c); });
    EXPECT_NE(error.find(refusal), std::string::npos) << error;
    c.use_cache = false;  // uncached, each row runs alone: that works for every method
  }
  const auto batch = generate_batch(model, prompts, c);
  ASSERT_EQ(batch.size(), prompts.size());
  const auto alone = greedy_with_logits(5, c.use_cache);
  for (size_t r = 0; r < prompts.size(); ++r) {
    if (c.adapter_names[r] == "__base__") {
      model.disable_adapters();
    } else {
      model.enable_adapters();
      model.set_adapter(c.adapter_names[r]);
    }
    expect_same_decoding(batch[r], generate(model, prompts[r], alone), "row " + std::to_string(r));
  }
}

TEST(ConformanceT5, MethodsThatDoNotApplyToT5AreRefusedByName) {
  for (const auto& entry : kRefusedOnT5) {
    const std::string& name = entry.first;
    const std::string& reason = entry.second;
    const auto it = std::find_if(kCases.begin(), kCases.end(), [&](const MethodCase& c) { return c.name == name; });
    ASSERT_NE(it, kCases.end()) << name;
    auto config = it->config;
    config["task_type"] = "SEQ_2_SEQ_LM";
    PeftModel model(tiny_model("t5"));
    const std::string why = error_of([&] {
      model.add_adapter("default", *methods::parse_config(config));
      model.forward_train(tiny_batch("t5"));
    });
    EXPECT_NE(why.find(reason), std::string::npos) << name << ": " << why;
  }
}

INSTANTIATE_TEST_SUITE_P(Methods, Conformance, ::testing::ValuesIn(combos()),
                         [](const auto& info) { return info.param.method.name + "_" + info.param.family; });
INSTANTIATE_TEST_SUITE_P(Methods, Decoding, ::testing::ValuesIn(decoder_combos()),
                         [](const auto& info) { return info.param.method.name + "_" + info.param.family; });

TEST(ConformanceCoverage, EveryRegisteredMethodHasACase) {
  for (const auto& name : methods::method_names()) {
    bool covered = false;
    for (const auto& c : kCases) covered = covered || methods::find_method(c.config["peft_type"]).name == name;
    EXPECT_TRUE(covered) << "method '" << name << "' is not in the conformance suite";
  }
}

}  // namespace
}  // namespace peft::test
