// A module tree as text, folded over repeated layers ("h.0-11 ×12"), with parameter counts and
// what is trainable: for looking at a backbone before choosing target_modules, and at a
// PeftModel to see exactly where an adapter attached.
#pragma once

#include <string>

namespace torch::nn {
class Module;
}

namespace peft {

struct TreeOptions {
  bool fold_repeats = true;  ///< fold consecutive identical list entries into one "0-11 ×12" line
  int max_depth = -1;        ///< -1: everything; 0: the root only
  bool show_shapes = true;   ///< list each module's own tensors with their shapes
  bool show_bytes = false;   ///< each subtree's bytes in memory, and each tensor's storage (dtype or quantized format)
};

/// One line per module: name, class, parameter count of its subtree, trainable count when any,
/// and its own tensors (a trailing * marks trainable ones). A quantized weight counts the weights
/// its codes stand for and shows its format ("nf4+dq").
std::string module_tree(const torch::nn::Module& root, const std::string& root_name, const TreeOptions& options = {});

}  // namespace peft
