// GEMM variants against the float64 naive oracle, and the matmul / linear ops: golden parity
// (forward and every gradient), float64 finite-difference checks, and shape errors.
#include <cmath>
#include <limits>
#include <vector>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "kernels/cpu/matmul.h"
#include "tests/support.h"

using namespace clipcu;
using test::Fill;
using test::kFills;
using test::fill_name;
using test::golden_input;

namespace {

const cpu::GemmVariant kFastVariants[] = {cpu::GemmVariant::Blocked, cpu::GemmVariant::OpenBLAS,
                                          cpu::GemmVariant::Auto};

struct GemmCase {
  int64_t M, N, K;
};
// Odd and prime sizes, 1s, and sizes past the blocked variant's tiles (MR = 4, NR = 8 / 4,
// KC = NC = 256) so that every edge path runs.
const GemmCase kCases[] = {{1, 1, 1},   {1, 7, 3},    {3, 1, 7},    {7, 13, 3},   {13, 7, 64},
                           {64, 64, 64}, {65, 33, 257}, {5, 300, 7}, {130, 17, 300}, {2, 520, 13}};

// Every fast variant against Naive on one problem. The error is norm-wise relative to
// |alpha| |op(A)| |op(B)| + |beta| |C|, the scale of gemm's rounding error bound: arange inputs
// cancel heavily, so relative to C itself the error would say more about the data than the code.
template <class T>
void check_variants(bool ta, bool tb, const GemmCase& c, Fill fill, T alpha, T beta, bool nan_c, uint64_t seed,
                    double tol, test::WorstError& worst) {
  const DType dt = dtype_of<T>();
  Tensor A = test::make_input(ta ? Shape{c.K, c.M} : Shape{c.M, c.K}, fill, seed, false, dt);
  Tensor B = test::make_input(tb ? Shape{c.N, c.K} : Shape{c.K, c.N}, fill, seed + 1, false, dt);
  Tensor C0 = test::make_input({c.M, c.N}, Fill::Random, seed + 2, false, dt);
  if (nan_c) C0.fill(std::numeric_limits<double>::quiet_NaN());
  Tensor ref = C0.clone();
  cpu::gemm<T>(ta, tb, c.M, c.N, c.K, alpha, A.data<T>(), B.data<T>(), beta, ref.data<T>(), cpu::GemmVariant::Naive);
  auto absolute = [](const Tensor& t) {
    std::vector<double> v = t.to_f64_vector();
    for (double& x : v) x = std::fabs(x);
    return v;
  };
  std::vector<double> a = absolute(A), b = absolute(B), scale = absolute(C0);
  for (double& x : scale) x = beta == T(0) ? 0.0 : std::fabs(double(beta)) * x;
  cpu::gemm<double>(ta, tb, c.M, c.N, c.K, std::fabs(double(alpha)), a.data(), b.data(), 1.0, scale.data(),
                    cpu::GemmVariant::Naive);
  double den = 0;
  for (double x : scale) den += x * x;
  const std::vector<double> r = ref.to_f64_vector();

  for (cpu::GemmVariant v : kFastVariants) {
    if (!cpu::gemm_variant_available(v)) continue;
    Tensor got = C0.clone();
    cpu::gemm<T>(ta, tb, c.M, c.N, c.K, alpha, A.data<T>(), B.data<T>(), beta, got.data<T>(), v);
    const std::vector<double> g = got.to_f64_vector();
    double num = 0;
    for (size_t i = 0; i < g.size(); ++i) num += (g[i] - r[i]) * (g[i] - r[i]);
    const double e = std::isnan(num) ? INFINITY : std::sqrt(num / den);
    const std::string where = std::string(cpu::gemm_variant_name(v)) + " M=" + std::to_string(c.M) +
                              " N=" + std::to_string(c.N) + " K=" + std::to_string(c.K) + (ta ? " A^T" : "") +
                              (tb ? " B^T" : "") + " " + fill_name(fill) + (beta == T(0) ? " beta=0" : " beta!=0");
    worst.add(where, e);
    CHECK_MESSAGE(e <= tol, where << ": error " << e << " > " << tol);
  }
}

template <class T>
void all_variants_match_naive(double tol) {
  test::WorstError worst;
  worst.group = "gemm variants vs naive (error relative to |A||B| + |C|), ";
  worst.group += dtype_name(dtype_of<T>());
  for (cpu::GemmVariant v : kFastVariants)
    if (!cpu::gemm_variant_available(v)) MESSAGE("gemm variant " << cpu::gemm_variant_name(v) << " not built: skipped");
  uint64_t seed = 100;
  for (const GemmCase& c : kCases)
    for (int t = 0; t < 4; ++t)
      for (Fill fill : kFills) {
        const bool ta = t & 1, tb = t & 2;
        // beta = 0 on a C full of NaNs (must be overwritten), then a real beta.
        check_variants<T>(ta, tb, c, fill, T(1.5), T(0), true, seed, tol, worst);
        check_variants<T>(ta, tb, c, fill, T(-0.75), T(0.5), false, seed + 3, tol, worst);
        seed += 6;
      }
}

}  // namespace

TEST_CASE("gemm: every variant matches the naive oracle (float32)") { all_variants_match_naive<float>(1e-6); }

TEST_CASE("gemm: every variant matches the naive oracle (float64)") { all_variants_match_naive<double>(1e-13); }

TEST_CASE("gemm: degenerate sizes") {
  for (cpu::GemmVariant v : {cpu::GemmVariant::Naive, cpu::GemmVariant::Blocked, cpu::GemmVariant::OpenBLAS,
                             cpu::GemmVariant::Auto}) {
    INFO(cpu::gemm_variant_name(v));
    std::vector<float> A(6, 1.f), B(6, 1.f);
    // K = 0: C = beta * C, and beta = 0 clears NaNs.
    std::vector<float> C{1, 2, 3, std::nanf("")};
    cpu::gemm<float>(false, false, 2, 2, 0, 1.f, A.data(), B.data(), 2.f, C.data(), v);
    CHECK(C[0] == 2.f);
    CHECK(C[2] == 6.f);
    cpu::gemm<float>(false, false, 2, 2, 0, 1.f, A.data(), B.data(), 0.f, C.data(), v);
    CHECK(C == std::vector<float>{0, 0, 0, 0});
    // M = 0 or N = 0: nothing is touched.
    std::vector<float> D{7};
    cpu::gemm<float>(false, false, 0, 1, 3, 1.f, A.data(), B.data(), 0.f, D.data(), v);
    cpu::gemm<float>(true, true, 1, 0, 3, 1.f, A.data(), B.data(), 0.f, D.data(), v);
    CHECK(D[0] == 7.f);
  }
  CHECK(std::string(cpu::gemm_variant_name(cpu::GemmVariant::Blocked)) == "blocked");
  CHECK(cpu::gemm_variant_available(cpu::GemmVariant::Naive));
  CHECK(cpu::gemm_variant_available(cpu::GemmVariant::Blocked));
}

TEST_CASE("matmul op: forward matches gemm, gradcheck of all four transpose forms") {
  const int64_t M = 3, K = 5, N = 7;
  for (int t = 0; t < 4; ++t) {
    const bool ta = t & 1, tb = t & 2;
    for (Fill fill : kFills) {
      std::string label = std::string("matmul") + (ta ? " a^T" : "") + (tb ? " b^T" : "") + " " + fill_name(fill);
      Tensor a = test::make_input(ta ? Shape{K, M} : Shape{M, K}, fill, 11);
      Tensor b = test::make_input(tb ? Shape{N, K} : Shape{K, N}, fill, 12);
      Tensor y = ops::matmul(a, b, ta, tb);
      REQUIRE(y.shape() == Shape{M, N});
      Tensor ref = Tensor::zeros({M, N}, DType::F64);
      cpu::gemm<double>(ta, tb, M, N, K, 1.0, a.data<double>(), b.data<double>(), 0.0, ref.data<double>(),
                        cpu::GemmVariant::Naive);
      test::check_close(y, ref, 1e-14, label + " forward");
      test::gradcheck([&](const std::vector<Tensor>& in) { return ops::matmul(in[0], in[1], ta, tb); }, {a, b},
                      label);
    }
  }
  // One side without a gradient: only the other one is written.
  Tensor a = test::make_input({1, 13}, Fill::Random, 3);
  Tensor b = test::make_input({13, 1}, Fill::Random, 4, false);
  test::gradcheck([&](const std::vector<Tensor>& in) { return ops::matmul(in[0], in[1]); }, {a, b},
                  "matmul [1,13]x[13,1], b constant");
  CHECK_FALSE(b.has_grad());
}

TEST_CASE("linear: golden forward and every gradient (float32 and float64)") {
  for (DType dt : {DType::F32, DType::F64}) {
    const double fwd_tol = dt == DType::F32 ? 1e-5 : 1e-6, grad_tol = dt == DType::F32 ? 1e-4 : 1e-6;
    std::string tag = " ";
    tag += dtype_name(dt);
    test::WorstError worst;
    worst.group = "linear golden" + tag;
    Tensor x = golden_input("linear.x", dt), w = golden_input("linear.weight", dt), b = golden_input("linear.bias", dt);
    x.set_requires_grad(true);
    w.set_requires_grad(true);
    b.set_requires_grad(true);
    tape().clear();
    Tensor y = ops::linear(x, w, b);
    test::check_close(y, golden_input("linear.out", dt), fwd_tol, "linear.out" + tag);
    worst.add("out", test::rel_err(y, golden_input("linear.out", dt)));
    backward(y, golden_input("linear.grad_out", dt));
    for (auto [t, name] : {std::pair{x, "grad_x"}, std::pair{w, "grad_weight"}, std::pair{b, "grad_bias"}}) {
      Tensor ref = golden_input(std::string("linear.") + name, dt);
      test::check_close(t.grad(), ref, grad_tol, std::string("linear.") + name + tag);
      worst.add(name, test::rel_err(t.grad(), ref));
    }
  }
}

TEST_CASE("linear: gradchecks with and without bias, 1-d to 3-d inputs") {
  for (Fill fill : kFills) {
    const std::string f = fill_name(fill);
    Tensor x = test::make_input({2, 3, 5}, fill, 21), w = test::make_input({7, 5}, fill, 22),
           b = test::make_input({7}, fill, 23);
    test::gradcheck([](const std::vector<Tensor>& in) { return ops::linear(in[0], in[1], in[2]); }, {x, w, b},
                    "linear [2,3,5] x [7,5] + [7] " + f);
    Tensor x1 = test::make_input({13}, fill, 24), w1 = test::make_input({1, 13}, fill, 25);
    test::gradcheck([](const std::vector<Tensor>& in) { return ops::linear(in[0], in[1]); }, {x1, w1},
                    "linear [13] x [1,13] no bias " + f);
  }
  // Gradients accumulate: two uses of the same weight add up.
  Tensor x = test::make_input({3, 4}, Fill::Random, 31), w = test::make_input({2, 4}, Fill::Random, 32);
  test::gradcheck(
      [](const std::vector<Tensor>& in) { return ops::add(ops::linear(in[0], in[1]), ops::linear(in[0], in[1])); },
      {x, w}, "linear used twice");
}

TEST_CASE("matmul / linear: bad shapes and dtypes throw errors naming the op") {
  Tensor a = Tensor::zeros({3, 4}), b = Tensor::zeros({5, 6});
  CHECK_THROWS_WITH_AS(ops::matmul(a, b), doctest::Contains("op matmul: inner sizes differ"), Error);
  CHECK_THROWS_WITH_AS(ops::matmul(a, Tensor::zeros({4})), doctest::Contains("op matmul"), Error);
  CHECK_THROWS_WITH_AS(ops::matmul(a, Tensor::zeros({4, 2}, DType::F64)), doctest::Contains("op matmul"), Error);
  CHECK_NOTHROW(ops::matmul(a, Tensor::zeros({6, 4}), false, true));
  Tensor w = Tensor::zeros({6, 4});
  CHECK_THROWS_WITH_AS(ops::linear(Tensor::zeros({3, 5}), w), doctest::Contains("op linear: argument 'x'"), Error);
  CHECK_THROWS_WITH_AS(ops::linear(a, Tensor::zeros({4})), doctest::Contains("op linear: argument 'weight'"), Error);
  CHECK_THROWS_WITH_AS(ops::linear(a, w, Tensor::zeros({5})), doctest::Contains("linear: argument 'bias'"), Error);
  CHECK_THROWS_WITH_AS(ops::linear(a, w, Tensor::zeros({6}, DType::F64)), doctest::Contains("op linear"), Error);
  CHECK_THROWS_WITH_AS(ops::linear(Tensor::from_ints({1, 2, 3, 4}, {1, 4}), w), doctest::Contains("op linear"),
                       Error);
  // A tensor that claims to live on a GPU is refused before anything reads it.
  auto host = std::make_shared<std::vector<float>>(12);
  Tensor on_gpu = Tensor::borrow(host->data(), {3, 4}, DType::F32, Device::cuda(0), host);
#ifndef CLIPCU_WITH_CUDA
  CHECK_THROWS_WITH_AS(ops::linear(on_gpu, w), doctest::Contains("op linear: this build has no CUDA backend"), Error);
  CHECK_THROWS_WITH_AS(ops::matmul(on_gpu, w, false, true), doctest::Contains("op matmul: this build has no CUDA backend"),
                       Error);
#else  // inputs on two devices are refused before anything reads them
  CHECK_THROWS_WITH_AS(ops::linear(on_gpu, w), doctest::Contains("op linear"), Error);
  CHECK_THROWS_WITH_AS(ops::matmul(on_gpu, w, false, true), doctest::Contains("op matmul"), Error);
#endif
}
