// Continuous batching for a server: completions for different deltas decode together, one token
// per running request per step. A request runs its prompt alone (its own key/value cache), then
// joins the running batch at the next step (its cache rows appended, left-padded) and leaves it
// when it stops; every row uses its own delta (a mixed-adapter batch) and its own sampler. On an
// encoder-decoder the prompt is the encoder's input: a request's first forward encodes it and
// decodes the start token; its cross-attention keys join the batch's, padded to the longest source.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "peft/generate.h"

namespace peft {
class PeftModel;
namespace nn {
class KVCache;
}
}  // namespace peft

namespace peft::serve {

struct Completion {
  std::vector<int64_t> prompt;  ///< token ids, not empty (an encoder-decoder's input, ending as its data's do)
  /// max_new_tokens, sampling, repetition_penalty, stop_tokens, seed (its own generator per
  /// request), output_logits; use_cache, pad_token and adapter_names do not apply.
  GenerationConfig config;
  std::string adapter;  ///< the delta ("" or "__base__": the bare base)
  /// Called on the batcher's thread with each generated token as it is chosen (streaming);
  /// returning false ends the request there (stop_reason "stop_sequence": a stop text matched).
  std::function<bool(int64_t token)> on_token;
};

struct BatcherStats {
  int64_t queued = 0, running = 0;
  int64_t completed = 0, failed = 0;
  int64_t tokens_generated = 0;
  int64_t decode_steps = 0;
  int64_t decoded_rows = 0;  ///< rows over all decoding steps (/ decode_steps: the mean batch)
  double prefill_seconds = 0, decode_seconds = 0;  ///< time in prompt forwards / decoding steps
  int64_t largest_batch = 0;
  int64_t cache_positions = 0;          ///< positions the running rows' key/value cache holds now
  int64_t largest_cache_positions = 0;  ///< the most it has held (bounded by the longest request)
};

class ContinuousBatcher {
 public:
  /// Runs `model` (eval mode, no gradients) on a thread of its own until shutdown(). Nothing else
  /// may run the model meanwhile: use exclusive() for that.
  ContinuousBatcher(PeftModel& model, int64_t max_batch);
  ~ContinuousBatcher();
  ContinuousBatcher(const ContinuousBatcher&) = delete;
  ContinuousBatcher& operator=(const ContinuousBatcher&) = delete;

  /// Queues a request. Checked here (peft::Error naming the field): a known adapter, a non-empty
  /// prompt, the prompt plus max_new_tokens within the model's positions (less the adapter's
  /// virtual tokens; an encoder-decoder: the prompt and max_new_tokens each), a valid config. The
  /// future holds the result, or the error that ended it.
  std::future<GenerationResult> submit(Completion request);
  /// Runs `task` on the batcher's thread between two decoding steps (load / delete adapters):
  /// `in_use` tells whether a queued or running request names an adapter.
  std::future<void> exclusive(std::function<void(PeftModel&, const std::function<bool(const std::string&)>& in_use)> task);
  /// Stops accepting requests, finishes every queued and running one, and joins the thread.
  void shutdown();
  BatcherStats stats() const;

 private:
  struct Request;
  struct Running;
  void loop();
  void admit(std::vector<Running>& running);
  void step(std::vector<Running>& running);
  /// The adapter's virtual tokens (its tokens are numbered after them) and the positions left.
  int64_t virtual_tokens(const std::string& adapter) const;
  int64_t window(const std::string& adapter) const;
  /// What submit() may check without touching the model (it runs on other threads): each
  /// adapter's context window, or why it cannot be served. Called on the worker (or before it starts).
  void refresh_adapters();
  /// The cache's length into the stats (under mutex_, on the worker: it alone touches cache_).
  void record_cache_locked();

  PeftModel& model_;
  int64_t max_batch_;
  std::optional<int64_t> decoder_start_;  ///< set for an encoder-decoder: its decoder's first token
  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::shared_ptr<Request>> queue_;
  std::deque<std::function<void()>> tasks_;
  std::vector<std::string> running_adapters_;  // names of the running rows (for in_use)
  struct Servable {
    int64_t window = 0;
    std::string refusal;  // non-empty: why requests for it are refused
  };
  std::map<std::string, Servable> adapters_;  // guarded by mutex_
  bool stopping_ = false;
  BatcherStats stats_;
  std::shared_ptr<nn::KVCache> cache_;  // the running rows' keys and values, rows in `running` order
  std::thread worker_;
};

}  // namespace peft::serve
