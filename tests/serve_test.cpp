// peft-serve as a real process on a loopback port: completions equal in-process generation,
// concurrent requests for different deltas, lazy loading and eviction, streaming, and every bad
// input answered with its status while the server keeps serving.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>
#include <spawn.h>
#include <sys/wait.h>

#include <fstream>
#include <thread>

#include <torch/torch.h>

#include "peft/checkpoint/delta.h"
#include "peft/generate.h"
#include "peft/methods/method.h"
#include "peft/models/load.h"
#include "peft/peft_model.h"
#include "peft/tokenizers/tokenizer.h"
#include "test_util.h"
#include "tiny_models.h"

#if defined(PEFT_SERVE_BIN)
#include <httplib.h>

extern char** environ;

namespace peft::test {
namespace {

std::string model_dir() { return std::string(PEFT_SOURCE_DIR) + "/examples/models/tiny-gpt2-en"; }

/// A running peft-serve; stopped with SIGTERM at destruction.
class ServeProcess {
 public:
  ServeProcess(const std::vector<std::string>& flags, const std::string& log) : log_(log) {
    std::vector<std::string> args = {PEFT_SERVE_BIN, "--port", "0", "--threads", "1"};
    args.insert(args.end(), flags.begin(), flags.end());
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_adddup2(&actions, STDOUT_FILENO, STDERR_FILENO);
    const int rc = posix_spawn(&pid_, args[0].c_str(), &actions, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    if (rc != 0) throw std::runtime_error("cannot start peft-serve");
    for (int i = 0; i < 600 && port_ == 0; ++i) {  // up to 60 s for the model to load
      const std::string out = slurp(log);
      const auto at = out.find("listening on http://127.0.0.1:");
      if (at != std::string::npos) port_ = std::stoi(out.substr(at + 30));
      int status = 0;
      if (port_ == 0 && waitpid(pid_, &status, WNOHANG) == pid_) throw std::runtime_error("peft-serve exited: " + out);
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    if (port_ == 0) throw std::runtime_error("peft-serve did not start: " + slurp(log));
  }
  ~ServeProcess() { stop(); }
  /// SIGTERM, then the exit status.
  int stop() {
    if (pid_ <= 0) return exit_status_;
    kill(pid_, SIGTERM);
    int status = 0;
    waitpid(pid_, &status, 0);
    pid_ = 0;
    exit_status_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    return exit_status_;
  }
  int port() const { return port_; }
  const std::string& log() const { return log_; }

 private:
  pid_t pid_ = 0;
  int port_ = 0;
  int exit_status_ = -1;
  std::string log_;
};

/// Three LoRA deltas of the shipped tiny GPT-2, with weights that change its continuations.
void write_deltas(const std::string& dir) {
  PeftModel model(models::load_pretrained(model_dir()));
  torch::manual_seed(5);
  for (const char* name : {"alpha", "beta", "gamma"}) {
    model.add_adapter(name, *methods::parse_config({{"peft_type", "LORA"}, {"r", 4}, {"lora_alpha", 8},
                                                   {"fan_in_fan_out", true}, {"target_modules", {"c_attn", "c_fc"}}}));
    model.set_adapter(name);
    torch::NoGradGuard g;
    for (auto& p : model.trainable_parameters()) p.add_(torch::randn_like(p) * 0.3);
    checkpoint::save_adapter(model, dir + "/" + name, name);
  }
}

std::vector<int64_t> expected_tokens(const std::string& adapter_dir, const std::string& adapter, const std::string& prompt,
                                     int64_t tokens) {
  PeftModel model(models::load_pretrained(model_dir()));
  if (!adapter.empty()) checkpoint::load_adapter(model, adapter_dir + "/" + adapter, adapter);
  auto tok = tokenizers::load_tokenizer(model_dir());
  GenerationConfig c;
  c.max_new_tokens = tokens;
  if (tok->special().eos) c.stop_tokens.push_back(*tok->special().eos);
  return generate(model, tok->encode(prompt), c).tokens;
}

httplib::Client client(int port) {
  httplib::Client c("127.0.0.1", port);
  c.set_read_timeout(60, 0);
  return c;
}

nlohmann::json completion(int port, const nlohmann::json& body, int* status = nullptr) {
  auto c = client(port);
  auto res = c.Post("/v1/completions", body.dump(), "application/json");
  if (!res) return {{"transport_error", httplib::to_string(res.error())}};
  if (status) *status = res->status;
  return nlohmann::json::parse(res->body, nullptr, false);
}

TEST(Serve, CompletionsEqualInProcessGenerationAndBadInputsGetTheirStatus) {
  TempDir dir;
  const std::string deltas = dir.file("deltas");
  write_deltas(deltas);
  ServeProcess server({"--model", model_dir(), "--adapter", "alpha=" + deltas + "/alpha", "--adapter-dir", deltas,
                       "--max-loaded", "1", "--max-tokens", "64", "--max-body-bytes", "4096"},
                      dir.file("serve.log"));
  auto c = client(server.port());
  const int port = server.port();
  const std::string prompt = "The whale";
  for (const std::string adapter : {"", "alpha", "beta"}) {
    nlohmann::json body = {{"prompt", prompt}, {"max_tokens", 8}, {"temperature", 0}};
    if (!adapter.empty()) body["adapter"] = adapter;
    int status = 0;
    const auto out = completion(port, body, &status);
    ASSERT_EQ(status, 200) << out.dump();
    EXPECT_EQ(out["choices"][0]["tokens"].get<std::vector<int64_t>>(), expected_tokens(deltas, adapter, prompt, 8))
        << "adapter '" << adapter << "'";
    EXPECT_EQ(out["usage"]["completion_tokens"], out["choices"][0]["tokens"].size());
  }
  // Two concurrent requests for different deltas each equal their single-request result.
  std::vector<nlohmann::json> both(2);
  std::thread t1([&] { both[0] = completion(port, {{"prompt", "It was"}, {"adapter", "alpha"}, {"max_tokens", 12}, {"temperature", 0}}); });
  std::thread t2([&] { both[1] = completion(port, {{"prompt", "Mr. Speaker"}, {"adapter", "beta"}, {"max_tokens", 12}, {"temperature", 0}}); });
  t1.join();
  t2.join();
  EXPECT_EQ(both[0]["choices"][0]["tokens"].get<std::vector<int64_t>>(), expected_tokens(deltas, "alpha", "It was", 12));
  EXPECT_EQ(both[1]["choices"][0]["tokens"].get<std::vector<int64_t>>(), expected_tokens(deltas, "beta", "Mr. Speaker", 12));
  // Streaming: the events' texts make the non-streamed text.
  {
    auto s = client(port);
    std::string events;
    auto res = s.Post("/v1/completions", nlohmann::json{{"prompt", prompt}, {"adapter", "beta"}, {"max_tokens", 8}, {"temperature", 0}, {"stream", true}}.dump(),
                      "application/json");
    ASSERT_TRUE(res);
    EXPECT_EQ(res->status, 200);
    std::string text;
    std::istringstream lines(res->body);
    for (std::string line; std::getline(lines, line);) {
      if (line.rfind("data: {", 0) != 0) continue;
      text += nlohmann::json::parse(line.substr(6))["choices"][0]["text"].get<std::string>();
    }
    EXPECT_NE(res->body.find("data: [DONE]"), std::string::npos) << res->body;
    const auto plain = completion(port, {{"prompt", prompt}, {"adapter", "beta"}, {"max_tokens", 8}, {"temperature", 0}});
    EXPECT_EQ(text, plain["choices"][0]["text"].get<std::string>());
  }
  // --max-loaded 1: loading beta evicted nothing pinned; gamma is not there; beta reloads after eviction.
  auto listed = nlohmann::json::parse(c.Get("/v1/adapters")->body);
  EXPECT_EQ(listed["adapters"].size(), 2u) << listed.dump();  // alpha (pinned) and beta
  // Bad inputs, each with its status, and the server keeps serving.
  struct Bad {
    std::string body;
    int status;
    std::string mentions;
  };
  std::string long_prompt;  // more tokens than the model has positions, in under 4 KiB
  for (int i = 0; i < 700; ++i) long_prompt += " a";
  const std::vector<Bad> bad = {
      {"{not json", 400, "malformed JSON"},
      {R"({"prompt": "a", "max_tokens": 4, "bogus": 1})", 400, "bogus"},
      {R"({"prompt": "a", "adapter": "nope"})", 404, "nope"},
      {R"({"prompt": "a", "adapter": "../deltas/alpha"})", 400, "not a delta name"},
      {R"({"prompt": "a", "max_tokens": -3})", 400, "max_tokens"},
      {R"({"prompt": "a", "max_tokens": 100000})", 400, "max_tokens"},
      {R"({"prompt": 7})", 400, "prompt"},
      {R"({"max_tokens": 3})", 400, "prompt"},
      {R"({"prompt": "a", "temperature": "hot"})", 400, "temperature"},
      {nlohmann::json{{"prompt", long_prompt}, {"max_tokens", 60}}.dump(), 400, "context"},
      {nlohmann::json{{"prompt", std::string(5000, 'x')}}.dump(), 413, "body"},
  };
  for (const auto& b : bad) {
    auto res = c.Post("/v1/completions", b.body, "application/json");
    ASSERT_TRUE(res) << b.body.substr(0, 80);
    EXPECT_EQ(res->status, b.status) << b.body.substr(0, 80) << " -> " << res->body;
    EXPECT_NE(res->body.find(b.mentions), std::string::npos) << b.body.substr(0, 80) << " -> " << res->body;
  }
  // A delta of another base (its fingerprint differs) is refused with the reason.
  {
    PeftModel other(tiny_model("gpt2"));
    other.add_adapter("default", *methods::parse_config({{"peft_type", "LORA"}, {"r", 2}}));
    checkpoint::save_adapter(other, deltas + "/foreign");
    auto res = c.Post("/v1/adapters", R"({"name": "foreign"})", "application/json");
    ASSERT_TRUE(res);
    EXPECT_EQ(res->status, 400) << res->body;
  }
  // A symlink out of the adapter directory is refused.
  std::filesystem::create_directory_symlink(deltas + "/../outside", deltas + "/escape");
  std::filesystem::create_directories(dir.file("outside"));
  {
    auto res = c.Post("/v1/adapters", R"({"name": "escape"})", "application/json");
    ASSERT_TRUE(res);
    EXPECT_EQ(res->status, 400) << res->body;
    EXPECT_NE(res->body.find("outside the adapter directory"), std::string::npos) << res->body;
  }
  // --max-loaded 1: gamma, loaded on demand, evicts beta (alpha is pinned); beta comes back when asked for.
  const auto g1 = completion(port, {{"prompt", prompt}, {"adapter", "gamma"}, {"max_tokens", 8}, {"temperature", 0}});
  EXPECT_EQ(g1["choices"][0]["tokens"].get<std::vector<int64_t>>(), expected_tokens(deltas, "gamma", prompt, 8));
  listed = nlohmann::json::parse(c.Get("/v1/adapters")->body);
  std::vector<std::string> loaded;
  for (const auto& a : listed["adapters"]) loaded.push_back(a["name"]);
  EXPECT_EQ(loaded, (std::vector<std::string>{"alpha", "gamma"})) << listed.dump();
  const auto b2 = completion(port, {{"prompt", prompt}, {"adapter", "beta"}, {"max_tokens", 8}, {"temperature", 0}});
  EXPECT_EQ(b2["choices"][0]["tokens"].get<std::vector<int64_t>>(), expected_tokens(deltas, "beta", prompt, 8));
  EXPECT_EQ(c.Delete("/v1/adapters/beta")->status, 200);
  EXPECT_EQ(c.Delete("/v1/adapters/beta")->status, 404);
  const auto again = completion(port, {{"prompt", prompt}, {"adapter", "beta"}, {"max_tokens", 8}, {"temperature", 0}});
  EXPECT_EQ(again["choices"][0]["tokens"].get<std::vector<int64_t>>(), expected_tokens(deltas, "beta", prompt, 8))
      << "re-loaded after deletion";
  EXPECT_EQ(c.Get("/health")->status, 200);
  const std::string metrics = c.Get("/metrics")->body;
  EXPECT_NE(metrics.find("peft_requests_total{status=\"400\"}"), std::string::npos) << metrics;
  EXPECT_NE(metrics.find("peft_requests_total{status=\"200\"}"), std::string::npos) << metrics;
  EXPECT_NE(metrics.find("peft_tokens_generated_total"), std::string::npos) << metrics;
  EXPECT_EQ(server.stop(), 0) << slurp(server.log());
  EXPECT_NE(slurp(server.log()).find("peft-serve stopped"), std::string::npos);
}

TEST(Serve, AnEncoderDecodersConcurrentCompletionsEqualInProcessGeneration) {
  const std::string t5 = std::string(PEFT_SOURCE_DIR) + "/examples/models/tiny-t5-en";
  TempDir dir;
  {
    PeftModel model(models::load_pretrained(t5));
    model.add_adapter("t", *methods::parse_config({{"peft_type", "LORA"}, {"task_type", "SEQ_2_SEQ_LM"}, {"r", 4},
                                                   {"target_modules", {"q", "v", "wi_0", "wo"}}}));
    torch::manual_seed(9);
    torch::NoGradGuard g;
    for (auto& p : model.trainable_parameters()) p.add_(torch::randn_like(p) * 0.3);
    checkpoint::save_adapter(model, dir.file("t"), "t");
  }
  auto expected = [&](const std::string& adapter, const std::string& prompt, int64_t tokens) {
    PeftModel model(models::load_pretrained(t5));
    if (!adapter.empty()) checkpoint::load_adapter(model, dir.file(adapter), adapter);
    auto tok = tokenizers::load_tokenizer(t5);
    GenerationConfig c;
    c.max_new_tokens = tokens;
    c.stop_tokens.push_back(*tok->special().eos);
    return generate(model, encode_prompt(*tok, prompt, /*encoder_decoder=*/true), c).tokens;
  };
  ServeProcess server({"--model", t5, "--adapter", "t=" + dir.file("t")}, dir.file("serve.log"));
  const int port = server.port();
  // Prompts of different lengths for the bare base and the delta, decoded in one batch.
  const std::vector<std::pair<std::string, std::string>> requests = {
      {"", "genre: The jury said the election was conducted well."}, {"t", "genre: It rained."},
      {"t", "The whale swam on through the long grey night, and the ship followed it."}, {"", "Mr. Speaker"}};
  std::vector<nlohmann::json> out(requests.size());
  std::vector<std::thread> threads;
  for (size_t i = 0; i < requests.size(); ++i)
    threads.emplace_back([&, i] {
      nlohmann::json body = {{"prompt", requests[i].second}, {"max_tokens", 10}, {"temperature", 0}};
      if (!requests[i].first.empty()) body["adapter"] = requests[i].first;
      out[i] = completion(port, body);
    });
  for (auto& t : threads) t.join();
  for (size_t i = 0; i < requests.size(); ++i) {
    ASSERT_TRUE(out[i].contains("choices")) << out[i].dump() << slurp(server.log());
    EXPECT_EQ(out[i]["choices"][0]["tokens"].get<std::vector<int64_t>>(), expected(requests[i].first, requests[i].second, 10))
        << "request " << i;
  }
}

TEST(Serve, ApiKeyIsRequiredWhenGiven) {
  TempDir dir;
  ServeProcess server({"--model", model_dir(), "--api-key", "s3cret"}, dir.file("serve.log"));
  auto c = client(server.port());
  const int port = server.port();
  EXPECT_EQ(c.Get("/health")->status, 401);
  httplib::Headers auth = {{"Authorization", "Bearer s3cret"}};
  EXPECT_EQ(c.Get("/health", auth)->status, 200);
  EXPECT_EQ(c.Get("/health", httplib::Headers{{"Authorization", "Bearer wrong"}})->status, 401);
}

TEST(Serve, ClassifyServesClassificationDeltasBesideCompletions) {
  TempDir dir;
  const std::string deltas = dir.file("deltas");
  write_deltas(deltas);
  const std::vector<std::string> texts = {"Call now to claim your free prize", "See you at lunch"};
  std::vector<at::Tensor> expected;
  {
    auto tok = tokenizers::load_tokenizer(model_dir());
    models::LoadOptions o;
    o.task = "sequence_classification";
    o.num_labels = 3;
    PeftModel m(models::load_pretrained(model_dir(), o));
    m.add_adapter("default", *methods::parse_config({{"peft_type", "LORA"}, {"task_type", "SEQ_CLS"}, {"r", 4},
                                                     {"target_modules", {"c_attn"}}, {"fan_in_fan_out", true}}));
    torch::manual_seed(9);
    {
      torch::NoGradGuard g;
      for (auto& p : m.trainable_parameters()) p.add_(torch::randn_like(p) * 0.3);
    }
    checkpoint::save_adapter(m, deltas + "/topic");
    m.eval();
    torch::NoGradGuard g;
    for (const auto& t : texts) {
      models::ModelInputs in;
      in.input_ids = torch::tensor(tok->encode(t), torch::kLong).unsqueeze(0);
      expected.push_back(m.forward(in).logits.reshape({-1}).to(torch::kFloat64).softmax(0));
    }
  }
  ServeProcess server({"--model", model_dir(), "--adapter-dir", deltas}, dir.file("serve.log"));
  const int port = server.port();
  auto c = client(port);
  auto res = c.Post("/v1/classify", nlohmann::json{{"input", texts}, {"adapter", "topic"}}.dump(), "application/json");
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  const auto out = nlohmann::json::parse(res->body);
  ASSERT_EQ(out["data"].size(), texts.size());
  for (size_t i = 0; i < texts.size(); ++i) {
    const auto& d = out["data"][i];
    ASSERT_EQ(d["probabilities"].size(), 3u) << d.dump();
    for (int64_t k = 0; k < 3; ++k)
      EXPECT_NEAR(d["probabilities"][fmt::format("LABEL_{}", k)].get<double>(), expected[i][k].item<double>(), 1e-9) << i;
    EXPECT_EQ(d["label_index"].get<int64_t>(), expected[i].argmax().item<int64_t>());
    EXPECT_EQ(d["label"], fmt::format("LABEL_{}", d["label_index"].get<int64_t>()));
  }
  // The LM on the shared base still equals generate(), with and without a delta.
  for (const std::string adapter : {"", "beta"}) {
    nlohmann::json body = {{"prompt", "The whale"}, {"max_tokens", 8}, {"temperature", 0}};
    if (!adapter.empty()) body["adapter"] = adapter;
    const auto got = completion(port, body);
    EXPECT_EQ(got["choices"][0]["tokens"].get<std::vector<int64_t>>(), expected_tokens(deltas, adapter, "The whale", 8)) << adapter;
  }
  const std::vector<std::tuple<std::string, std::string, int, std::string>> bad = {
      {"/v1/classify", R"({"input": "x", "adapter": "beta"})", 400, "not a sequence-classification delta"},
      {"/v1/completions", R"({"prompt": "x", "adapter": "topic"})", 400, "/v1/classify"},
      {"/v1/classify", R"({"input": "x"})", 400, "adapter"},
      {"/v1/classify", R"({"input": "x", "adapter": "nope"})", 404, "nope"},
      {"/v1/classify", R"({"input": [], "adapter": "topic"})", 400, "input"},
      {"/v1/classify", R"({"input": "x", "adapter": "topic", "top_k": 2})", 400, "top_k"},
      {"/v1/classify", "[1, 2", 400, "malformed JSON"},
  };
  for (const auto& [path, body, status, mentions] : bad) {
    auto r = c.Post(path.c_str(), body, "application/json");
    ASSERT_TRUE(r) << body;
    EXPECT_EQ(r->status, status) << body << " -> " << r->body;
    EXPECT_NE(r->body.find(mentions), std::string::npos) << body << " -> " << r->body;
  }
  const auto listed = nlohmann::json::parse(c.Get("/v1/adapters")->body);
  bool seen = false;
  for (const auto& a : listed["adapters"])
    if (a["name"] == "topic") {
      seen = true;
      EXPECT_EQ(a["task"], "classification");
      EXPECT_EQ(a["labels"].size(), 3u);
    }
  EXPECT_TRUE(seen) << listed.dump();
  EXPECT_EQ(c.Delete("/v1/adapters/topic")->status, 200);
  EXPECT_EQ(c.Post("/v1/classify", R"({"input": "x", "adapter": "topic"})", "application/json")->status, 200) << "loads again";
  EXPECT_EQ(server.stop(), 0) << slurp(server.log());
}

TEST(Serve, SigtermFinishesTheRequestsInFlight) {
  TempDir dir;
  ServeProcess server({"--model", model_dir()}, dir.file("serve.log"));
  const int port = server.port();
  std::vector<nlohmann::json> got(4);
  std::vector<int> status(4, 0);
  std::vector<std::thread> clients;
  for (size_t i = 0; i < got.size(); ++i)
    clients.emplace_back([&, i] {
      got[i] = completion(port, {{"prompt", "It was"}, {"max_tokens", 200}, {"temperature", 0.8}, {"seed", i}}, &status[i]);
    });
  // SIGTERM once the requests are decoding.
  auto c = client(port);
  for (int i = 0; i < 2000; ++i) {
    auto m = c.Get("/metrics");
    if (m && m->body.find("peft_running_requests 0") == std::string::npos) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  EXPECT_EQ(server.stop(), 0) << slurp(server.log());
  for (auto& t : clients) t.join();
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_EQ(status[i], 200) << got[i].dump();
    EXPECT_GT(got[i]["usage"]["completion_tokens"].get<int64_t>(), 0) << got[i].dump();
  }
  EXPECT_NE(slurp(server.log()).find("peft-serve stopped"), std::string::npos);
  EXPECT_TRUE(completion(port, {{"prompt", "x"}}).contains("transport_error")) << "no longer listening";
}

/// A raw client that sends `data`, then waits for the reply or its closing: what came back and when.
std::pair<std::string, double> raw_exchange(int port, const std::string& data, double wait_s) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return {"connect failed", 0};
  }
  const auto t0 = std::chrono::steady_clock::now();
  (void)!send(fd, data.data(), data.size(), 0);
  timeval tv{static_cast<time_t>(wait_s), 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  std::string out;
  char buf[4096];
  for (ssize_t n; (n = recv(fd, buf, sizeof(buf), 0)) > 0;) {
    out.append(buf, static_cast<size_t>(n));
    if (out.find("\r\n\r\n") != std::string::npos && out.find("}}") != std::string::npos) break;
  }
  close(fd);
  return {out, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count()};
}

TEST(Serve, SlowClientsAreCutOffWithoutHoldingOthersUp) {
  TempDir dir;
  ServeProcess server({"--model", model_dir(), "--io-timeout", "1", "--http-threads", "4"}, dir.file("serve.log"));
  const int port = server.port();
  // Three clients stall: a body shorter than its Content-Length, headers never finished, nothing at all.
  std::vector<std::pair<std::string, double>> slow(3);
  std::vector<std::thread> stalled;
  const std::vector<std::string> sends = {
      "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"prompt\"",
      "POST /v1/completions HTTP/1.1\r\nHost: x\r\n", ""};
  for (size_t i = 0; i < sends.size(); ++i) stalled.emplace_back([&, i] { slow[i] = raw_exchange(port, sends[i], 10); });
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  // Meanwhile a well-behaved request is answered.
  int status = 0;
  const auto t0 = std::chrono::steady_clock::now();
  const auto ok = completion(port, {{"prompt", "The whale"}, {"max_tokens", 4}, {"temperature", 0}}, &status);
  EXPECT_EQ(status, 200) << ok.dump();
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 5.0);
  for (auto& t : stalled) t.join();
  EXPECT_NE(slow[0].first.find("400"), std::string::npos) << slow[0].first;
  EXPECT_NE(slow[0].first.find("Content-Length"), std::string::npos) << "a JSON error saying why: " << slow[0].first;
  for (const auto& [reply, seconds] : slow) EXPECT_LT(seconds, 8.0) << "cut off after --io-timeout: " << reply;
  EXPECT_EQ(completion(port, {{"prompt", "x"}, {"max_tokens", 2}}, &status).contains("choices"), true);
  EXPECT_EQ(server.stop(), 0) << slurp(server.log());
}

}  // namespace
}  // namespace peft::test

#endif
