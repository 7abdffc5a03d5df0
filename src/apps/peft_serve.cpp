// peft-serve: one frozen base, many deltas, over HTTP (cpp-httplib). Completion requests for
// different deltas are decoded together (serve::ContinuousBatcher); deltas named in a request
// load lazily from --adapter-dir and stay in an LRU of --max-loaded. JSON errors name the field.
#include <signal.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <list>
#include <map>
#include <mutex>
#include <regex>

#include <CLI/CLI.hpp>
#include <httplib.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "peft/checkpoint/delta.h"
#include "peft/core/error.h"
#include "peft/core/json_io.h"
#include "peft/core/process.h"
#include "peft/generate.h"
#include "peft/models/load.h"
#include "peft/peft_model.h"
#include "peft/serve/classifier_pool.h"
#include "peft/serve/completion_request.h"
#include "peft/serve/continuous_batcher.h"
#include "peft/tokenizers/tokenizer.h"
#include "peft/train/generation_eval.h"

namespace {
namespace fs = std::filesystem;

/// An error with the HTTP status it answers with.
struct HttpError {
  int status;
  std::string message;
};

void reply_error(httplib::Response& res, int status, const std::string& message) {
  res.status = status;
  res.set_content(nlohmann::json{{"error", {{"message", message}, {"code", status}}}}.dump(), "application/json");
}

/// What a request wants a delta for: completions (the causal LM), classification, or either
/// (POST /v1/adapters loads it for later requests).
enum class Use { completion, classification, any };

/// Deltas: the ones named on the command line stay loaded; the ones requests name load from
/// --adapter-dir on first use and are evicted least recently used beyond --max-loaded. A
/// sequence-classification delta (task_type SEQ_CLS) goes to the classifiers, any other to the LM.
class AdapterStore {
 public:
  AdapterStore(peft::serve::ContinuousBatcher& batcher, peft::serve::ClassifierPool& classifiers, std::string dir,
               int64_t max_loaded)
      : batcher_(batcher), classifiers_(classifiers), dir_(std::move(dir)), max_loaded_(max_loaded) {}

  /// Keeps a delta from eviction until the request holding it has been queued (or answered).
  class Lease {
   public:
    Lease() = default;
    Lease(AdapterStore* s, std::string n) : store_(s), name_(std::move(n)) {}
    Lease(Lease&& o) noexcept : store_(std::exchange(o.store_, nullptr)), name_(std::move(o.name_)) {}
    Lease& operator=(Lease&&) = delete;
    ~Lease() {
      if (!store_) return;
      std::lock_guard<std::mutex> lock(store_->mutex_);
      if (--store_->leases_[name_] == 0) store_->leases_.erase(name_);
    }

   private:
    AdapterStore* store_ = nullptr;
    std::string name_;
  };

  /// Loads a delta named on the command line; never evicted.
  void pin(const std::string& name, const std::string& path) {
    load(name, path);
    pinned_.push_back(name);
  }

  /// Makes `name` loaded for `use` (HttpError 404 / 400 when it cannot be) and leases it.
  Lease ensure(const std::string& name, Use use) {
    if (name.empty() || name == peft::PeftModel::kBaseAdapterName) {
      if (use == Use::classification) throw HttpError{400, "adapter: classification needs a sequence-classification delta"};
      return {};
    }
    std::lock_guard<std::mutex> lock(mutex_);
    const bool pinned = std::find(pinned_.begin(), pinned_.end(), name) != pinned_.end();
    if (auto it = std::find(lru_.begin(), lru_.end(), name); it != lru_.end()) {
      lru_.splice(lru_.begin(), lru_, it);
    } else if (!pinned) {
      const fs::path path = resolve(name);
      std::vector<std::string> evict;
      for (auto it = lru_.rbegin(); it != lru_.rend() && static_cast<int64_t>(lru_.size() - evict.size()) >= max_loaded_; ++it)
        if (!leases_.count(*it)) evict.push_back(*it);
      try {
        load(name, path.string());
      } catch (const peft::Error& e) {
        throw HttpError{400, fmt::format("adapter '{}': {}", name, e.what())};
      }
      lru_.push_front(name);
      for (const auto& old : evict) unload(old, /*only_if_idle=*/true);
    }
    const bool classifier = classifiers_.has(name);
    if (use == Use::completion && classifier)
      throw HttpError{400, fmt::format("adapter: '{}' is a sequence-classification delta (POST /v1/classify)", name)};
    if (use == Use::classification && !classifier)
      throw HttpError{400, fmt::format("adapter: '{}' is not a sequence-classification delta (POST /v1/completions)", name)};
    ++leases_[name];
    return Lease(this, name);
  }

  void remove(const std::string& name) {
    std::lock_guard<std::mutex> lock(mutex_);
    const bool known = std::find(pinned_.begin(), pinned_.end(), name) != pinned_.end() ||
                       std::find(lru_.begin(), lru_.end(), name) != lru_.end();
    if (!known) throw HttpError{404, fmt::format("adapter: no adapter named '{}' is loaded", name)};
    if (leases_.count(name)) throw HttpError{409, fmt::format("adapter '{}' is serving requests; try again", name)};
    unload(name, /*only_if_idle=*/false);
  }

  nlohmann::json list() {
    std::lock_guard<std::mutex> lock(mutex_);
    nlohmann::json out = nlohmann::json::array();
    auto pinned = [&](const std::string& n) { return std::find(pinned_.begin(), pinned_.end(), n) != pinned_.end(); };
    batcher_.exclusive([&](peft::PeftModel& m, const auto&) {
      for (const auto& n : m.adapters())
        out.push_back({{"name", n}, {"method", m.adapter_config(n).method()}, {"task", "completion"}, {"pinned", pinned(n)}});
    }).get();
    for (const auto& n : classifiers_.adapters())
      out.push_back({{"name", n}, {"method", classifiers_.method(n)}, {"task", "classification"}, {"labels", classifiers_.labels(n)},
                     {"pinned", pinned(n)}});
    return out;
  }

  int64_t loaded() {
    std::lock_guard<std::mutex> lock(mutex_);
    return static_cast<int64_t>(pinned_.size() + lru_.size());
  }

 private:
  void load(const std::string& name, const std::string& path) {
    if (peft::serve::ClassifierPool::is_classifier_delta(path)) {
      classifiers_.load(name, path);
      return;
    }
    batcher_.exclusive([&](peft::PeftModel& model, const auto&) { peft::checkpoint::load_adapter(model, path, name); }).get();
  }

  /// Drops a delta from memory (only_if_idle: unless a queued or running request still uses it;
  /// it then stays until a later load evicts it). Under mutex_.
  void unload(const std::string& name, bool only_if_idle) {
    bool gone = classifiers_.remove(name);
    if (!gone)
      batcher_.exclusive([&](peft::PeftModel& model, const auto& in_use) {
        if (!model.has_adapter(name)) return;
        if (in_use(name)) {
          if (only_if_idle) return;
          throw HttpError{409, fmt::format("adapter '{}' is serving requests; try again", name)};
        }
        model.delete_adapter(name);
        gone = true;
      }).get();
    if (!gone) return;
    lru_.remove(name);
    pinned_.erase(std::remove(pinned_.begin(), pinned_.end(), name), pinned_.end());
  }

  /// The delta directory for `name` inside --adapter-dir (never outside it, symlinks included).
  fs::path resolve(const std::string& name) const {
    if (dir_.empty()) throw HttpError{404, fmt::format("adapter: no adapter named '{}' is loaded", name)};
    static const std::regex valid("[A-Za-z0-9_\\-]+");
    if (!std::regex_match(name, valid))
      throw HttpError{400, fmt::format("adapter: '{}' is not a delta name (letters, digits, '_' and '-')", name)};
    std::error_code ec;
    const fs::path root = fs::canonical(dir_, ec);
    const fs::path path = fs::canonical(fs::path(dir_) / name, ec);
    if (ec || !fs::is_directory(path)) throw HttpError{404, fmt::format("adapter: no delta named '{}' in the adapter directory", name)};
    const auto rel = path.lexically_relative(root);
    if (rel.empty() || *rel.begin() == "..")
      throw HttpError{400, fmt::format("adapter: '{}' leads outside the adapter directory", name)};
    return path;
  }

  peft::serve::ContinuousBatcher& batcher_;
  peft::serve::ClassifierPool& classifiers_;
  std::string dir_;
  int64_t max_loaded_;
  std::mutex mutex_;
  std::vector<std::string> pinned_;
  std::list<std::string> lru_;           // most recently used first
  std::map<std::string, int64_t> leases_;  // requests holding a delta between ensure() and queueing
};

/// Request counts and latencies for GET /metrics (Prometheus text format).
class Metrics {
 public:
  void record(int status, double seconds) {
    std::lock_guard<std::mutex> lock(mutex_);
    ++by_status_[status];
    for (size_t i = 0; i < kBuckets.size(); ++i)
      if (seconds <= kBuckets[i]) ++buckets_[i];
    ++count_;
    sum_ += seconds;
  }
  /// A request refused before any handler ran (body too large, HTTP cut short): no latency to record.
  void count(int status) {
    std::lock_guard<std::mutex> lock(mutex_);
    ++by_status_[status];
  }
  std::string text(const peft::serve::BatcherStats& s, int64_t loaded) {
    std::lock_guard<std::mutex> lock(mutex_);
    std::string out = "# TYPE peft_requests_total counter\n";
    for (const auto& [status, n] : by_status_) out += fmt::format("peft_requests_total{{status=\"{}\"}} {}\n", status, n);
    out += fmt::format("# TYPE peft_tokens_generated_total counter\npeft_tokens_generated_total {}\n", s.tokens_generated);
    out += fmt::format("# TYPE peft_decode_steps_total counter\npeft_decode_steps_total {}\n", s.decode_steps);
    out += fmt::format("# TYPE peft_decoded_rows_total counter\npeft_decoded_rows_total {}\n", s.decoded_rows);
    out += fmt::format("# TYPE peft_prefill_seconds_total counter\npeft_prefill_seconds_total {}\n", s.prefill_seconds);
    out += fmt::format("# TYPE peft_decode_seconds_total counter\npeft_decode_seconds_total {}\n", s.decode_seconds);
    out += fmt::format("# TYPE peft_queue_length gauge\npeft_queue_length {}\n", s.queued);
    out += fmt::format("# TYPE peft_running_requests gauge\npeft_running_requests {}\n", s.running);
    out += fmt::format("# TYPE peft_cache_positions gauge\npeft_cache_positions {}\n", s.cache_positions);
    out += fmt::format("# TYPE peft_loaded_adapters gauge\npeft_loaded_adapters {}\n", loaded);
    out += "# TYPE peft_request_seconds histogram\n";
    for (size_t i = 0; i < kBuckets.size(); ++i)
      out += fmt::format("peft_request_seconds_bucket{{le=\"{}\"}} {}\n", kBuckets[i], buckets_[i]);
    out += fmt::format("peft_request_seconds_bucket{{le=\"+Inf\"}} {}\npeft_request_seconds_sum {}\npeft_request_seconds_count {}\n",
                       count_, sum_, count_);
    return out;
  }

 private:
  static constexpr std::array<double, 8> kBuckets = {0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10};
  std::mutex mutex_;
  std::map<int, int64_t> by_status_;
  std::array<int64_t, 8> buckets_{};
  int64_t count_ = 0;
  double sum_ = 0;
};

struct Server {
  static constexpr size_t kMaxClassifyInputs = 256;
  peft::serve::ContinuousBatcher& batcher;
  peft::serve::ClassifierPool& classifiers;
  AdapterStore& store;
  Metrics& metrics;
  peft::tokenizers::Tokenizer& tok;
  std::mutex tok_mutex;  // the tokenizer is used from every HTTP thread
  int64_t max_tokens_limit;
  std::atomic<int64_t> next_id{1};

  bool encoder_decoder = false;  // prompts go to the encoder, ending with its end-of-sequence token

  std::vector<int64_t> encode(const std::string& text) {
    std::lock_guard<std::mutex> lock(tok_mutex);
    return tok.encode(text);
  }
  std::vector<int64_t> encode_prompt(const std::string& text) {
    std::lock_guard<std::mutex> lock(tok_mutex);
    return peft::encode_prompt(tok, text, encoder_decoder);
  }
  std::string decode(const std::vector<int64_t>& ids) {
    std::lock_guard<std::mutex> lock(tok_mutex);
    return peft::train::decode_generated(tok, ids);  // a T5's sentinels past the vocabulary: <extra_id_K>
  }

  /// A completion request for one prompt, with the stop texts ending it.
  struct Choice {
    std::vector<int64_t> prompt;
    std::shared_ptr<std::vector<int64_t>> generated = std::make_shared<std::vector<int64_t>>();
    std::future<peft::GenerationResult> result;
  };

  /// The text generated so far, cut before the first stop text; `stopped` when one matched.
  std::string visible_text(const std::vector<int64_t>& ids, const std::vector<std::string>& stop, bool* stopped) {
    std::string text = decode(ids);
    size_t cut = std::string::npos;
    for (const auto& s : stop) cut = std::min(cut, text.find(s));
    if (stopped) *stopped = cut != std::string::npos;
    return cut == std::string::npos ? text : text.substr(0, cut);
  }

  Choice submit(const peft::serve::CompletionRequest& r, const std::string& prompt,
                std::function<void(const std::string&)> on_text = {}) {
    Choice c;
    c.prompt = encode_prompt(prompt);
    if (c.prompt.empty()) throw HttpError{400, "prompt: encodes to no tokens"};
    peft::serve::Completion job;
    job.prompt = c.prompt;
    job.config = r.config;
    if (tok.special().eos) job.config.stop_tokens.push_back(*tok.special().eos);
    job.adapter = r.adapter;
    auto generated = c.generated;
    auto sent = std::make_shared<size_t>(0);
    job.on_token = [this, generated, stop = r.stop, on_text, sent](int64_t token) {
      generated->push_back(token);
      if (stop.empty() && !on_text) return true;
      bool stopped = false;
      const std::string text = visible_text(*generated, stop, &stopped);
      if (on_text && text.size() > *sent) {
        on_text(text.substr(*sent));
        *sent = text.size();
      }
      return !stopped;
    };
    try {
      c.result = batcher.submit(std::move(job));
    } catch (const peft::Error& e) {
      throw HttpError{400, e.what()};
    }
    return c;
  }

  static std::string finish_reason(const std::string& stop_reason) {
    return stop_reason == "max_new_tokens" ? "length" : "stop";
  }

  nlohmann::json completions(const nlohmann::json& body, httplib::Response& res) {
    peft::serve::CompletionRequest r;
    try {
      r = peft::serve::parse_completion_request(body, max_tokens_limit);
    } catch (const peft::Error& e) {
      throw HttpError{400, e.what()};
    }
    const auto lease = store.ensure(r.adapter, Use::completion);  // held until every prompt is queued
    const std::string id = fmt::format("cmpl-{}", next_id++);
    const auto created = std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
    const std::string model_name = r.adapter.empty() ? std::string("base") : r.adapter;
    if (r.stream) {
      struct Stream {
        std::mutex m;
        std::condition_variable cv;
        std::deque<std::string> events;
        bool finished = false;
      };
      auto stream = std::make_shared<Stream>();
      auto push = [stream](std::string e) {
        std::lock_guard<std::mutex> l(stream->m);
        stream->events.push_back(std::move(e));
        stream->cv.notify_one();
      };
      auto chunk = [id, created, model_name](const std::string& text, const nlohmann::json& finish) {
        return "data: " +
               nlohmann::json{{"id", id}, {"object", "text_completion"}, {"created", created}, {"model", model_name},
                              {"choices", {{{"index", 0}, {"text", text}, {"finish_reason", finish}}}}}.dump() + "\n\n";
      };
      auto choice = std::make_shared<Choice>(submit(r, r.prompts.front(), [push, chunk](const std::string& t) { push(chunk(t, nullptr)); }));
      std::thread([choice, push, chunk, stream] {
        std::string end;
        try {
          end = chunk("", finish_reason(choice->result.get().stop_reason));
        } catch (const std::exception& e) {
          end = "data: " + nlohmann::json{{"error", {{"message", e.what()}, {"code", 500}}}}.dump() + "\n\n";
        }
        push(end);
        push("data: [DONE]\n\n");
        std::lock_guard<std::mutex> l(stream->m);
        stream->finished = true;
        stream->cv.notify_one();
      }).detach();
      res.set_chunked_content_provider("text/event-stream", [stream](size_t, httplib::DataSink& sink) {
        std::unique_lock<std::mutex> l(stream->m);
        stream->cv.wait(l, [&] { return !stream->events.empty() || stream->finished; });
        while (!stream->events.empty()) {
          const std::string e = std::move(stream->events.front());
          stream->events.pop_front();
          if (!sink.write(e.data(), e.size())) return false;
        }
        if (stream->finished) sink.done();
        return true;
      });
      return nullptr;
    }
    std::vector<Choice> choices;
    for (const auto& p : r.prompts) choices.push_back(submit(r, p));
    nlohmann::json out_choices = nlohmann::json::array();
    int64_t prompt_tokens = 0, completion_tokens = 0;
    for (size_t i = 0; i < choices.size(); ++i) {
      peft::GenerationResult g;
      try {
        g = choices[i].result.get();
      } catch (const peft::Error& e) {
        throw HttpError{400, e.what()};
      }
      prompt_tokens += static_cast<int64_t>(choices[i].prompt.size());
      completion_tokens += static_cast<int64_t>(g.tokens.size());
      out_choices.push_back({{"index", i},
                             {"text", visible_text(g.tokens, r.stop, nullptr)},
                             {"finish_reason", finish_reason(g.stop_reason)},
                             {"tokens", g.tokens}});
    }
    return {{"id", id},           {"object", "text_completion"}, {"created", created}, {"model", model_name},
            {"choices", out_choices},
            {"usage", {{"prompt_tokens", prompt_tokens}, {"completion_tokens", completion_tokens},
                       {"total_tokens", prompt_tokens + completion_tokens}}}};
  }

  /// POST /v1/classify: label probabilities of each input text under a classification delta.
  nlohmann::json classify(const nlohmann::json& body) {
    peft::serve::ClassifyRequest r;
    try {
      r = peft::serve::parse_classify_request(body, kMaxClassifyInputs);
    } catch (const peft::Error& e) {
      throw HttpError{400, e.what()};
    }
    const auto lease = store.ensure(r.adapter, Use::classification);  // not evicted while it runs
    std::vector<std::vector<int64_t>> inputs;
    int64_t tokens = 0;
    for (const auto& text : r.inputs) {
      inputs.push_back(encode(text));
      tokens += static_cast<int64_t>(inputs.back().size());
    }
    const auto labels = classifiers.labels(r.adapter);
    nlohmann::json data = nlohmann::json::array();
    const auto results = classifiers.classify(r.adapter, inputs);
    for (size_t i = 0; i < results.size(); ++i) {
      nlohmann::json probabilities = nlohmann::json::object();
      for (size_t k = 0; k < labels.size(); ++k) probabilities[labels[k]] = results[i].probabilities[k];
      data.push_back({{"index", i},
                      {"label", labels[static_cast<size_t>(results[i].label)]},
                      {"label_index", results[i].label},
                      {"probabilities", probabilities}});
    }
    return {{"object", "classification"}, {"model", r.adapter}, {"data", data}, {"usage", {{"prompt_tokens", tokens}}}};
  }
};

nlohmann::json parse_body(const httplib::Request& req) {
  try {
    return nlohmann::json::parse(req.body);
  } catch (const nlohmann::json::parse_error& e) {
    throw HttpError{400, fmt::format("body: malformed JSON ({})", e.what())};
  }
}

int run(int argc, char** argv) {
  CLI::App app{"Serve one base model and many deltas over HTTP (OpenAI-style completions).", "peft-serve"};
  std::string model_dir, adapter_dir, host = "127.0.0.1", api_key;
  std::vector<std::string> adapter_specs;
  int port = 8080, threads = 0, http_threads = 32;
  double io_timeout = 10;
  int64_t max_loaded = 16, max_batch = 16, max_tokens_limit = 1024;
  size_t max_body = 1 << 20;
  app.add_option("--model", model_dir, "causal LM or encoder-decoder directory (with its tokenizer)")->required();
  app.add_option("--adapter", adapter_specs, "delta to keep loaded: NAME=DIR or DIR (repeatable)");
  app.add_option("--adapter-dir", adapter_dir, "directory of deltas (one sub-directory each) loaded when a request names them");
  app.add_option("--max-loaded", max_loaded, "deltas from --adapter-dir kept loaded (least recently used evicted)")
      ->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--host", host, "address to bind")->capture_default_str();
  app.add_option("--port", port, "port (0: any free one; the chosen port is printed)")->capture_default_str();
  app.add_option("--api-key", api_key, "require 'Authorization: Bearer KEY' on every request");
  app.add_option("--max-batch", max_batch, "requests decoded together")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--max-tokens", max_tokens_limit, "the largest max_tokens a request may ask for")->capture_default_str();
  app.add_option("--max-body-bytes", max_body, "larger request bodies get 413")->capture_default_str();
  app.add_option("--http-threads", http_threads, "connections served at once")->capture_default_str();
  app.add_option("--io-timeout", io_timeout, "seconds a client may take to send its request or read a reply")
      ->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--threads", threads, "CPU threads for the model (default: all cores)");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  // SIGTERM / SIGINT are taken by a thread of their own: the server stops accepting, finishes what it has, exits.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  signal(SIGPIPE, SIG_IGN);

  peft::core::configure_threads(threads);
  peft::models::LoadOptions load;
  load.task = peft::models::generation_task(peft::core::read_json_file(model_dir + "/config.json"));
  const auto base = peft::models::load_pretrained(model_dir, load);
  peft::PeftModel model(base);
  // Classification deltas get classifiers whose backbone is this base's tensors (held once).
  peft::serve::ClassifierPool classifiers(model_dir, {}, base);
  auto tok = peft::tokenizers::load_tokenizer(model_dir);
  peft::serve::ContinuousBatcher batcher(model, max_batch);
  AdapterStore store(batcher, classifiers, adapter_dir, max_loaded);
  for (const auto& [name, dir] : peft::checkpoint::parse_adapter_specs(adapter_specs)) store.pin(name, dir);
  Metrics metrics;
  Server server{batcher, classifiers, store, metrics, *tok, {}, max_tokens_limit};
  server.encoder_decoder = load.task == "seq2seq_lm";

  httplib::Server http;
  http.new_task_queue = [http_threads] { return new httplib::ThreadPool(static_cast<size_t>(http_threads)); };
  http.set_payload_max_length(max_body);
  const auto io_sec = static_cast<time_t>(io_timeout);
  const auto io_usec = static_cast<time_t>((io_timeout - static_cast<double>(io_sec)) * 1e6);
  http.set_read_timeout(io_sec, io_usec);  // a slow client holds one HTTP thread for at most this long
  http.set_write_timeout(io_sec, io_usec);
  http.set_pre_routing_handler([&](const httplib::Request& req, httplib::Response& res) {
    if (api_key.empty() || req.get_header_value("Authorization") == "Bearer " + api_key) return httplib::Server::HandlerResponse::Unhandled;
    reply_error(res, 401, "missing or wrong API key (Authorization: Bearer KEY)");
    return httplib::Server::HandlerResponse::Handled;
  });
  auto handle = [&](auto body) {
    return [&, body](const httplib::Request& req, httplib::Response& res) {
      const auto t0 = std::chrono::steady_clock::now();
      try {
        body(req, res);
        if (res.status == -1) res.status = 200;  // cpp-httplib fills it in only after the handler
      } catch (const HttpError& e) {
        reply_error(res, e.status, e.message);
      } catch (const peft::Error& e) {
        reply_error(res, 400, e.what());
      } catch (const std::exception& e) {
        reply_error(res, 500, e.what());
      }
      metrics.record(res.status, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    };
  };
  http.Post("/v1/completions", handle([&](const httplib::Request& req, httplib::Response& res) {
              const auto out = server.completions(parse_body(req), res);
              if (!out.is_null()) res.set_content(out.dump(), "application/json");
            }));
  http.Post("/v1/classify", handle([&](const httplib::Request& req, httplib::Response& res) {
              res.set_content(server.classify(parse_body(req)).dump(), "application/json");
            }));
  http.Get("/v1/adapters", handle([&](const httplib::Request&, httplib::Response& res) {
             res.set_content(nlohmann::json{{"adapters", store.list()}}.dump(), "application/json");
           }));
  http.Post("/v1/adapters", handle([&](const httplib::Request& req, httplib::Response& res) {
              const auto body = parse_body(req);
              if (!body.is_object() || !body.contains("name") || !body["name"].is_string() || body.size() != 1)
                throw HttpError{400, "name: expected {\"name\": \"<delta in the adapter directory>\"}"};
              store.ensure(body["name"].get<std::string>(), Use::any);
              res.set_content(nlohmann::json{{"loaded", body["name"]}}.dump(), "application/json");
            }));
  http.Delete(R"(/v1/adapters/([A-Za-z0-9_\-]+))", handle([&](const httplib::Request& req, httplib::Response& res) {
                store.remove(req.matches[1]);
                res.set_content(nlohmann::json{{"deleted", std::string(req.matches[1])}}.dump(), "application/json");
              }));
  http.Get("/health", handle([&](const httplib::Request&, httplib::Response& res) {
             res.set_content(R"({"status":"ok"})", "application/json");
           }));
  http.Get("/metrics", handle([&](const httplib::Request&, httplib::Response& res) {
             res.set_content(metrics.text(batcher.stats(), store.loaded()), "text/plain; version=0.0.4");
           }));
  http.set_keep_alive_timeout(std::max<time_t>(io_sec, 1));
  http.set_error_handler([&metrics](const httplib::Request&, httplib::Response& res) {
    if (!res.body.empty()) return;  // a handler's own error, counted by handle()
    metrics.count(res.status);
    const char* why = res.status == 413   ? "body: larger than --max-body-bytes"
                      : res.status == 404 ? "no such endpoint"
                      : res.status == 400 ? "request: incomplete or malformed HTTP (a body shorter than its "
                                            "Content-Length, or not sent within --io-timeout)"
                                          : "request: refused";
    reply_error(res, res.status, why);
  });

  const int bound = port == 0 ? http.bind_to_any_port(host) : (http.bind_to_port(host, port) ? port : -1);
  PEFT_CHECK(bound > 0, "serve", "cannot listen on {}:{}", host, port);
  std::thread stopper([&] {
    int sig = 0;
    sigwait(&signals, &sig);
    http.stop();
  });
  fmt::print("peft-serve listening on http://{}:{}\n", host, bound);
  std::fflush(stdout);
  http.listen_after_bind();
  batcher.shutdown();
  if (stopper.joinable()) {
    pthread_kill(stopper.native_handle(), SIGTERM);  // listen ended on its own: release the waiter
    stopper.join();
  }
  fmt::print("peft-serve stopped\n");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  peft::core::prepare_process(argv);
  return peft::core::run_main("peft-serve", [&] { return run(argc, argv); });
}
