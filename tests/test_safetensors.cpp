// safetensors reader and writer: round trips of every dtype, metadata, the golden files, and
// every class of malformed file rejected with the file name and the right reason.
#include <cstring>
#include <fstream>

#include "tests/support.h"

using namespace clipcu;

namespace {

std::string header_file(const std::string& json, const std::string& data) {
  std::string out;
  uint64_t n = json.size();
  for (int i = 0; i < 8; ++i) out.push_back(char((n >> (8 * i)) & 0xff));
  return out + json + data;
}

// Expects parse() to throw an Error whose message names the origin and contains `reason`.
void expect_reject(const std::string& bytes, const std::string& reason) {
  INFO("expected reason: " << reason);
  try {
    st::File::parse(bytes.data(), bytes.size(), "bad.safetensors");
    FAIL("accepted a malformed file");
  } catch (const Error& e) {
    std::string msg = e.what();
    CHECK_MESSAGE(msg.find("bad.safetensors") != std::string::npos, msg);
    CHECK_MESSAGE(msg.find(reason) != std::string::npos, msg);
  }
}

}  // namespace

TEST_CASE("round trip of every dtype with metadata, through a file") {
  st::NamedTensors ts;
  ts.emplace_back("f32", Tensor::arange({2, 3}));
  ts.emplace_back("f64", Tensor::arange({5}, DType::F64));
  ts.emplace_back("bf16", Tensor::arange({3}, DType::BF16));
  ts.emplace_back("f16", Tensor::arange({1, 1, 2}, DType::F16));
  ts.emplace_back("i64", Tensor::from_ints({-1, 1LL << 40, 3}, {3}));
  ts.emplace_back("i32", Tensor::from_ints({4, -5}, {2}, DType::I32));
  ts.emplace_back("u8", Tensor::from_ints({0, 255, 7}, {3}, DType::U8));
  ts.emplace_back("empty", Tensor::zeros({0, 4}));
  std::string dir = test::temp_dir("safetensors_rt");
  std::string path = dir + "/rt.safetensors";
  st::save(path, ts, {{"format", "pt"}, {"note", "hello"}});
  st::File f = st::File::open(path);
  CHECK(f.metadata().at("note") == "hello");
  CHECK(f.entries().size() == ts.size());
  for (auto& [name, t] : ts) {
    Tensor g = f.get(name);
    CHECK(g.dtype() == t.dtype());
    CHECK(g.shape() == t.shape());
    CHECK(std::memcmp(g.raw(), t.raw(), t.nbytes()) == 0);
  }
  CHECK(f.get("i64").to_i64_vector()[1] == (1LL << 40));
  Tensor conv = f.get("bf16", DType::F32);
  CHECK(conv.to_f32_vector() == std::vector<float>{0, 1, 2});
  CHECK_THROWS_WITH_AS(f.get("nope"), doctest::Contains("no tensor 'nope'"), Error);
  // the borrowed tensor keeps the mapping alive after the File is gone
  Tensor keep;
  {
    st::File g = st::File::open(path);
    keep = g.get("f32");
  }
  CHECK(keep.to_f32_vector()[5] == 5.0f);
  CHECK_THROWS_WITH_AS(st::save(path, {{"a", Tensor::zeros({1})}, {"a", Tensor::zeros({1})}}),
                       doctest::Contains("appears twice"), Error);
}

TEST_CASE("golden files parse and their tensors are sized as declared") {
  const st::File& ops = test::golden("ops.safetensors");
  CHECK(ops.contains("layernorm.x"));
  CHECK(ops.get("layernorm.x").shape() == Shape{6, 40});
  CHECK(ops.metadata().count("layernorm") == 1);
  const st::File& w = test::golden("clip_vit_tiny.weights.safetensors");
  CHECK(w.contains("visual.conv1.weight"));
  CHECK(w.get("visual.conv1.weight").dtype() == DType::F32);
}

TEST_CASE("malformed files are rejected with the reason") {
  const std::string ok_json = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  const std::string eight(8, '\0');
  // sanity: the well-formed version parses
  std::string good = header_file(ok_json, eight);
  CHECK_NOTHROW(st::File::parse(good.data(), good.size(), "ok"));

  expect_reject(std::string(5, '\0'), "shorter than the 8-byte header length");
  {
    std::string b = header_file(ok_json, eight);
    b[0] = char(0xff), b[1] = char(0xff), b[2] = char(0xff), b[3] = char(0x7f);  // huge length
    expect_reject(b, "exceeds the 100 MB limit");
  }
  {
    std::string b = header_file(ok_json, eight);
    b[0] = char(b[0] + 100);  // length past the end
    expect_reject(b, "runs past the end of the file");
  }
  expect_reject(header_file("[1,2]   ", ""), "does not start with '{'");
  expect_reject(header_file("{\"a\":", ""), "not valid JSON");
  expect_reject(header_file(R"({"a":{"dtype":"X9","shape":[2],"data_offsets":[0,8]}})", eight), "unsupported dtype 'X9'");
  expect_reject(header_file(R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", eight),
                "not a non-negative integer");
  expect_reject(header_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}})", std::string(4, '\0')),
                "holds 4 bytes but its shape and dtype need 8");
  expect_reject(header_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", std::string(4, '\0')),
                "truncated");
  expect_reject(header_file(ok_json, std::string(12, '\0')), "4 trailing bytes");
  expect_reject(header_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", eight), "gap in the data");
  expect_reject(header_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                            R"("b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                            eight),
                "overlaps");
  expect_reject(header_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", eight), "ends before it begins");
  expect_reject(header_file(R"({"a":{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,8]}})", eight),
                "overflows");
  expect_reject(header_file(R"({"a":{"dtype":"F32","shape":[2]}})", eight), "no data_offsets pair");
  expect_reject(header_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"x":1}})", eight),
                "unknown field 'x'");
  expect_reject(header_file(R"({"__metadata__":{"k":1},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", eight),
                "__metadata__ value 'k' is not a string");
}

TEST_CASE("files on disk: missing, truncated, a directory") {
  std::string dir = test::temp_dir("safetensors_bad");
  CHECK_THROWS_WITH_AS(st::File::open(dir + "/missing.safetensors"), doctest::Contains("missing.safetensors"), Error);
  CHECK_THROWS_WITH_AS(st::File::open(dir), doctest::Contains("not a regular file"), Error);
  std::string full = st::serialize({{"w", Tensor::arange({16})}});
  std::ofstream(dir + "/cut.safetensors", std::ios::binary) << full.substr(0, full.size() - 10);
  CHECK_THROWS_WITH_AS(st::File::open(dir + "/cut.safetensors"), doctest::Contains("cut.safetensors"), Error);
}
