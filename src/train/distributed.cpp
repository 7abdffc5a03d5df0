#include "peft/train/distributed.h"

#include <chrono>
#include <cstdlib>

#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#if defined(USE_C10D_NCCL)
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif
#include <torch/torch.h>

#include "peft/core/error.h"
#include "peft/core/log.h"

namespace peft::train {
namespace {
constexpr const char* kC = "distributed";

std::optional<std::string> env(const char* name) {
  const char* v = std::getenv(name);
  return v && *v ? std::optional<std::string>(v) : std::nullopt;
}

int env_int(const char* name, int fallback, int low, int high) {
  const auto v = env(name);
  if (!v) return fallback;
  size_t used = 0;
  int value = 0;
  try {
    value = std::stoi(*v, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  PEFT_CHECK(used == v->size() && value >= low && value <= high, kC, "environment {}={}: expected an integer in [{}, {}]",
             name, *v, low, high);
  return value;
}

}  // namespace

std::optional<DistributedOptions> distributed_options_from_env() {
  if (!env("WORLD_SIZE")) return std::nullopt;
  DistributedOptions o;
  o.world_size = env_int("WORLD_SIZE", 1, 1, 1 << 20);
  o.rank = env_int("RANK", 0, 0, o.world_size - 1);
  o.local_rank = env_int("LOCAL_RANK", 0, 0, 1 << 20);
  o.master_addr = env("MASTER_ADDR").value_or("127.0.0.1");
  o.master_port = env_int("MASTER_PORT", 29500, 1, 65535);
  o.backend = env("PEFT_DIST_BACKEND").value_or("auto");
  if (const auto t = env("PEFT_DIST_TIMEOUT")) {
    char* end = nullptr;
    o.timeout_s = std::strtod(t->c_str(), &end);
    PEFT_CHECK(end && *end == '\0' && o.timeout_s > 0, kC, "environment PEFT_DIST_TIMEOUT={}: expected seconds > 0", *t);
  }
  return o;
}

struct DistributedContext::Impl {
  DistributedOptions options;
  std::string backend;
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::ProcessGroup> group;
  int64_t collectives = 0;  // this rank's count, published so a failure can name the ranks behind
  double comm_seconds = 0;

  /// Runs one collective; a failure (a rank exited, hung past the timeout) names who is behind.
  template <typename F>
  void run(const char* what, F&& start) {
    ++collectives;
    const auto t0 = std::chrono::steady_clock::now();
    try {
      store->add(fmt::format("count/{}", options.rank), 1);
      auto work = start();
      work->wait();
    } catch (const std::exception& e) {
      PEFT_CHECK(false, kC, "rank {}: {} #{} failed: {}{}", options.rank, what, collectives, first_line(e.what()),
                 who_is_behind());
    }
    comm_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }

  static std::string first_line(const std::string& s) { return s.substr(0, s.find('\n')); }

  /// The ranks whose collective count is below this rank's (or unknown: the store is gone).
  std::string who_is_behind() {
    std::vector<std::string> behind;
    try {
      for (int r = 0; r < options.world_size; ++r) {
        if (r == options.rank) continue;
        const int64_t n = store->add(fmt::format("count/{}", r), 0);
        if (n < collectives) behind.push_back(fmt::format("rank {} (at collective {})", r, n));
      }
    } catch (const std::exception&) {
      return fmt::format(" — the rendezvous store on rank 0 ({}:{}) is unreachable: rank 0 exited?",
                         options.master_addr, options.master_port);
    }
    if (behind.empty()) return "";
    return fmt::format(" — not arrived: {} (exited, crashed or hung)", fmt::join(behind, ", "));
  }
};

DistributedContext::DistributedContext(const DistributedOptions& o, c10::Device device) : impl_(std::make_unique<Impl>()) {
  auto& m = *impl_;
  m.options = o;
  PEFT_CHECK(o.world_size >= 1 && o.rank >= 0 && o.rank < o.world_size, kC, "rank {} of world size {}: expected 0 <= rank < world size",
             o.rank, o.world_size);
  PEFT_CHECK(o.backend == "auto" || o.backend == "gloo" || o.backend == "nccl", kC,
             "backend '{}': expected gloo, nccl or auto", o.backend);
  m.backend = o.backend == "auto" ? (device.is_cuda() ? "nccl" : "gloo") : o.backend;
  const auto timeout = std::chrono::milliseconds(static_cast<int64_t>(o.timeout_s * 1000));
  c10d::TCPStoreOptions so;
  so.port = static_cast<uint16_t>(o.master_port);
  so.isServer = o.rank == 0;
  so.numWorkers = static_cast<size_t>(o.world_size);
  so.waitWorkers = true;
  so.timeout = timeout;
  try {
    m.store = c10::make_intrusive<c10d::TCPStore>(o.master_addr, so);
  } catch (const std::exception& e) {
    PEFT_CHECK(false, kC, "rank {}: no rendezvous at MASTER_ADDR={} MASTER_PORT={} within {} s ({}): {}", o.rank,
               o.master_addr, o.master_port, o.timeout_s,
               o.rank == 0 ? "the port is taken, or not every rank started" : "is rank 0 running, on this address and port?",
               Impl::first_line(e.what()));
  }
  m.store->setTimeout(timeout);
  m.store->set(fmt::format("joined/{}", o.rank), std::vector<uint8_t>{1});
  // Who has not joined (the rendezvous key each rank sets first), for an error naming them.
  auto not_joined = [&]() -> std::string {
    std::vector<int> missing;
    try {
      for (int r = 0; r < o.world_size; ++r)
        if (!m.store->check({fmt::format("joined/{}", r)})) missing.push_back(r);
    } catch (const std::exception&) {
      return "";
    }
    if (missing.empty()) return "";
    return fmt::format(" — rank(s) {} never joined (not started, or pointed at another MASTER_ADDR / MASTER_PORT)",
                       fmt::join(missing, ", "));
  };
  if (m.backend == "gloo") {
    auto go = c10d::ProcessGroupGloo::Options::create(timeout);
    go->devices.push_back(o.master_addr == "127.0.0.1" || o.master_addr == "localhost"
                              ? c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1")
                              : c10d::ProcessGroupGloo::createDefaultDevice());
    go->threads = 1;
    try {
      m.group = c10::make_intrusive<c10d::ProcessGroupGloo>(m.store, o.rank, o.world_size, go);
    } catch (const std::exception& e) {
      PEFT_CHECK(false, kC, "rank {}: joining the gloo group of {} ranks failed within {} s: {}{}", o.rank, o.world_size,
                 o.timeout_s, Impl::first_line(e.what()), not_joined());
    }
  } else {
#if defined(USE_C10D_NCCL)
    PEFT_CHECK(device.is_cuda(), kC, "backend nccl needs a CUDA device, found {}", device.str());
    auto no = c10d::ProcessGroupNCCL::Options::create();
    no->timeout = timeout;
    m.group = c10::make_intrusive<c10d::ProcessGroupNCCL>(m.store, o.rank, o.world_size, no);
#else
    PEFT_CHECK(false, kC, "backend nccl: this LibTorch is built without NCCL (use gloo)");
#endif
  }
  log::info("distributed: rank {} of {} ({}, rendezvous {}:{})", o.rank, o.world_size, m.backend, o.master_addr,
            o.master_port);
}

DistributedContext::~DistributedContext() = default;

int DistributedContext::rank() const { return impl_->options.rank; }
int DistributedContext::world_size() const { return impl_->options.world_size; }
const std::string& DistributedContext::backend() const { return impl_->backend; }
double DistributedContext::communication_seconds() const { return impl_->comm_seconds; }

void DistributedContext::average_gradients(const std::vector<at::Tensor>& all_params, int64_t bucket_bytes,
                                           bool agree_on_presence) {
  torch::NoGradGuard no_grad;
  const double scale = 1.0 / static_cast<double>(world_size());
  if (!agree_on_presence) {
    average_present_gradients(all_params, bucket_bytes, scale);
    return;
  }
  // A tensor no rank has a gradient for keeps none (the optimizer skips it, as in one process);
  // one some rank has takes part, as zeros where it has none.
  std::vector<at::Tensor> has = {torch::zeros({static_cast<int64_t>(all_params.size())}, torch::kLong)};
  for (size_t k = 0; k < all_params.size(); ++k)
    if (all_params[k].grad().defined()) has[0][static_cast<int64_t>(k)] = 1;
  impl_->run("gradient presence all-reduce", [&] { return impl_->group->allreduce(has); });
  std::vector<at::Tensor> params;
  for (size_t k = 0; k < all_params.size(); ++k)
    if (has[0][static_cast<int64_t>(k)].item<int64_t>() > 0) params.push_back(all_params[k]);
  average_present_gradients(params, bucket_bytes, scale);
}

void DistributedContext::average_present_gradients(const std::vector<at::Tensor>& params, int64_t bucket_bytes,
                                                   double scale) {
  size_t i = 0;
  while (i < params.size()) {
    // A bucket: consecutive tensors of one dtype and device, up to bucket_bytes (at least one).
    std::vector<at::Tensor> grads;
    int64_t bytes = 0;
    const auto options = params[i].options();
    for (; i < params.size(); ++i) {
      const at::Tensor& p = params[i];
      if (p.scalar_type() != options.dtype().toScalarType() || p.device() != options.device()) break;
      if (!grads.empty() && bytes + p.numel() * p.element_size() > bucket_bytes) break;
      if (!p.grad().defined()) p.mutable_grad() = torch::zeros_like(p);
      grads.push_back(p.grad());
      bytes += p.numel() * p.element_size();
    }
    std::vector<at::Tensor> flat = {torch::cat([&] {
      std::vector<at::Tensor> parts;
      for (const auto& g : grads) parts.push_back(g.reshape({-1}));
      return parts;
    }())};
    impl_->run("gradient all-reduce", [&] { return impl_->group->allreduce(flat); });
    flat[0].mul_(scale);
    int64_t offset = 0;
    for (auto& g : grads) {
      g.copy_(flat[0].narrow(0, offset, g.numel()).view_as(g));
      offset += g.numel();
    }
  }
}

void DistributedContext::all_reduce_sum(std::vector<at::Tensor>& tensors) {
  for (auto& t : tensors) {
    std::vector<at::Tensor> one = {t};
    impl_->run("all-reduce", [&] { return impl_->group->allreduce(one); });
  }
}

void DistributedContext::broadcast(std::vector<at::Tensor>& tensors) {
  torch::NoGradGuard no_grad;
  for (auto& t : tensors) {
    std::vector<at::Tensor> one = {t.is_contiguous() ? t : t.contiguous()};
    impl_->run("broadcast", [&] { return impl_->group->broadcast(one); });
    if (!one[0].is_same(t)) t.copy_(one[0]);
  }
}

void DistributedContext::barrier() {
  impl_->run("barrier", [&] { return impl_->group->barrier(); });
}

}  // namespace peft::train
