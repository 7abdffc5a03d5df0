// Bookkeeping shared by the module-level extension points (block slots, attention adapters):
// each adapter's modules are registered under the adapter's name (so they move with the model
// and show up among its parameters), and only the active adapters run.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>

#include "peft/nn/row_groups.h"

namespace peft::nn {

class AdapterHolder : public torch::nn::Module {
 public:
  explicit AdapterHolder(const std::string& name) : torch::nn::Module(name) {}
  void remove(const std::string& adapter);
  void set_active(const std::vector<std::string>& adapters) { active_ = adapters; }
  /// Mixed-adapter batches: while set (non-empty), each group's rows run only that group's
  /// modules, instead of every active adapter running on every row.
  void set_row_groups(RowGroups groups) { groups_ = std::move(groups); }
  bool has(const std::string& adapter) const { return containers_.count(adapter) != 0; }
  /// An adapter's tensors, "<slot>.<name>" (or "<name>" for a slot-less holder).
  std::map<std::string, at::Tensor> state(const std::string& adapter) const;
  /// The adapter's modules (one per slot it fills).
  std::vector<std::shared_ptr<torch::nn::Module>> modules_of(const std::string& adapter) const;

 protected:
  struct Entry {
    std::string adapter, slot;  ///< slot "" = the adapter's module itself
    std::shared_ptr<torch::nn::Module> module;
  };
  void add_entry(const std::string& adapter, const std::string& slot, std::shared_ptr<torch::nn::Module> module);
  bool running(const Entry& e) const;
  /// Whether `adapter` has a module in `slot` here.
  bool fills(const std::string& adapter, const std::string& slot) const;

  std::vector<Entry> entries_;
  std::vector<std::string> active_;
  RowGroups groups_;

 private:
  std::map<std::string, std::shared_ptr<torch::nn::Module>> containers_;  // adapter -> what is registered
};

}  // namespace peft::nn
