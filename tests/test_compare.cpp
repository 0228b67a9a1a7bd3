// clipcu compare (engine/inspect.h): the norm-wise relative error, the max abs error and where it
// is, worst-first order, shape mismatches, names in one file only, NaN/inf handling, prefixes,
// and the command's exit status on identical files, a planted difference and disjoint files.
#include <cmath>
#include <limits>

#include "engine/inspect.h"
#include "tests/support.h"

using namespace clipcu;

namespace {

const inspect::CompareRow* find_row(const inspect::CompareResult& r, const std::string& name) {
  for (const auto& row : r.rows)
    if (row.name == name) return &row;
  return nullptr;
}

Tensor f32(const Shape& s, test::Fill fill, uint64_t seed) {
  return test::make_input(s, fill, seed, false, DType::F32);
}

// b with one element changed by `delta` at a flat index.
Tensor planted(const Tensor& b, int64_t flat, double delta) {
  Tensor a = b.clone();
  std::vector<float> v = a.to_f32_vector();
  v[size_t(flat)] += float(delta);
  return Tensor::from_vector(v, a.shape());
}

}  // namespace

TEST_CASE("identical tensors of every fill compare with zero error") {
  for (test::Fill fill : {test::Fill::Random, test::Fill::Ones, test::Fill::Arange}) {
    st::NamedTensors a = {{"x", f32({3, 5, 7}, fill, 1)}, {"y", f32({1}, fill, 2)}, {"z", f32({13}, fill, 3)}};
    st::NamedTensors b;
    for (auto& [n, t] : a) b.emplace_back(n, t.clone());
    inspect::CompareOptions opt;
    opt.rtol = 0;  // bit-identical: even a zero tolerance passes
    inspect::CompareResult r = inspect::compare(a, b, opt);
    REQUIRE(r.rows.size() == 3);
    CHECK(r.ok());
    for (const auto& row : r.rows) {
      CHECK(row.rel_err == 0);
      CHECK(row.max_abs == 0);
    }
    CHECK(r.only_a.empty());
    CHECK(r.only_b.empty());
  }
}

TEST_CASE("a planted difference is found with its relative error and max abs error and multi-index and values") {
  for (test::Fill fill : {test::Fill::Random, test::Fill::Ones, test::Fill::Arange}) {
    const Tensor b = f32({3, 4, 5}, fill, 7);
    const int64_t flat = 1 * 20 + 2 * 5 + 3;  // [1, 2, 3]
    const Tensor a = planted(b, flat, 0.5);
    inspect::CompareOptions opt;
    opt.rtol = 1e-6;
    inspect::CompareResult r = inspect::compare({{"t", a}}, {{"t", b}}, opt);
    REQUIRE(r.rows.size() == 1);
    const auto& row = r.rows[0];
    double norm_b = 0;
    for (double v : b.to_f64_vector()) norm_b += v * v;
    norm_b = std::sqrt(norm_b);
    // Only one element differs, by 0.5 up to float32 rounding of the planted value.
    const double delta = double(a.to_f32_vector()[flat]) - double(b.to_f32_vector()[flat]);
    CHECK(row.max_abs == doctest::Approx(delta).epsilon(1e-12));
    CHECK(row.rel_err == doctest::Approx(std::fabs(delta) / norm_b).epsilon(1e-12));
    CHECK(row.worst_index == std::vector<int64_t>{1, 2, 3});
    CHECK(row.a_at == doctest::Approx(row.b_at + delta));
    CHECK_FALSE(row.ok);
    CHECK(r.failures() == 1);
    // The same difference within a looser tolerance passes.
    opt.rtol = 1.0;
    CHECK(inspect::compare({{"t", a}}, {{"t", b}}, opt).ok());
  }
}

TEST_CASE("the first index of the largest difference wins ties") {
  const Tensor b = Tensor::zeros({2, 3});
  const Tensor a = Tensor::from_vector(std::vector<float>{0, 1, 0, 1, 0, 0}, {2, 3});
  inspect::CompareResult r = inspect::compare({{"t", a}}, {{"t", b}}, {});
  REQUIRE(r.rows.size() == 1);
  CHECK(r.rows[0].worst_index == std::vector<int64_t>{0, 1});
  // A zero reference: the error is absolute (||a - b||), so this fails any small rtol.
  CHECK(r.rows[0].rel_err == doctest::Approx(std::sqrt(2.0)));
  CHECK_FALSE(r.ok());
}

TEST_CASE("rows come worst first with shape mismatches before everything and one-sided names listed") {
  const Tensor ref = f32({11}, test::Fill::Arange, 0);
  st::NamedTensors b = {
      {"small", ref}, {"big", ref}, {"same", ref}, {"shape", f32({2, 3}, test::Fill::Ones, 0)}, {"only_b", ref}};
  st::NamedTensors a = {{"only_a", ref},
                        {"same", ref.clone()},
                        {"small", planted(ref, 4, 1e-3)},
                        {"big", planted(ref, 9, 1.0)},
                        {"shape", f32({3, 2}, test::Fill::Ones, 0)}};
  double norm = 0;
  for (double v : ref.to_f64_vector()) norm += v * v;
  norm = std::sqrt(norm);
  inspect::CompareOptions opt;
  opt.rtol = 0.1 / norm;  // between the two planted errors, 1 / norm and 1e-3 / norm
  inspect::CompareResult r = inspect::compare(a, b, opt);
  REQUIRE(r.rows.size() == 4);
  CHECK(r.rows[0].name == "shape");
  CHECK(r.rows[0].shape_mismatch);
  CHECK_FALSE(r.rows[0].ok);
  CHECK(r.rows[1].name == "big");
  CHECK(r.rows[2].name == "small");
  CHECK(r.rows[3].name == "same");
  CHECK(find_row(r, "big")->rel_err == doctest::Approx(1.0 / norm).epsilon(1e-5));
  CHECK(find_row(r, "small")->rel_err == doctest::Approx(1e-3 / norm).epsilon(1e-3));  // float32 rounding of x + 1e-3
  CHECK_FALSE(find_row(r, "big")->ok);
  CHECK(find_row(r, "small")->ok);
  CHECK(r.failures() == 2);
  CHECK(r.only_a == std::vector<std::string>{"only_a"});
  CHECK(r.only_b == std::vector<std::string>{"only_b"});
  const std::string table = inspect::format_compare(r, opt, "A", "B");
  CHECK(table.find("SHAPE") != std::string::npos);
  CHECK(table.find("only_a") != std::string::npos);
  CHECK(table.find("only_b") != std::string::npos);
}

TEST_CASE("a 0-d scalar and a one-element vector are the same shape") {
  inspect::CompareResult r =
      inspect::compare({{"s", Tensor::full({}, 2.5)}}, {{"s", Tensor::full({1}, 2.5)}}, inspect::CompareOptions{});
  REQUIRE(r.rows.size() == 1);
  CHECK_FALSE(r.rows[0].shape_mismatch);
  CHECK(r.ok());
}

TEST_CASE("NaN and infinity agree when equal on both sides and fail on one side") {
  const double nan = std::numeric_limits<double>::quiet_NaN(), inf = std::numeric_limits<double>::infinity();
  Tensor b = Tensor::from_vector(std::vector<float>{1.0f, float(nan), float(inf)}, {3});
  inspect::CompareResult same = inspect::compare({{"t", b.clone()}}, {{"t", b}}, {});
  CHECK(same.ok());
  Tensor a = Tensor::from_vector(std::vector<float>{float(nan), float(nan), float(inf)}, {3});
  inspect::CompareResult diff = inspect::compare({{"t", a}}, {{"t", b}}, {});
  REQUIRE(diff.rows.size() == 1);
  CHECK_FALSE(diff.ok());
  CHECK(diff.rows[0].worst_index == std::vector<int64_t>{0});
}

TEST_CASE("prefixes match grad: names against grad. names and atol rescues zero references") {
  const Tensor g = f32({5, 3}, test::Fill::Random, 11);
  // The gradient of attention's key bias is zero in exact arithmetic; a float64 reference holds
  // ~1e-18 of roundoff and a float32 engine ~1e-8: a huge relative error, a tiny absolute one.
  st::NamedTensors ours = {{"grad:w", g}, {"grad:k_bias", Tensor::full({4}, 1e-8)}, {"w", g}};
  st::NamedTensors ref = {{"grad.w", g.clone()}, {"grad.k_bias", Tensor::full({4}, 1e-18)}, {"eval.x", g}};
  inspect::CompareOptions opt;
  opt.prefix_a = "grad:";
  opt.prefix_b = "grad.";
  opt.rtol = 1e-4;
  inspect::CompareResult r = inspect::compare(ours, ref, opt);
  REQUIRE(r.rows.size() == 2);
  CHECK(r.only_a.empty());
  CHECK(r.only_b.empty());
  REQUIRE(find_row(r, "k_bias") != nullptr);
  CHECK(find_row(r, "k_bias")->rel_err > 1e9);
  CHECK(find_row(r, "w")->ok);
  CHECK(r.failures() == 1);
  opt.atol = 1e-7;
  CHECK(inspect::compare(ours, ref, opt).ok());
  // --match narrows to some names
  opt.match = {"w"};
  CHECK(inspect::compare(ours, ref, opt).rows.size() == 1);
}

TEST_CASE("clipcu compare exits 0 on identical files and non-zero on a planted difference or no common names") {
  const std::string dir = test::temp_dir("compare");
  const Tensor x = f32({4, 6}, test::Fill::Random, 3), y = f32({7}, test::Fill::Arange, 0);
  st::save(dir + "/a.safetensors", {{"x", x}, {"y", y}});
  st::save(dir + "/same.safetensors", {{"x", x.clone()}, {"y", y.clone()}});
  st::save(dir + "/planted.safetensors", {{"x", planted(x, 2 * 6 + 5, 0.25)}, {"y", y.clone()}});
  st::save(dir + "/other.safetensors", {{"z", x}});
  const std::string bin = test::clipcu_binary() + " compare ";
  std::string out;
  CHECK_MESSAGE(test::run_command(bin + dir + "/same.safetensors " + dir + "/a.safetensors", &out) == 0, out);
  CHECK(out.find("2 common tensor(s), 0 past rtol") != std::string::npos);

  const int rc = test::run_command(bin + dir + "/planted.safetensors " + dir + "/a.safetensors --rtol 1e-5", &out);
  CHECK_MESSAGE(rc != 0, out);
  CHECK_MESSAGE(out.find("[2, 5]") != std::string::npos, out);  // where the difference is
  CHECK(out.find("FAIL") != std::string::npos);
  // x is the worst: its row comes before y's
  CHECK(out.find("\nx ") < out.find("\ny "));
  // A generous tolerance lets it pass.
  CHECK_MESSAGE(test::run_command(bin + dir + "/planted.safetensors " + dir + "/a.safetensors --rtol 1", &out) == 0,
                out);

  CHECK(test::run_command(bin + dir + "/other.safetensors " + dir + "/a.safetensors", &out) != 0);
  CHECK(out.find("no tensor name in common") != std::string::npos);
  // A missing file is an error naming it.
  CHECK(test::run_command(bin + dir + "/absent.safetensors " + dir + "/a.safetensors", &out) != 0);
  CHECK(out.find("absent.safetensors") != std::string::npos);
}
