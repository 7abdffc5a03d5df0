// The folded module tree (peft-inspect's output) on real models, with and without an adapter.
#include <torch/torch.h>

#include "peft/core/strings.h"
#include "peft/inspect.h"
#include "peft/methods/method.h"
#include "peft/models/load.h"
#include "peft/peft_model.h"
#include "test_util.h"

namespace peft::test {
namespace {

bool has(const std::string& text, const std::string& needle) { return text.find(needle) != std::string::npos; }

TEST(ModuleTree, FoldsRepeatedLayersWithCounts) {
  auto model = models::load_pretrained(fixture("hf/models/gpt2"));
  const auto tree = module_tree(*model, model->architecture());
  EXPECT_TRUE(has(tree, "GPT2LMHeadModel  ")) << tree;
  EXPECT_TRUE(has(tree, "├─ h.0-1  GPT2Block ×2  49,984 each")) << tree;
  EXPECT_TRUE(has(tree, "c_attn  AdaptableLinear  12,480  weight [64, 192], bias [192]")) << tree;
  EXPECT_FALSE(has(tree, "trainable")) << tree;
  int64_t total = 0;
  for (const auto& p : model->parameters()) total += p.numel();
  EXPECT_TRUE(has(tree.substr(0, tree.find('\n')), core::with_thousands(total))) << tree;

  TreeOptions unfolded;
  unfolded.fold_repeats = false;
  const auto full = module_tree(*model, model->architecture(), unfolded);
  EXPECT_TRUE(has(full, "h.0  GPT2Block  49,984") && has(full, "h.1  GPT2Block  49,984")) << full;
  TreeOptions shallow;
  shallow.max_depth = 1;
  const auto top = module_tree(*model, model->architecture(), shallow);
  EXPECT_EQ(std::count(top.begin(), top.end(), '\n'), 2) << top;
}

TEST(ModuleTree, ShowsWhereAnAdapterAttachedAndWhatTrains) {
  PeftModel model(models::load_pretrained(fixture("hf/models/llama")));
  model.add_adapter("default", *methods::parse_config(
                                   {{"peft_type", "LORA"}, {"r", 4}, {"target_modules", {"v_proj"}}, {"layers_to_transform", {1}}}));
  const auto tree = module_tree(model.base_model(), "llama");
  // Layer 1 now differs from layer 0: the fold splits.
  EXPECT_TRUE(has(tree, "layers.0  LlamaDecoderLayer  46,208\n")) << tree;
  EXPECT_TRUE(has(tree, "layers.1  LlamaDecoderLayer  46,592 (384 trainable)")) << tree;
  EXPECT_TRUE(has(tree, "lora_B  Linear  128 (128 trainable)  weight [32, 4]*")) << tree;
}

}  // namespace
}  // namespace peft::test
