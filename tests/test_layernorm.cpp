// Layer norm: golden parity (forward and every gradient), float64 finite-difference checks on odd
// sizes, the saved statistics, and shape errors.
#include <cmath>
#include <vector>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "kernels/cpu/layernorm.h"
#include "tests/support.h"

using namespace clipcu;
using test::Fill;
using test::kFills;
using test::fill_name;
using test::golden_input;

TEST_CASE("layer_norm: golden forward and every gradient (float32 and float64)") {
  for (DType dt : {DType::F32, DType::F64}) {
    const double fwd_tol = dt == DType::F32 ? 1e-5 : 1e-6, grad_tol = dt == DType::F32 ? 1e-4 : 1e-6;
    std::string tag = " ";
    tag += dtype_name(dt);
    test::WorstError worst;
    worst.group = "layernorm golden" + tag;
    Tensor x = golden_input("layernorm.x", dt), w = golden_input("layernorm.weight", dt),
           b = golden_input("layernorm.bias", dt);
    x.set_requires_grad(true);
    w.set_requires_grad(true);
    b.set_requires_grad(true);
    tape().clear();
    Tensor y = ops::layer_norm(x, w, b, 1e-5);
    Tensor out = golden_input("layernorm.out", dt);
    test::check_close(y, out, fwd_tol, "layernorm.out" + tag);
    worst.add("out", test::rel_err(y, out));
    backward(y, golden_input("layernorm.grad_out", dt));
    for (auto [t, name] : {std::pair{x, "grad_x"}, std::pair{w, "grad_weight"}, std::pair{b, "grad_bias"}}) {
      Tensor ref = golden_input(std::string("layernorm.") + name, dt);
      test::check_close(t.grad(), ref, grad_tol, std::string("layernorm.") + name + tag);
      worst.add(name, test::rel_err(t.grad(), ref));
    }
  }
}

TEST_CASE("layer_norm: forward and saved statistics against a direct float64 computation") {
  // Rows with mean 1e4 and std 1: a one-pass variance (E[x^2] - E[x]^2) would lose about 8 of
  // float64's 16 digits here (error ~1e-8). The floor of any method is the rounding of the mean,
  // eps * |mean| / std ~ 1e-12, hence the tolerance 1e-10.
  const int64_t N = 7, C = 13;
  Tensor x = test::make_input({N, C}, Fill::Random, 5, false);
  for (int64_t i = 0; i < N * C; ++i) x.data<double>()[i] += 1e4;
  Tensor ref = Tensor::empty({N, C}, DType::F64);
  std::vector<double> ref_mean, ref_rstd;
  for (int64_t n = 0; n < N; ++n) {
    const double* r = x.data<double>() + n * C;
    double m = 0, v = 0;
    for (int64_t c = 0; c < C; ++c) m += r[c];
    m /= double(C);
    for (int64_t c = 0; c < C; ++c) v += (r[c] - m) * (r[c] - m);
    v /= double(C);
    ref_mean.push_back(m);
    ref_rstd.push_back(1.0 / std::sqrt(v + 1e-5));
    for (int64_t c = 0; c < C; ++c) ref.data<double>()[n * C + c] = (r[c] - m) * ref_rstd.back();
  }
  test::check_close(ops::layer_norm(x, Tensor(), Tensor(), 1e-5), ref, 1e-10, "layer_norm no affine, mean 1e4");
  std::vector<double> out(static_cast<size_t>(N * C));
  std::vector<double> mean(static_cast<size_t>(N));
  std::vector<double> rstd(static_cast<size_t>(N));
  cpu::layernorm_forward<double>(N, C, 1e-5, x.data<double>(), nullptr, nullptr, out.data(), mean.data(),
                                 rstd.data());
  for (int64_t n = 0; n < N; ++n) {
    CHECK(mean[size_t(n)] == doctest::Approx(ref_mean[size_t(n)]).epsilon(1e-14));
    CHECK(rstd[size_t(n)] == doctest::Approx(ref_rstd[size_t(n)]).epsilon(1e-10));
  }
}

TEST_CASE("layer_norm: gradchecks on odd shapes, with and without affine parameters") {
  const Shape shapes[] = {{1, 1}, {3, 7}, {2, 3, 13}, {5}};
  for (const Shape& s : shapes)
    for (Fill fill : kFills) {
      const int64_t C = s.back();
      const std::string label = "layer_norm " + shape_str(s) + " " + fill_name(fill);
      Tensor x = test::make_input(s, fill, 41), w = test::make_input({C}, Fill::Random, 42),
             b = test::make_input({C}, Fill::Random, 43);
      // eps 1e-3 keeps the constant rows (ones, C = 1) smooth enough for finite differences; the
      // golden test above covers eps = 1e-5.
      test::gradcheck([](const std::vector<Tensor>& in) { return ops::layer_norm(in[0], in[1], in[2], 1e-3); },
                      {x, w, b}, label);
      test::gradcheck([](const std::vector<Tensor>& in) { return ops::layer_norm(in[0], Tensor(), Tensor(), 1e-3); },
                      {x}, label + " no affine");
    }
  // Only the weight requires a gradient.
  Tensor x = test::make_input({4, 6}, Fill::Random, 44, false), w = test::make_input({6}, Fill::Random, 45),
         b = test::make_input({6}, Fill::Random, 46, false);
  test::gradcheck([](const std::vector<Tensor>& in) { return ops::layer_norm(in[0], in[1], in[2]); }, {x, w, b},
                  "layer_norm weight only");
  CHECK_FALSE(x.has_grad());
  CHECK_FALSE(b.has_grad());
}

TEST_CASE("layer_norm: weight and bias gradients of many rows are deterministic") {
  // 1000 rows span several reduction chunks: two runs give the same bits.
  Tensor x = test::make_input({1000, 24}, Fill::Random, 7, true, DType::F32);
  Tensor w = test::make_input({24}, Fill::Random, 8, true, DType::F32);
  Tensor b = test::make_input({24}, Fill::Random, 9, true, DType::F32);
  Tensor seed = test::make_input({1000, 24}, Fill::Random, 10, false, DType::F32);
  std::vector<float> first;
  for (int run = 0; run < 2; ++run) {
    w.zero_grad();
    b.zero_grad();
    x.zero_grad();
    backward(ops::layer_norm(x, w, b), seed);
    std::vector<float> g = w.grad().to_f32_vector(), gb = b.grad().to_f32_vector();
    g.insert(g.end(), gb.begin(), gb.end());
    if (run == 0) first = g;
    else CHECK(g == first);
  }
  // And they equal the float64 sums within float32 rounding.
  Tensor x64 = x.to(DType::F64).clone(), w64 = w.to(DType::F64).clone(), b64 = b.to(DType::F64).clone();
  w64.set_requires_grad(true);
  b64.set_requires_grad(true);
  backward(ops::layer_norm(x64, w64, b64), seed.to(DType::F64));
  test::check_close(w.grad(), w64.grad(), 1e-5, "layer_norm dweight f32 vs f64, 1000 rows");
  test::check_close(b.grad(), b64.grad(), 1e-6, "layer_norm dbias f32 vs f64, 1000 rows");
}

TEST_CASE("layer_norm: bad shapes and dtypes throw errors naming the op") {
  Tensor x = Tensor::zeros({3, 4}), w = Tensor::ones({4}), b = Tensor::zeros({4});
  CHECK_THROWS_WITH_AS(ops::layer_norm(x, Tensor::ones({5}), b), doctest::Contains("layer_norm: argument 'weight'"),
                       Error);
  CHECK_THROWS_WITH_AS(ops::layer_norm(x, w, Tensor::zeros({2, 2})), doctest::Contains("layer_norm: argument 'bias'"),
                       Error);
  CHECK_THROWS_WITH_AS(ops::layer_norm(x, w.to(DType::F64), b), doctest::Contains("op layer_norm"), Error);
  CHECK_THROWS_WITH_AS(ops::layer_norm(Tensor(), w, b), doctest::Contains("op layer_norm"), Error);
  CHECK_THROWS_WITH_AS(ops::layer_norm(x, w, b, 0.0), doctest::Contains("op layer_norm: eps"), Error);
  auto host = std::make_shared<std::vector<float>>(12);
  Tensor on_gpu = Tensor::borrow(host->data(), {3, 4}, DType::F32, Device::cuda(0), host);
#ifndef CLIPCU_WITH_CUDA
  CHECK_THROWS_WITH_AS(ops::layer_norm(on_gpu, w, b), doctest::Contains("op layer_norm: this build has no CUDA backend"),
                       Error);
#else  // inputs on two devices are refused before anything reads them
  CHECK_THROWS_WITH_AS(ops::layer_norm(on_gpu, w, b), doctest::Contains("op layer_norm"), Error);
#endif
}
