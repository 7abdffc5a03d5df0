#include "peft/serve/continuous_batcher.h"

#include <algorithm>
#include <chrono>

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include "peft/core/error.h"
#include "peft/nn/kv_cache.h"
#include "peft/nn/prompt_encoder.h"
#include "peft/peft_model.h"
#include "next_logits.h"

namespace peft::serve {
namespace {
constexpr const char* kC = "serve";

std::string row_adapter(const std::string& adapter) { return adapter.empty() ? PeftModel::kBaseAdapterName : adapter; }
}  // namespace

struct ContinuousBatcher::Request {
  Completion completion;
  std::promise<GenerationResult> done;
};

struct ContinuousBatcher::Running {
  std::shared_ptr<Request> request;
  std::vector<int64_t> ids;  // prompt + generated (an encoder-decoder: the start token + generated)
  GenerationResult result;
  std::optional<at::Generator> gen;
  int64_t offset = 0;  // the adapter's virtual tokens: positions start after them
  bool done = false;
};

ContinuousBatcher::ContinuousBatcher(PeftModel& model, int64_t max_batch) : model_(model), max_batch_(max_batch) {
  PEFT_CHECK(max_batch >= 1, kC, "max_batch must be >= 1, found {}", max_batch);
  if (model_.base_model().geometry().encoder_decoder) {
    decoder_start_ = model_.base_model().decoder_start_token();
    PEFT_CHECK(decoder_start_.has_value(), kC, "{} is an encoder-decoder without a decoder_start_token_id",
               model_.base_model().architecture());
  }
  model_.eval();
  refresh_adapters();
  worker_ = std::thread([this] { loop(); });
}

ContinuousBatcher::~ContinuousBatcher() { shutdown(); }

int64_t ContinuousBatcher::virtual_tokens(const std::string& adapter) const {
  if (adapter.empty() || adapter == PeftModel::kBaseAdapterName) return 0;
  auto p = model_.prompt_encoder(adapter);
  return p ? p->num_virtual_tokens() : 0;
}

int64_t ContinuousBatcher::window(const std::string& adapter) const {
  return model_.base_model().geometry().max_positions - virtual_tokens(adapter);
}

void ContinuousBatcher::refresh_adapters() {
  std::map<std::string, Servable> known;
  known[PeftModel::kBaseAdapterName].window = window(PeftModel::kBaseAdapterName);
  for (const auto& name : model_.adapters()) {
    Servable s;
    s.window = window(name);
    if (model_.side_network(name))
      s.refusal = fmt::format("adapter: '{}' ({}) cannot be served: its side network keeps no key/value cache", name,
                              model_.adapter_config(name).method());
    known[name] = s;
  }
  std::lock_guard<std::mutex> lock(mutex_);
  adapters_ = std::move(known);
}

std::future<GenerationResult> ContinuousBatcher::submit(Completion request) {
  request.config.validate();
  PEFT_CHECK(!request.prompt.empty(), kC, "prompt: no tokens");
  const int64_t vocab = model_.base_model().geometry().vocab_size;
  for (int64_t t : request.prompt)
    PEFT_CHECK(t >= 0 && (vocab <= 0 || t < vocab), kC, "prompt: token {} is outside the vocabulary ({} tokens)", t, vocab);
  auto r = std::make_shared<Request>();
  auto future = r->done.get_future();
  std::lock_guard<std::mutex> lock(mutex_);
  PEFT_CHECK(!stopping_, kC, "the server is shutting down");
  const auto known = adapters_.find(row_adapter(request.adapter));
  PEFT_CHECK(known != adapters_.end(), kC, "adapter: no adapter named '{}' is loaded", request.adapter);
  PEFT_CHECK(known->second.refusal.empty(), kC, "{}", known->second.refusal);
  const int64_t room = known->second.window;
  const auto prompt_len = static_cast<int64_t>(request.prompt.size());
  if (decoder_start_) {  // the prompt fills the encoder, the completion the decoder
    PEFT_CHECK(prompt_len <= room, kC, "prompt: {} tokens exceed the encoder's {} positions", prompt_len, room);
    const int64_t decoder_room = model_.base_model().geometry().max_positions - 1;  // after the start token
    PEFT_CHECK(request.config.max_new_tokens <= decoder_room, kC,
               "max_tokens: {} exceeds the decoder's {} positions after its start token", request.config.max_new_tokens,
               decoder_room);
  } else {
    PEFT_CHECK(prompt_len + request.config.max_new_tokens <= room, kC,
               "max_tokens: the prompt ({} tokens) and max_tokens ({}) exceed the model's context of {} positions",
               prompt_len, request.config.max_new_tokens, room);
  }
  r->completion = std::move(request);
  queue_.push_back(std::move(r));
  ++stats_.queued;
  wake_.notify_one();
  return future;
}

std::future<void> ContinuousBatcher::exclusive(
    std::function<void(PeftModel&, const std::function<bool(const std::string&)>&)> task) {
  auto promise = std::make_shared<std::promise<void>>();
  auto future = promise->get_future();
  std::lock_guard<std::mutex> lock(mutex_);
  tasks_.push_back([this, promise, task = std::move(task)] {
    try {
      auto in_use = [this](const std::string& name) {  // the worker holds no lock while tasks run
        std::lock_guard<std::mutex> l(mutex_);
        if (std::find(running_adapters_.begin(), running_adapters_.end(), name) != running_adapters_.end()) return true;
        return std::any_of(queue_.begin(), queue_.end(), [&](const auto& q) { return q->completion.adapter == name; });
      };
      task(model_, in_use);
      refresh_adapters();  // before the caller hears back: its next submit sees the change
      promise->set_value();
    } catch (...) {
      refresh_adapters();
      promise->set_exception(std::current_exception());
    }
  });
  wake_.notify_one();
  return future;
}

void ContinuousBatcher::shutdown() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_one();
  if (worker_.joinable()) worker_.join();
}

void ContinuousBatcher::record_cache_locked() {
  stats_.cache_positions = cache_ ? cache_->length() : 0;
  stats_.largest_cache_positions = std::max(stats_.largest_cache_positions, stats_.cache_positions);
}

BatcherStats ContinuousBatcher::stats() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return stats_;
}

void ContinuousBatcher::loop() {
  torch::NoGradGuard no_grad;  // grad mode is per thread
  std::vector<Running> running;
  for (;;) {
    std::deque<std::function<void()>> tasks;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait(lock, [&] { return stopping_ || !queue_.empty() || !running.empty() || !tasks_.empty(); });
      if (stopping_ && queue_.empty() && running.empty() && tasks_.empty()) return;
      tasks.swap(tasks_);
    }
    for (auto& t : tasks) t();
    admit(running);
    if (!running.empty()) step(running);
    std::lock_guard<std::mutex> lock(mutex_);
    running_adapters_.clear();
    for (const auto& r : running) running_adapters_.push_back(r.request->completion.adapter);
    stats_.running = static_cast<int64_t>(running.size());
    record_cache_locked();
  }
}

namespace {

/// Records `next` for the row as generate() does, then hands a kept token to on_token (which may
/// end the row: a stop text); false once the row has stopped.
bool advance(GenerationResult& result, std::vector<int64_t>& ids, int64_t next, const at::Tensor& logits,
             const Completion& c) {
  const size_t kept = result.tokens.size();
  const bool more = record_token(result, ids, next, logits, c.config);
  if (result.tokens.size() > kept && c.on_token && !c.on_token(next)) {
    result.stop_reason = "stop_sequence";
    return false;
  }
  return more;
}

}  // namespace

void ContinuousBatcher::admit(std::vector<Running>& running) {
  const c10::Device device = model_.base_model().parameters().front().device();
  const auto t0 = std::chrono::steady_clock::now();
  struct Timer {  // adds the time spent admitting to the stats however admit ends
    ContinuousBatcher& b;
    std::chrono::steady_clock::time_point t0;
    ~Timer() {
      std::lock_guard<std::mutex> lock(b.mutex_);
      b.stats_.prefill_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    }
  } timer{*this, t0};
  while (static_cast<int64_t>(running.size()) < max_batch_) {
    std::shared_ptr<Request> r;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (queue_.empty()) return;
      r = queue_.front();
      queue_.pop_front();
      --stats_.queued;
    }
    const Completion& c = r->completion;
    try {
      Running row;
      row.request = r;
      row.ids = decoder_start_ ? std::vector<int64_t>{*decoder_start_} : c.prompt;
      row.result.stop_reason = "max_new_tokens";
      if (c.config.seed) row.gen = at::make_generator<at::CPUGeneratorImpl>(*c.config.seed);
      const std::string name = row_adapter(c.adapter);
      PEFT_CHECK(name == PeftModel::kBaseAdapterName || model_.has_adapter(name), kC,
                 "adapter: '{}' was unloaded before the request ran", name);
      row.offset = virtual_tokens(name);
      auto cache = std::make_shared<nn::KVCache>();
      models::ModelInputs in;
      in.kv_cache = cache;
      const auto n = static_cast<int64_t>(c.prompt.size());
      in.input_ids = torch::tensor(c.prompt, torch::kLong).unsqueeze(0).to(device);
      if (decoder_start_)  // T5 numbers positions relatively: no position_ids
        in.decoder_input_ids = torch::full({1, 1}, *decoder_start_, torch::kLong).to(device);
      else
        in.position_ids = torch::arange(row.offset, row.offset + n, torch::kLong).unsqueeze(0).to(device);
      const at::Tensor logits = next_logits(model_.forward(in, {name}).logits, model_)[0];
      const bool more = c.config.max_new_tokens > 0 &&
                        advance(row.result, row.ids, next_token(logits, row.ids, c.config, row.gen), logits, c);
      if (!more) {
        std::lock_guard<std::mutex> lock(mutex_);
        ++stats_.completed;
        stats_.tokens_generated += static_cast<int64_t>(row.result.tokens.size());
        r->done.set_value(std::move(row.result));
        continue;
      }
      if (!cache_) cache_ = std::make_shared<nn::KVCache>();
      cache_->add_rows(*cache);
      running.push_back(std::move(row));
    } catch (...) {
      std::lock_guard<std::mutex> lock(mutex_);
      ++stats_.failed;
      r->done.set_exception(std::current_exception());
    }
  }
}

void ContinuousBatcher::step(std::vector<Running>& running) {
  const c10::Device device = model_.base_model().parameters().front().device();
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<int64_t> tokens, positions;
  std::vector<std::string> names;
  for (const auto& r : running) {
    tokens.push_back(r.ids.back());
    positions.push_back(r.offset + static_cast<int64_t>(r.ids.size()) - 1);
    names.push_back(row_adapter(r.request->completion.adapter));
  }
  try {
    models::ModelInputs in;
    in.kv_cache = cache_;
    const at::Tensor last = torch::tensor(tokens, torch::kLong).unsqueeze(1).to(device);
    if (decoder_start_) {  // the decoder alone: the cache holds every row's encoder keys and mask
      in.decoder_input_ids = last;
    } else {
      in.input_ids = last;
      in.position_ids = torch::tensor(positions, torch::kLong).unsqueeze(1).to(device);
    }
    const at::Tensor logits = next_logits(model_.forward(in, names).logits, model_);
    std::vector<int64_t> keep;
    std::vector<Running> still, finished;
    int64_t finished_tokens = 0;
    for (size_t b = 0; b < running.size(); ++b) {
      Running& r = running[b];
      const Completion& c = r.request->completion;
      const at::Tensor row_logits = logits[static_cast<int64_t>(b)];
      if (advance(r.result, r.ids, next_token(row_logits, r.ids, c.config, r.gen), row_logits, c)) {
        keep.push_back(static_cast<int64_t>(b));
        still.push_back(std::move(r));
      } else {
        finished_tokens += static_cast<int64_t>(r.result.tokens.size());
        finished.push_back(std::move(r));
      }
    }
    if (still.empty()) {
      cache_.reset();
    } else if (still.size() < running.size()) {
      cache_->select_rows(torch::tensor(keep, torch::kLong));
      // Under steady load some row always runs: without this the cache would grow by a position
      // every step, padded for every row (the batcher passes positions, so the length may shrink).
      cache_->drop_unattended_prefix();
    }
    {  // the stats count a request (and the cache it leaves) before its caller hears back
      std::lock_guard<std::mutex> lock(mutex_);
      ++stats_.decode_steps;
      stats_.decode_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      stats_.decoded_rows += static_cast<int64_t>(running.size());
      stats_.largest_batch = std::max<int64_t>(stats_.largest_batch, static_cast<int64_t>(running.size()));
      stats_.completed += static_cast<int64_t>(finished.size());
      stats_.tokens_generated += finished_tokens;
      record_cache_locked();
    }
    for (auto& r : finished) r.request->done.set_value(std::move(r.result));
    running = std::move(still);
  } catch (...) {
    // A step that fails ends every running request with its error; the batcher goes on.
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto& r : running) {
      r.request->done.set_exception(std::current_exception());
      ++stats_.failed;
    }
    running.clear();
    cache_.reset();
  }
}

}  // namespace peft::serve
