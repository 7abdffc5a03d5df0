// safetensors: round trips for every dtype, byte compatibility with the reference writer,
// and a clear error (never an out-of-bounds read) for every malformed file.
#include <torch/torch.h>

#include "peft/core/safetensors.h"
#include "test_util.h"

namespace peft::test {
namespace {

namespace st = safetensors;

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary) << bytes;
}

std::string with_header(const std::string& header, const std::string& data) {
  std::string out(8, '\0');
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out + header + data;
}

void expect_rejected(const std::string& bytes, const std::string& needle) {
  TempDir dir;
  write_bytes(dir.file("bad.safetensors"), bytes);
  try {
    st::File f(dir.file("bad.safetensors"));
    ADD_FAILURE() << "accepted a malformed file; expected: " << needle;
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("bad.safetensors"), std::string::npos) << msg;
    EXPECT_NE(msg.find(needle), std::string::npos) << msg;
  }
}

TEST(Safetensors, EveryDtypeRoundTripsBitExact) {
  torch::manual_seed(0);
  st::TensorMap tensors = {
      {"f64", torch::randn({3, 2}, torch::kDouble)},
      {"f32", torch::randn({4}, torch::kFloat)},
      {"f16", torch::randn({2, 3}).to(torch::kHalf)},
      {"bf16", torch::randn({5}).to(torch::kBFloat16)},
      {"i64", torch::randint(-1000000, 1000000, {3}, torch::kLong)},
      {"i32", torch::randint(-1000, 1000, {2, 2}, torch::kInt)},
      {"i16", torch::randint(-1000, 1000, {3}, torch::kShort)},
      {"i8", torch::randint(-100, 100, {3}, torch::kChar)},
      {"u8", torch::randint(0, 255, {3}, torch::kByte)},
      {"bool", torch::tensor({true, false, true})},
      {"scalar", torch::tensor(3.5)},
      {"empty", torch::zeros({0, 4})},
      {"strided", torch::arange(12, torch::kFloat).view({3, 4}).t()},
  };
  TempDir dir;
  st::save_file(dir.file("all.safetensors"), tensors, {{"format", "pt"}, {"note", "quote \" and \\ ok"}});
  st::File f(dir.file("all.safetensors"));
  EXPECT_EQ(f.metadata().at("note"), "quote \" and \\ ok");
  EXPECT_EQ(f.tensors().size(), tensors.size());
  for (auto& [name, t] : tensors) {
    auto back = f.load(name);
    EXPECT_EQ(back.scalar_type(), t.scalar_type()) << name;
    EXPECT_TRUE(bit_equal(back, t.contiguous())) << name;
  }
  // Data order: descending dtype, then name (the reference writer's order).
  std::vector<std::string> order;
  for (const auto& t : f.tensors()) order.push_back(t.name);
  EXPECT_EQ(order.front(), "i64");
  EXPECT_EQ(order.back(), "bool");
}

TEST(Safetensors, ByteCompatibleWithTheFixtures) {
  for (const char* rel : {"hf/models/gpt2/model.safetensors", "hf/models/gpt2/inputs.safetensors",
                          "hf/adapters/gpt2_lora/adapter/adapter_model.safetensors",
                          "hf/training/gpt2_lora_step/grads.safetensors"}) {
    st::File f(fixture(rel));
    EXPECT_EQ(st::serialize(f.load_all(), f.metadata()), read_bytes(fixture(rel))) << rel;
  }
}

TEST(Safetensors, WriteIsAtomicAndLeavesNoTemporaries) {
  TempDir dir;
  st::save_file(dir.file("x.safetensors"), {{"a", torch::ones({2})}});
  // A failing write (undefined tensor) leaves the previous file intact and no temp file.
  EXPECT_THROW(st::save_file(dir.file("x.safetensors"), {{"a", at::Tensor()}}), Error);
  EXPECT_TRUE(bit_equal(st::load_file(dir.file("x.safetensors")).at("a"), torch::ones({2})));
  int files = 0;
  for (auto& e : std::filesystem::directory_iterator(dir.path())) files += e.is_regular_file();
  EXPECT_EQ(files, 1);
  EXPECT_THROW(st::save_file(dir.file("missing/dir/x.safetensors"), {{"a", torch::ones({1})}}), Error);
}

TEST(Safetensors, RejectsTruncatedFiles) {
  expect_rejected("", "truncated");
  expect_rejected(std::string("\x10\0\0", 3), "truncated");
  const std::string good = read_bytes(fixture("hf/models/gpt2/inputs.safetensors"));
  expect_rejected(good.substr(0, good.size() - 1), "truncated");
  expect_rejected(good.substr(0, 100), "beyond the end of the file");
}

TEST(Safetensors, RejectsHeaderLengthBeyondTheFile) {
  std::string bytes = with_header("{}", "");
  bytes[7] = '\x7f';  // an absurd length
  expect_rejected(bytes, "exceeds");
  std::string shorter = with_header("{}", "");
  shorter[0] = 50;
  expect_rejected(shorter, "beyond the end of the file");
}

TEST(Safetensors, RejectsBadJson) {
  expect_rejected(with_header("{\"a\": {", ""), "bad JSON");
  expect_rejected(with_header("[1,2]   ", ""), "must be a JSON object");
  expect_rejected(with_header(R"({"a":{"dtype":"F32","shape":[1]}})", "xxxx"), "has no 'data_offsets'");
  expect_rejected(with_header(R"({"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", "xxxx"), "non-negative");
  expect_rejected(with_header(R"({"__metadata__":{"k":1}})", ""), "must be a string");
}

TEST(Safetensors, RejectsUnknownDtype) {
  expect_rejected(with_header(R"({"a":{"dtype":"F8_E4M3","shape":[1],"data_offsets":[0,1]}})", "x"),
                  "unknown dtype 'F8_E4M3'");
}

TEST(Safetensors, RejectsShapeOffsetMismatch) {
  expect_rejected(with_header(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}})", "xxxx"),
                  "expects 8 bytes");
  expect_rejected(with_header(R"({"a":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,4]}})", "xxxx"),
                  "overflows");
}

TEST(Safetensors, RejectsOverlappingOutOfOrderAndGappedOffsets) {
  expect_rejected(with_header(R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[4],"data_offsets":[2,6]}})", "xxxxxx"),
                  "overlaps");
  expect_rejected(with_header(R"({"a":{"dtype":"U8","shape":[0],"data_offsets":[4,0]}})", "xxxx"), "out of order");
  expect_rejected(with_header(R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[2,4]}})", "xxxx"), "gap");
  expect_rejected(with_header(R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}})", "xxxx"), "trailing bytes");
  expect_rejected(with_header(R"({"a":{"dtype":"U8","shape":[8],"data_offsets":[0,8]}})", "xxxx"), "ends at byte 8");
}

TEST(Safetensors, RejectsDuplicateNames) {
  expect_rejected(with_header(R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"a":{"dtype":"U8","shape":[2],"data_offsets":[2,4]}})", "xxxx"),
                  "duplicate tensor name 'a'");
}

TEST(Safetensors, MissingTensorIsNamed) {
  st::File f(fixture("hf/models/gpt2/inputs.safetensors"));
  try {
    f.load("token_type_ids");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("token_type_ids"), std::string::npos);
  }
}

TEST(Safetensors, RandomCorruptionNeverCrashes) {
  // Flip bytes of a real file at random: every outcome is a clean parse or a peft::Error.
  const std::string good = read_bytes(fixture("hf/adapters/gpt2_lora/adapter/adapter_model.safetensors"));
  std::mt19937 rng(1234);
  TempDir dir;
  int rejected = 0;
  for (int trial = 0; trial < 300; ++trial) {
    std::string bytes = good;
    const size_t limit = trial % 2 ? 8 + 520 : bytes.size();  // half the trials hit the header
    for (int k = 0; k < 3; ++k) bytes[rng() % limit] = static_cast<char>(rng());
    if (trial % 7 == 0) bytes.resize(rng() % bytes.size());
    write_bytes(dir.file("c.safetensors"), bytes);
    try {
      st::File f(dir.file("c.safetensors"));
      f.load_all();
    } catch (const Error&) {
      ++rejected;
    }
  }
  EXPECT_GT(rejected, 0);
}

}  // namespace
}  // namespace peft::test
