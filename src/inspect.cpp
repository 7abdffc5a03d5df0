#include "peft/inspect.h"

#include <cctype>
#include <vector>

#include <torch/torch.h>

#include "peft/core/dtype.h"
#include "peft/core/strings.h"
#include "peft/nn/adaptable_linear.h"

namespace peft {
namespace {

using ModulePtr = std::shared_ptr<torch::nn::Module>;

struct Counts {
  int64_t total = 0;
  int64_t trainable = 0;
  int64_t bytes = 0;
};

const nn::QuantizedWeight* quantized_of(const torch::nn::Module& m) {
  const auto* lin = dynamic_cast<const nn::AdaptableLinearImpl*>(&m);
  return lin ? lin->quantized_weight() : nullptr;
}

std::string quant_label(const nn::QuantizedWeight& q) {
  return nn::quant_type_name(q.type) + (q.double_quant() ? "+dq" : "");
}

Counts count(const torch::nn::Module& m) {
  Counts c;
  for (const auto& p : m.parameters(true)) {
    c.total += p.numel();
    c.bytes += static_cast<int64_t>(p.numel() * p.element_size());
    if (p.requires_grad()) c.trainable += p.numel();
  }
  // A quantized weight holds no elements itself: its codes stand for them.
  auto add_quantized = [&c](const torch::nn::Module& module) {
    if (const auto* q = quantized_of(module)) {
      c.total += q->numel();
      c.bytes += q->bytes();
    }
  };
  add_quantized(m);
  for (const auto& child : m.modules(/*include_self=*/false)) add_quantized(*child);
  return c;
}

std::string class_name(const torch::nn::Module& m) {
  std::string n = m.name();
  if (auto pos = n.rfind("::"); pos != std::string::npos) n = n.substr(pos + 2);
  if (n.size() > 4 && n.compare(n.size() - 4, 4, "Impl") == 0) n.resize(n.size() - 4);
  return n;
}

bool is_index(const std::string& s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](unsigned char c) { return std::isdigit(c); });
}

bool is_list(const torch::nn::Module& m) {
  return dynamic_cast<const torch::nn::ModuleListImpl*>(&m) != nullptr;
}

/// Structure, shapes, dtypes and trainability of a subtree: equal signatures fold together.
std::string signature(const torch::nn::Module& m) {
  std::string s = class_name(m) + "{";
  for (const auto& p : m.named_parameters(false))
    s += fmt::format("{}:{}:{}:{};", p.key(), c10::str(p.value().sizes()), c10::toString(p.value().scalar_type()),
                     p.value().requires_grad());
  if (const auto* q = quantized_of(m)) s += quant_label(*q) + ";";
  for (const auto& c : m.named_children()) s += c.key() + "=" + signature(*c.value()) + ";";
  return s + "}";
}

std::string own_tensors(const torch::nn::Module& m, bool storage) {
  std::vector<std::string> parts;
  const auto* lin = dynamic_cast<const nn::AdaptableLinearImpl*>(&m);
  const nn::QuantizedWeight* q = lin ? lin->quantized_weight() : nullptr;
  for (const auto& p : m.named_parameters(false)) {
    if (q && p.key() == "weight") {
      parts.push_back(fmt::format("weight {} {} {}", c10::str(c10::IntArrayRef(lin->original_weight_identity().shape)),
                                  quant_label(*q), core::human_bytes(q->bytes())));
      continue;
    }
    std::string part = fmt::format("{} {}{}", p.key(), c10::str(p.value().sizes()), p.value().requires_grad() ? "*" : "");
    if (storage) part += " " + core::dtype_name(p.value().scalar_type());
    parts.push_back(part);
  }
  return fmt::format("{}", fmt::join(parts, ", "));
}

struct Entry {
  std::string name;
  ModulePtr module;
  int64_t repeats = 1;
};

/// Children to print, with a ModuleList's entries lifted into the parent ("h.0") and folded.
std::vector<Entry> entries(const torch::nn::Module& m, const TreeOptions& options) {
  std::vector<Entry> out;
  for (const auto& c : m.named_children()) {
    // Empty extension points (a block's adapter slots before any adapter) are not shown.
    if (c.value()->children().empty() && c.value()->parameters().empty() && c.value()->buffers().empty()) continue;
    if (!is_list(*c.value())) {
      out.push_back({c.key(), c.value()});
      continue;
    }
    std::vector<Entry> items;
    for (const auto& item : c.value()->named_children()) items.push_back({item.key(), item.value()});
    for (size_t i = 0; i < items.size();) {
      size_t j = i + 1;
      if (options.fold_repeats && is_index(items[i].name)) {
        const auto sig = signature(*items[i].module);
        while (j < items.size() && is_index(items[j].name) && signature(*items[j].module) == sig) ++j;
      }
      Entry e{c.key() + "." + items[i].name, items[i].module, static_cast<int64_t>(j - i)};
      if (j - i > 1) e.name = fmt::format("{}.{}-{}", c.key(), items[i].name, items[j - 1].name);
      out.push_back(e);
      i = j;
    }
  }
  return out;
}

void render(const Entry& e, const std::string& lead, const std::string& child_lead, int depth,
            const TreeOptions& options, std::string& out) {
  const Counts c = count(*e.module);
  const std::string cls = class_name(*e.module);
  std::string line = e.name == cls ? lead + cls : fmt::format("{}{}  {}", lead, e.name, cls);
  if (e.repeats > 1) line += fmt::format(" ×{}", e.repeats);
  line += fmt::format("  {}{}", core::with_thousands(c.total), e.repeats > 1 ? " each" : "");
  if (c.trainable > 0) line += fmt::format(" ({} trainable)", core::with_thousands(c.trainable));
  if (options.show_bytes) line += "  " + core::human_bytes(c.bytes);
  if (options.show_shapes) {
    auto own = own_tensors(*e.module, options.show_bytes);
    if (!own.empty()) line += "  " + own;
  }
  out += line + "\n";
  if (options.max_depth >= 0 && depth >= options.max_depth) return;
  auto kids = entries(*e.module, options);
  for (size_t i = 0; i < kids.size(); ++i) {
    const bool last = i + 1 == kids.size();
    render(kids[i], child_lead + (last ? "└─ " : "├─ "), child_lead + (last ? "   " : "│  "), depth + 1, options, out);
  }
}

}  // namespace

std::string module_tree(const torch::nn::Module& root, const std::string& root_name, const TreeOptions& options) {
  std::string out;
  // The root is not owned by a shared_ptr we can hand out; wrap it without taking ownership.
  Entry e{root_name, ModulePtr(const_cast<torch::nn::Module*>(&root), [](torch::nn::Module*) {})};
  render(e, "", "", 0, options, out);
  return out;
}

}  // namespace peft
