// Pointwise activations (relu, quick_gelu, gelu erf / tanh, exp): golden parity, values at known
// points and in the tails, float64 finite-difference checks, and errors.
#include <algorithm>
#include <bit>
#include <cfloat>
#include <cmath>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "engine/rng.h"
#include "kernels/cpu/activation.h"
#include "kernels/cpu/vec_math.h"
#include "tests/support.h"

using namespace clipcu;
using test::Fill;
using test::kFills;
using test::fill_name;
using test::golden_input;

namespace {

using UnaryOp = std::function<Tensor(const Tensor&)>;
struct Named {
  const char* name;
  UnaryOp op;
};
const Named kOps[] = {
    {"relu", [](const Tensor& x) { return ops::relu(x); }},
    {"quick_gelu", [](const Tensor& x) { return ops::quick_gelu(x); }},
    {"gelu_erf", [](const Tensor& x) { return ops::gelu(x); }},
    {"gelu_tanh", [](const Tensor& x) { return ops::gelu(x, true); }},
    {"exp", [](const Tensor& x) { return ops::exp(x); }},
};

}  // namespace

TEST_CASE("activations: golden forward and gradient (float32 and float64)") {
  for (const Named& op : kOps) {
    const std::string pre = op.name;
    if (pre == "relu" || pre == "exp") continue;  // not in ops.safetensors: checked below
    for (DType dt : {DType::F32, DType::F64}) {
      const double fwd_tol = dt == DType::F32 ? 1e-5 : 1e-6, grad_tol = dt == DType::F32 ? 1e-4 : 1e-6;
      std::string tag = " ";
      tag += dtype_name(dt);
      test::WorstError worst;
      worst.group = pre + " golden" + tag;
      Tensor x = golden_input(pre + ".x", dt);
      x.set_requires_grad(true);
      tape().clear();
      Tensor y = op.op(x);
      Tensor out = golden_input(pre + ".out", dt), gx = golden_input(pre + ".grad_x", dt);
      test::check_close(y, out, fwd_tol, pre + ".out" + tag);
      worst.add("out", test::rel_err(y, out));
      backward(y, golden_input(pre + ".grad_out", dt));
      test::check_close(x.grad(), gx, grad_tol, pre + ".grad_x" + tag);
      worst.add("grad_x", test::rel_err(x.grad(), gx));
    }
  }
}

TEST_CASE("activations: values at known points and finite tails") {
  Tensor x = Tensor::from_vector(std::vector<double>{-200, -3, -1, 0, 0.5, 1, 3, 200}, {8}, DType::F64);
  const std::vector<double> xs = x.to_f64_vector();
  auto expect = [&](const Tensor& y, const std::function<double(double)>& f, const char* name) {
    test::check_close(y, Tensor::from_vector([&] {
      std::vector<double> r;
      for (double v : xs) r.push_back(f(v));
      return r;
    }(), {8}, DType::F64), 1e-15, name);
  };
  expect(ops::relu(x), [](double v) { return v > 0 ? v : 0.0; }, "relu points");
  expect(ops::quick_gelu(x), [](double v) { return v / (1 + std::exp(-1.702 * v)); }, "quick_gelu points");
  expect(ops::gelu(x), [](double v) { return 0.5 * v * std::erfc(-v / std::sqrt(2.0)); }, "gelu_erf points");
  expect(ops::gelu(x, true), [](double v) {
    return 0.5 * v * (1 + std::tanh(std::sqrt(2 / M_PI) * (v + 0.044715 * v * v * v)));
  }, "gelu_tanh points");
  CHECK(ops::relu(x).to_f64_vector()[3] == 0.0);
  CHECK(ops::exp(Tensor::zeros({1})).item() == 1.0);
  // float32 tails: no NaN from exp overflow in the sigmoid, gradients finite.
  for (const Named& op : kOps) {
    if (std::string(op.name) == "exp") continue;
    Tensor xf = Tensor::from_vector(std::vector<float>{-1e4f, -100.f, 100.f, 1e4f}, {4});
    xf.set_requires_grad(true);
    Tensor y = op.op(xf);
    backward(y, Tensor::ones({4}));
    for (float v : y.to_f32_vector()) CHECK_MESSAGE(std::isfinite(v), op.name << " forward " << v);
    for (float v : xf.grad().to_f32_vector()) CHECK_MESSAGE(std::isfinite(v), op.name << " gradient " << v);
    std::vector<float> yv = y.to_f32_vector();
    CHECK(std::fabs(yv[0]) < 1e-30f);
    CHECK(yv[3] == 1e4f);
  }
}

TEST_CASE("activations: gradchecks on odd shapes") {
  // Odd element counts: arange (i - n/2) / n never hits relu's kink at 0 exactly.
  const Shape shapes[] = {{1}, {3, 7}, {3, 5, 1}};
  for (const Named& op : kOps)
    for (const Shape& s : shapes)
      for (Fill fill : kFills) {
        Tensor x = test::make_input(s, fill, 81);
        UnaryOp f = op.op;
        test::gradcheck([f](const std::vector<Tensor>& in) { return f(in[0]); }, {x},
                        std::string(op.name) + " " + shape_str(s) + " " + fill_name(fill));
      }
  // A fan-out: gelu(x) * x needs both paths accumulated into x's gradient.
  Tensor x = test::make_input({2, 9}, Fill::Random, 82);
  test::gradcheck([](const std::vector<Tensor>& in) { return ops::mul(ops::gelu(in[0]), in[0]); }, {x},
                  "gelu(x) * x");
}

TEST_CASE("activations: errors name the op") {
  CHECK_THROWS_WITH_AS(ops::relu(Tensor::from_ints({1, 2}, {2})), doctest::Contains("op relu"), Error);
  CHECK_THROWS_WITH_AS(ops::exp(Tensor()), doctest::Contains("op exp"), Error);
#ifndef CLIPCU_WITH_CUDA  // a CUDA build runs these on the GPU (tests/test_cuda_engine.cpp)
  auto host = std::make_shared<std::vector<float>>(4);
  Tensor on_gpu = Tensor::borrow(host->data(), {4}, DType::F32, Device::cuda(0), host);
  CHECK_THROWS_WITH_AS(ops::quick_gelu(on_gpu), doctest::Contains("op quick_gelu: this build has no CUDA backend"), Error);
  CHECK_THROWS_WITH_AS(ops::gelu(on_gpu, true), doctest::Contains("op gelu_tanh: this build has no CUDA backend"), Error);
#endif
}

TEST_CASE("exp_f32 (the vectorizable float exp): within 1 ulp of float64 exp, exact ends") {
  // Every 997th float between -104 and 89 (about 2.7 million points across the whole range, with
  // the subnormal results below -87.3): the error in units of the last place of the float result.
  double worst_ulp = 0, worst_at = 0;
  int64_t points = 0;
  const uint32_t lo = std::bit_cast<uint32_t>(-104.0f), hi = std::bit_cast<uint32_t>(89.0f);
  auto visit = [&](float x) {
    const double ref = std::exp(double(x));
    const float got = cpu::exp_f32(x);
    const float r = float(ref);  // float64 -> float32: correctly rounded, incl. subnormals and inf
    const double ulp = std::isinf(r) ? 0.0 : double(std::nextafter(r, INFINITY)) - double(r);
    const double e = std::isinf(r) ? (std::isinf(got) ? 0.0 : 1e9) : std::fabs(double(got) - ref) / ulp;
    if (e > worst_ulp) {
      worst_ulp = e;
      worst_at = x;
    }
    ++points;
  };
  for (uint32_t b = 0x80000000u; b <= lo; b += 997) visit(std::bit_cast<float>(b));  // [-104, -0]
  for (uint32_t b = 0; b <= hi; b += 997) visit(std::bit_cast<float>(b));            // [0, 89]
  MESSAGE("exp_f32: worst " << worst_ulp << " ulp at x = " << worst_at << " over " << points << " points");
  CHECK(worst_ulp <= 1.0);
  CHECK(cpu::exp_f32(0.0f) == 1.0f);
  CHECK(cpu::exp_f32(-0.0f) == 1.0f);
  CHECK(cpu::exp_f32(1.0f) == doctest::Approx(std::exp(1.0)).epsilon(1e-7));
  for (float x : {89.0001f, 100.0f, 1e30f, INFINITY}) CHECK(cpu::exp_f32(x) == INFINITY);
  for (float x : {-104.0001f, -1e4f, -1e30f, -INFINITY}) CHECK(cpu::exp_f32(x) == 0.0f);
  CHECK(std::isnan(cpu::exp_f32(NAN)));
  CHECK(cpu::exp_f32(88.7f) == doctest::Approx(std::exp(double(88.7f))).epsilon(2e-7));  // near FLT_MAX, finite
  CHECK(cpu::exp_fast(0.5) == std::exp(0.5));  // float64 is the library's exp
}

TEST_CASE("erfc_f32 (the vectorizable float erfc): within 8 ulp of float64 erfc, exact ends") {
  double worst_ulp = 0, worst_at = 0, sum_ulp = 0;
  int64_t points = 0;
  auto check = [&](float x) {
    const double ref = std::erfc(double(x));
    if (ref < double(FLT_MIN)) return;  // subnormal or zero results: not held to ulps
    const float got = cpu::erfc_f32(x);
    const float r = float(ref);
    const double ulp = double(std::nextafter(r, INFINITY)) - double(r);
    const double e = std::fabs(double(got) - ref) / ulp;
    sum_ulp += e;
    ++points;
    if (e > worst_ulp) worst_ulp = e, worst_at = x;
  };
  // every float in [0.25, 4) with a stride of 7 ulps, then an even grid over [-4, 10]
  for (uint32_t b = std::bit_cast<uint32_t>(0.25f); b < std::bit_cast<uint32_t>(4.0f); b += 7)
    check(std::bit_cast<float>(b));
  for (int i = 0; i <= 1400000; ++i) check(-4.0f + 14.0f * float(i) / 1400000.0f);
  MESSAGE("erfc_f32: worst " << worst_ulp << " ulp at x = " << worst_at << ", mean " << sum_ulp / double(points)
                             << " ulp over " << points << " points");
  CHECK(worst_ulp <= 8.0);
  CHECK(sum_ulp / double(points) <= 1.0);
  CHECK(cpu::erfc_f32(0.0f) == 1.0f);
  CHECK(cpu::erfc_f32(-0.0f) == 1.0f);
  for (float x : {10.5f, 11.0f, 100.0f, 1e30f, INFINITY}) CHECK(cpu::erfc_f32(x) == 0.0f);
  for (float x : {-10.5f, -11.0f, -100.0f, -1e30f, -INFINITY}) CHECK(cpu::erfc_f32(x) == 2.0f);
  CHECK(std::isnan(cpu::erfc_f32(NAN)));
  CHECK(cpu::erfc_fast(0.5) == std::erfc(0.5));  // float64 is the library's erfc
}

TEST_CASE("gelu (erf and tanh forms) in float32 keep their relative accuracy in the negative tail") {
  // 1 + erf(t) and 1 + tanh(u) cancel as x goes negative; erfc and the sigmoid form do not: every
  // element within 1e-5 of float64 on its own, not only norm-wise
  for (cpu::Activation act : {cpu::Activation::GELUErf, cpu::Activation::GELUTanh}) {
    std::vector<float> x;
    for (float v = -9.0f; v <= -2.0f; v += 0.01f) x.push_back(v);
    const std::vector<double> xd(x.begin(), x.end());
    std::vector<float> y(x.size());
    std::vector<double> yd(x.size());
    cpu::activation_forward<float>(act, int64_t(x.size()), x.data(), y.data());
    cpu::activation_forward<double>(act, int64_t(x.size()), xd.data(), yd.data());
    double worst = 0;
    for (size_t i = 0; i < x.size(); ++i)
      if (std::fabs(yd[i]) > double(FLT_MIN)) worst = std::max(worst, std::fabs(double(y[i]) - yd[i]) / std::fabs(yd[i]));
    MESSAGE(std::string(cpu::activation_name(act)) << " float32 over [-9, -2]: worst element-wise rel err " << worst);
    CHECK(worst < 1e-5);
  }
}

TEST_CASE("activations: baseline and AVX2 loops agree with float64, threaded sizes and odd tails") {
  // Lengths: below the vector width, odd, one block plus a tail, and past the threading
  // threshold (2^16) with a tail; values over [-12, 12] and the finite tails.
  const int64_t lengths[] = {3, 37, 8192 + 5, 70001};
  const cpu::SimdLevel levels[] = {cpu::SimdLevel::Baseline, cpu::SimdLevel::AVX2};
  const cpu::Activation acts[] = {cpu::Activation::ReLU, cpu::Activation::QuickGELU, cpu::Activation::GELUErf,
                                  cpu::Activation::GELUTanh, cpu::Activation::Exp};
  if (!cpu::simd_level_available(cpu::SimdLevel::AVX2)) MESSAGE("no AVX2 on this CPU: its copy falls back to baseline");
  test::WorstError worst;
  worst.group = "activation loops (baseline, AVX2) vs float64";
  for (int64_t n : lengths) {
    Rng rng{uint64_t(n)};
    std::vector<double> xd(static_cast<size_t>(n)), dyd(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) {
      xd[size_t(i)] = i % 101 == 0 ? (i % 2 ? -150.0 : 150.0) : 12.0 * (2.0 * rng.uniform() - 1.0);
      dyd[size_t(i)] = rng.normal();
    }
    std::vector<float> xf(xd.begin(), xd.end()), dyf(dyd.begin(), dyd.end());
    for (cpu::Activation act : acts) {
      if (act == cpu::Activation::Exp)  // keep exp finite: its values, not its overflow, are compared
        for (int64_t i = 0; i < n; ++i) xf[size_t(i)] = float(std::clamp(xd[size_t(i)], -80.0, 80.0));
      const std::vector<double> xr(xf.begin(), xf.end());  // the float inputs, exactly
      // float64 reference (the float64 loops: exact library functions)
      std::vector<double> yref(static_cast<size_t>(n)), gref(static_cast<size_t>(n), 0.0);
      cpu::activation_forward<double>(act, n, xr.data(), yref.data(), cpu::SimdLevel::Baseline);
      const std::vector<double> dyr(dyf.begin(), dyf.end());
      cpu::activation_backward<double>(act, n, xr.data(), yref.data(), dyr.data(), gref.data(),
                                       cpu::SimdLevel::Baseline);
      for (cpu::SimdLevel level : levels) {
        std::vector<float> y(static_cast<size_t>(n)), g(static_cast<size_t>(n), 0.0f);
        cpu::activation_forward<float>(act, n, xf.data(), y.data(), level);
        cpu::activation_backward<float>(act, n, xf.data(), y.data(), dyf.data(), g.data(), level);
        const std::string label = std::string(cpu::activation_name(act)) + " " + cpu::simd_level_name(level) +
                                  " n=" + std::to_string(n);
        double num_y = 0, den_y = 0, num_g = 0, den_g = 0;
        bool finite = true;
        for (int64_t i = 0; i < n; ++i) {
          finite = finite && std::isfinite(y[size_t(i)]) && std::isfinite(g[size_t(i)]);
          num_y += std::pow(double(y[size_t(i)]) - yref[size_t(i)], 2);
          den_y += yref[size_t(i)] * yref[size_t(i)];
          num_g += std::pow(double(g[size_t(i)]) - gref[size_t(i)], 2);
          den_g += gref[size_t(i)] * gref[size_t(i)];
        }
        const double ey = std::sqrt(num_y / den_y), eg = std::sqrt(num_g / den_g);
        CHECK_MESSAGE(finite, label);
        // a few float32 roundings per formula (the derivatives take ~10 operations)
        CHECK_MESSAGE(ey < 1e-6, label << " forward rel err " << ey);
        CHECK_MESSAGE(eg < 1e-6, label << " backward rel err " << eg);
        worst.add(label + (ey > eg ? " forward" : " backward"), std::max(ey, eg));
      }
    }
  }
}
