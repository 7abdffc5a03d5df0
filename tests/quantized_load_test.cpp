// Quantizing at load: each checkpoint tensor is quantized as it is read, with the result of
// quantizing the loaded model in memory; which layers stay wide; the fingerprint of the
// unquantized base; counts and merges on a quantized base.
#include <filesystem>

#include <torch/torch.h>

#include "peft/checkpoint/delta.h"
#include "peft/core/strings.h"
#include "peft/inspect.h"
#include "peft/methods/method.h"
#include "peft/models/load.h"
#include "peft/models/quantize.h"
#include "peft/models/save.h"
#include "peft/peft_model.h"
#include "peft/train/run_config.h"
#include "test_util.h"
#include "tiny_models.h"

namespace peft::test {
namespace {

models::QuantizationConfig nf4(bool double_quant = true, c10::ScalarType compute = torch::kFloat) {
  models::QuantizationConfig c;
  c.type = nn::QuantType::kNF4;
  c.double_quant = double_quant;
  c.compute_dtype = compute;
  return c;
}

std::shared_ptr<models::PretrainedModel> load_quantized(const std::string& dir, const models::QuantizationConfig& q) {
  models::LoadOptions o;
  o.quantization = q;
  return models::load_pretrained(dir, o);
}

TEST(QuantizedLoad, QuantizingWhileReadingEqualsQuantizingTheLoadedModelOnEveryFamily) {
  for (const auto type : {nn::QuantType::kNF4, nn::QuantType::kInt8, nn::QuantType::kFP4})
    for (const auto& family : tiny_families()) {
      TempDir dir;
      models::save_pretrained(*tiny_model(family), dir.path());
      auto q = nf4(type != nn::QuantType::kInt8);
      q.type = type;
      auto loaded = load_quantized(dir.path(), q);
      auto in_memory = models::load_pretrained(dir.path());
      models::quantize_model(*in_memory, q);
      const auto names = models::linears_to_quantize(*in_memory, q);
      EXPECT_FALSE(names.empty()) << family;
      auto other = in_memory->adaptable_linears();
      size_t i = 0, quantized = 0;
      for (auto& [name, lin] : loaded->adaptable_linears()) {
        auto& ref = other.at(i++).second;
        ASSERT_EQ(lin->quantized(), ref->quantized()) << family << " " << name;
        if (!lin->quantized()) continue;
        ++quantized;
        EXPECT_TRUE(bit_equal(lin->quantized_weight()->codes, ref->quantized_weight()->codes)) << name;
        EXPECT_TRUE(bit_equal(lin->weight_out_in(), ref->weight_out_in())) << name;
        EXPECT_EQ(lin->weight.numel(), 0) << "no wide copy stays: " << name;
      }
      EXPECT_EQ(quantized, names.size()) << family;
      loaded->eval();
      in_memory->eval();
      EXPECT_TRUE(bit_equal(loaded->forward(tiny_batch(family)).logits, in_memory->forward(tiny_batch(family)).logits))
          << family << " " << nn::quant_type_name(type);
    }
}

TEST(QuantizedLoad, HeadsTiedWeightsAndSkippedModulesStayWideInTheComputeDtype) {
  TempDir dir;
  models::save_pretrained(*tiny_model("gpt2"), dir.path());
  auto q = nf4(true, torch::kBFloat16);
  q.skip_modules = std::vector<std::string>{"mlp.c_proj", "h.0.attn.c_attn"};
  auto model = load_quantized(dir.path(), q);
  for (auto& [name, lin] : model->adaptable_linears()) {
    const bool wide = name == "lm_head" || core::ends_with(name, "mlp.c_proj") || name == "transformer.h.0.attn.c_attn";
    EXPECT_EQ(lin->quantized(), !wide) << name;
    if (lin->bias.defined()) EXPECT_EQ(lin->bias.scalar_type(), torch::kBFloat16) << name;
  }
  for (auto& p : model->named_parameters())
    if (p.value().numel() > 0) EXPECT_EQ(p.value().scalar_type(), torch::kBFloat16) << p.key();
  // The tied head still shares the (wide) embedding.
  for (auto& [name, lin] : model->adaptable_linears())
    if (name == "lm_head") EXPECT_EQ(lin->weight.data_ptr(), model->named_parameters()["transformer.wte.weight"].data_ptr());

  TempDir cls;
  models::save_pretrained(*tiny_model("bert"), cls.path());
  auto bert = load_quantized(cls.path(), nf4());
  for (auto& [name, lin] : bert->adaptable_linears())
    EXPECT_EQ(lin->quantized(), name != "classifier" && !core::is_under(name, "classifier"))
        << "a task head trains, never quantized: " << name;
  // The heads stay wide by default (an untied LM head: LLaMA's); an explicit list replaces that.
  TempDir lm;
  models::save_pretrained(*tiny_model("llama"), lm.path());
  for (const auto& skip : {std::vector<std::string>{"lm_head"}, std::vector<std::string>{}}) {
    auto qc = nf4();
    qc.skip_modules = skip;
    for (auto& [name, lin] : load_quantized(lm.path(), qc)->adaptable_linears())
      if (name == "lm_head") EXPECT_EQ(lin->quantized(), skip.empty());
  }
}

TEST(QuantizedLoad, FingerprintAndParameterCountEqualTheUnquantizedBase) {
  for (const auto& family : tiny_families()) {
    TempDir dir;
    models::save_pretrained(*tiny_model(family), dir.path());
    models::LoadOptions bf16;
    bf16.dtype = torch::kBFloat16;
    PeftModel wide(models::load_pretrained(dir.path(), bf16));
    PeftModel quantized(load_quantized(dir.path(), nf4(true, torch::kBFloat16)));
    EXPECT_EQ(quantized.base_fingerprint(), wide.base_fingerprint()) << family;
    EXPECT_EQ(quantized.count_parameters().total, wide.count_parameters().total) << family;
    EXPECT_EQ(quantized.base_parameter_count(), wide.base_parameter_count()) << family;
    const auto storage = models::quantized_storage(quantized.base_model());
    const std::string report = quantized.trainable_parameters_report();
    EXPECT_EQ(report.rfind(wide.trainable_parameters_report(), 0), 0u) << report;  // HF's line, then the storage
    EXPECT_NE(report.find(fmt::format("quantized: {} linears, nf4 (double quant)", storage.layers)), std::string::npos)
        << report;
    EXPECT_EQ(wide.trainable_parameters_report().find("quantized"), std::string::npos);
    PeftModel fp32(models::load_pretrained(dir.path()));
    EXPECT_EQ(fp32.base_fingerprint(), wide.base_fingerprint()) << family;
  }
}

TEST(QuantizedLoad, TheModuleTreeShowsEachLayersStorageAndBytes) {
  TempDir dir;
  models::save_pretrained(*tiny_model("gpt2"), dir.path());
  auto wide = models::load_pretrained(dir.path());
  auto quantized = load_quantized(dir.path(), nf4());
  TreeOptions o;
  o.show_bytes = true;
  const std::string a = module_tree(*wide, "m", o), b = module_tree(*quantized, "m", o);
  // Same counts (the codes stand for the weights), fewer bytes, the format per weight.
  const auto first = [](const std::string& t) { return t.substr(0, t.find('\n')); };
  EXPECT_EQ(first(a).substr(0, first(a).rfind("  ")), first(b).substr(0, first(b).rfind("  "))) << a << b;
  for (auto& [name, lin] : quantized->adaptable_linears())
    if (lin->quantized()) {
      const auto& shape = lin->original_weight_identity().shape;
      const std::string expect = fmt::format("weight [{}, {}] nf4+dq {}", shape[0], shape[1],
                                             core::human_bytes(lin->quantized_weight()->bytes()));
      EXPECT_NE(b.find(expect), std::string::npos) << expect << "\n" << b;
    }
  EXPECT_NE(a.find("] float32"), std::string::npos) << a;
  EXPECT_EQ(a.find("nf4"), std::string::npos);
}

TEST(QuantizedLoad, ADeltaTrainedOnTheQuantizedBaseLoadsOnTheWideOneAndBack) {
  TempDir dir, delta;
  models::save_pretrained(*tiny_model("llama"), dir.path());
  auto cfg = methods::parse_config({{"peft_type", "LORA"}, {"r", 4}, {"lora_alpha", 8}, {"task_type", "CAUSAL_LM"}});
  PeftModel quantized(load_quantized(dir.path(), nf4()));
  quantized.add_adapter("default", *cfg);
  {
    torch::NoGradGuard g;
    for (auto& p : quantized.trainable_parameters()) p.add_(torch::randn(p.sizes()) * 0.1);
  }
  checkpoint::save_adapter(quantized, delta.path());
  PeftModel wide(models::load_pretrained(dir.path()));
  checkpoint::load_adapter(wide, delta.path());  // a fingerprint mismatch would throw
  auto a = quantized.adapter_state_dict("default"), b = wide.adapter_state_dict("default");
  ASSERT_EQ(a.size(), b.size());
  for (const auto& [k, t] : a) EXPECT_TRUE(bit_equal(t, b.at(k))) << k;
  PeftModel again(load_quantized(dir.path(), nf4(false)));
  checkpoint::load_adapter(again, delta.path());
  // Another base is still refused.
  TempDir other;
  models::save_pretrained(*tiny_model("llama", torch::kFloat, /*seed=*/8), other.path());
  PeftModel stranger(load_quantized(other.path(), nf4()));
  EXPECT_NE(error_of([&] { checkpoint::load_adapter(stranger, delta.path()); }).find("different base"),
            std::string::npos);
}

TEST(QuantizedLoad, MergeRequantizesOnlyOnRequestAndReportsTheErrorItAdds) {
  TempDir dir;
  models::save_pretrained(*tiny_model("llama"), dir.path());
  PeftModel model(load_quantized(dir.path(), nf4()));
  model.add_adapter("default", *methods::parse_config({{"peft_type", "LORA"}, {"r", 4}, {"lora_alpha", 8},
                                                      {"target_modules", {"q_proj", "v_proj"}}}));
  {
    torch::NoGradGuard g;
    for (auto& p : model.trainable_parameters()) p.add_(torch::randn(p.sizes()) * 0.2);
  }
  model.eval();
  const auto batch = tiny_batch("llama");
  const at::Tensor unmerged = model.forward(batch).logits;
  // One quantization's worth of change in the logits: the same delta on the wide base.
  TempDir delta;
  checkpoint::save_adapter(model, delta.path());
  PeftModel wide(models::load_pretrained(dir.path()));
  checkpoint::load_adapter(wide, delta.path());
  wide.eval();
  const double quantization_cost = max_abs_diff(wide.forward(batch).logits, unmerged);
  EXPECT_NE(error_of([&] { model.merge_adapter(); }).find("requantization"), std::string::npos);
  EXPECT_FALSE(model.merged());
  const auto error = model.merge_adapter(/*requantize=*/true);
  const int64_t layers = 2 * tiny_config("llama")["num_hidden_layers"].get<int64_t>();
  EXPECT_EQ(error.layers, layers);
  EXPECT_GT(error.max_abs, 0.0);
  EXPECT_LT(error.rms, 0.2 * error.weight_rms) << "an NF4 step, not garbage";
  const at::Tensor merged = model.forward(batch).logits;
  EXPECT_LT(max_abs_diff(merged, unmerged), 2 * quantization_cost);
  EXPECT_GT(max_abs_diff(merged, unmerged), 0.0) << "requantizing is lossy";
  const auto back = model.unmerge_adapter();
  EXPECT_EQ(back.layers, layers);
  EXPECT_LT(max_abs_diff(model.forward(batch).logits, unmerged), 3 * quantization_cost);
  nn::RequantizationError final_error;
  auto plain = model.merge_and_unload(/*requantize=*/true, &final_error);
  EXPECT_EQ(final_error.layers, layers);
  EXPECT_TRUE(plain->adaptable_linears().front().second->quantized());
  // A quantized model has no Hugging Face form: refused by name, nothing written.
  TempDir out;
  const std::string target = out.file("merged");
  EXPECT_NE(error_of([&] { models::save_pretrained(*plain, target); }).find("stored quantized (nf4)"), std::string::npos);
  EXPECT_FALSE(std::filesystem::exists(target));
}

TEST(QuantizedLoad, RunConfigQuantizationKeyAndItsErrors) {
  const nlohmann::json ok = {{"model", "m"},
                             {"quantization",
                              {{"type", "nf4"}, {"double_quant", true}, {"compute_dtype", "bfloat16"},
                               {"skip_modules", {"lm_head"}}}}};
  auto load = train::load_options_from_json(ok, "run.json");
  ASSERT_TRUE(load.quantization.has_value());
  EXPECT_EQ(load.quantization->type, nn::QuantType::kNF4);
  EXPECT_TRUE(load.quantization->double_quant);
  EXPECT_EQ(load.quantization->compute_dtype, torch::kBFloat16);
  EXPECT_EQ(load.quantization->skip_modules, std::vector<std::string>{"lm_head"});
  EXPECT_FALSE(models::QuantizationConfig::from_json({{"type", "int8"}}, "x").skip_modules.has_value());
  EXPECT_EQ(models::QuantizationConfig::from_json(load.quantization->to_json(), "x").to_json(),
            load.quantization->to_json());
  auto bad = [](const nlohmann::json& q) {
    return error_of([&] { train::load_options_from_json({{"quantization", q}}, "run.json"); });
  };
  EXPECT_NE(bad({{"type", "nf2"}}).find("quantization.type"), std::string::npos);
  EXPECT_NE(bad({{"double_quant", true}}).find("quantization.type is required"), std::string::npos);
  EXPECT_NE(bad({{"type", "int8"}, {"double_quant", true}}).find("double_quant"), std::string::npos);
  EXPECT_NE(bad({{"type", "nf4"}, {"compute_dtype", "float8"}}).find("compute_dtype"), std::string::npos);
  EXPECT_NE(bad({{"type", "nf4"}, {"skip", {"x"}}}).find("skip"), std::string::npos);
  EXPECT_NE(bad("nf4").find("must be an object"), std::string::npos);
}

TEST(QuantizedLoad, RandomModelIsBuiltDirectlyInQuantizedStorage) {
  auto q = nf4(true, torch::kBFloat16);
  auto model = models::create_model_on(tiny_config("llama"), torch::kCPU, torch::kBFloat16, "", q);
  const auto storage = models::quantized_storage(*model);
  EXPECT_EQ(storage.layers, static_cast<int64_t>(models::linears_to_quantize(*model, q).size()));
  EXPECT_EQ(storage.formats, "nf4 (double quant)");
  for (auto& [name, lin] : model->adaptable_linears())
    if (lin->quantized()) {
      const at::Tensor w = lin->weight_out_in();
      EXPECT_EQ(w.scalar_type(), torch::kBFloat16);
      const double std = w.to(torch::kFloat).std().item<double>();
      EXPECT_GT(std, 0.01) << name;  // N(0, 0.02²) drawn, quantized
      EXPECT_LT(std, 0.04) << name;
    }
  model->eval();
  EXPECT_TRUE(torch::isfinite(model->forward(tiny_batch("llama")).logits).all().item<bool>());
}

}  // namespace
}  // namespace peft::test
