// conv2d (NCHW): golden parity (forward, grad_x, grad_weight) for both variants, float64
// finite-difference gradchecks of the op (odd sizes, stride 1/2, padding 0/1, 7x7, bias), the
// Direct and Im2col variants against each other, the unfold's adjoint, and shape errors.
#include <cmath>
#include <string>
#include <vector>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "engine/rng.h"
#include "kernels/cpu/conv2d.h"
#include "tests/support.h"

using namespace clipcu;
using namespace clipcu::test;

namespace {

Tensor G(const std::string& name) { return golden("ops.safetensors").get(name).clone(); }

struct GoldenConv {
  const char* tag;
  int stride, padding;
};
const GoldenConv kGolden[] = {{"conv3x3s2", 2, 1}, {"conv1x1", 1, 0}, {"conv_patch4", 4, 0}};
const cpu::ConvVariant kVariants[] = {cpu::ConvVariant::Direct, cpu::ConvVariant::Im2col, cpu::ConvVariant::Im2colBatch,
                                      cpu::ConvVariant::Auto};

cpu::Conv2dDims dims_of(const Tensor& x, const Tensor& w, int stride, int padding) {
  return cpu::conv2d_dims(x.size(0), x.size(1), x.size(2), x.size(3), w.size(0), w.size(2), w.size(3), stride, padding);
}

}  // namespace

TEST_CASE("conv2d golden: op forward and gradients") {
  WorstError fwd{"conv2d golden forward", 0.0, {}}, bwd{"conv2d golden gradients", 0.0, {}};
  for (const GoldenConv& g : kGolden) {
    const std::string p = g.tag;
    tape().clear();
    Tensor x = G(p + ".x").set_requires_grad(true);
    Tensor w = G(p + ".weight").set_requires_grad(true);
    Tensor y = ops::conv2d(x, w, Tensor(), g.stride, g.padding);
    check_close(y, G(p + ".out"), 1e-5, p + ".out");
    fwd.add(p + ".out", rel_err(y, G(p + ".out")));
    backward(y, G(p + ".grad_out"));
    check_close(x.grad(), G(p + ".grad_x"), 1e-4, p + ".grad_x");
    check_close(w.grad(), G(p + ".grad_weight"), 1e-4, p + ".grad_weight");
    bwd.add(p + ".grad_x", rel_err(x.grad(), G(p + ".grad_x")));
    bwd.add(p + ".grad_weight", rel_err(w.grad(), G(p + ".grad_weight")));
  }
}

TEST_CASE("conv2d golden: every kernel variant, float32") {
  for (cpu::ConvVariant v : kVariants) {
    WorstError worst{std::string("conv2d golden, variant ") + cpu::conv_variant_name(v), 0.0, {}};
    for (const GoldenConv& g : kGolden) {
      const std::string p = g.tag;
      Tensor x = G(p + ".x"), w = G(p + ".weight"), dy = G(p + ".grad_out");
      const cpu::Conv2dDims d = dims_of(x, w, g.stride, g.padding);
      Tensor y = Tensor::empty({d.N, d.Cout, d.OH, d.OW});
      Tensor dx = Tensor::zeros(x.shape()), dw = Tensor::zeros(w.shape());
      cpu::conv2d_forward<float>(d, x.data<float>(), w.data<float>(), nullptr, y.data<float>(), v);
      cpu::conv2d_backward_data<float>(d, dy.data<float>(), w.data<float>(), dx.data<float>(), v);
      cpu::conv2d_backward_weight<float>(d, x.data<float>(), dy.data<float>(), dw.data<float>(), nullptr, v);
      check_close(y, G(p + ".out"), 1e-5, p + ".out " + cpu::conv_variant_name(v));
      check_close(dx, G(p + ".grad_x"), 1e-4, p + ".grad_x " + cpu::conv_variant_name(v));
      check_close(dw, G(p + ".grad_weight"), 1e-4, p + ".grad_weight " + cpu::conv_variant_name(v));
      worst.add(p + ".out", rel_err(y, G(p + ".out")));
      worst.add(p + ".grad_x", rel_err(dx, G(p + ".grad_x")));
      worst.add(p + ".grad_weight", rel_err(dw, G(p + ".grad_weight")));
    }
  }
}

namespace {
struct GradCase {
  const char* label;
  int64_t N, Cin, H, W, Cout, KH, KW;
  int stride, padding;
  bool bias;
};
// Odd sizes and primes; every (stride, padding) pair the towers use, a 7x7 kernel, bias on/off,
// a 1x1 (the no-unfold path), a patch embedding whose input does not divide by the stride,
// and a kernel exactly as large as the padded input.
const GradCase kGradCases[] = {
    {"3x3 s1 p1 bias, 1x3x7x5 -> 2", 1, 3, 7, 5, 2, 3, 3, 1, 1, true},
    {"3x3 s2 p1, 2x2x9x7 -> 3", 2, 2, 9, 7, 3, 3, 3, 2, 1, false},
    {"3x3 s2 p0 bias, 2x2x7x9 -> 3", 2, 2, 7, 9, 3, 3, 3, 2, 0, true},
    {"3x3 s1 p0, 3x1x5x5 -> 1", 3, 1, 5, 5, 1, 3, 3, 1, 0, false},
    {"7x7 s2 p3 bias, 1x2x11x11 -> 2", 1, 2, 11, 11, 2, 7, 7, 2, 3, true},
    {"1x1 s1 p0 bias, 2x3x4x3 -> 5", 2, 3, 4, 3, 5, 1, 1, 1, 0, true},
    {"1x1 s2 p1, 1x3x5x5 -> 2", 1, 3, 5, 5, 2, 1, 1, 2, 1, false},
    {"4x4 s4 p0 (patch, remainder dropped), 2x3x9x9 -> 2", 2, 3, 9, 9, 2, 4, 4, 4, 0, false},
    {"5x3 s1 p1 (kernel = padded input), 1x2x3x1 -> 3", 1, 2, 3, 1, 3, 5, 3, 1, 1, true},
};
}  // namespace

TEST_CASE("conv2d gradcheck float64: random, ones, arange") {
  double worst = 0;
  uint64_t seed = 100;
  for (const GradCase& c : kGradCases) {
    for (Fill fill : {Fill::Random, Fill::Ones, Fill::Arange}) {
      std::vector<Tensor> in{make_input({c.N, c.Cin, c.H, c.W}, fill, seed++),
                             make_input({c.Cout, c.Cin, c.KH, c.KW}, fill, seed++)};
      if (c.bias) in.push_back(make_input({c.Cout}, fill, seed++));
      const int stride = c.stride, padding = c.padding;
      const char* fname = fill == Fill::Random ? "random" : fill == Fill::Ones ? "ones" : "arange";
      worst = std::max(worst, gradcheck(
                                  [stride, padding](const std::vector<Tensor>& t) {
                                    return ops::conv2d(t[0], t[1], t.size() > 2 ? t[2] : Tensor(), stride, padding);
                                  },
                                  in, std::string(c.label) + " " + fname));
    }
  }
  MESSAGE("conv2d gradcheck: worst rel err " << worst);
}

TEST_CASE("conv2d gradcheck: only some inputs require a gradient") {
  Tensor x = make_input({2, 2, 5, 4}, Fill::Random, 1, /*requires_grad=*/false);
  Tensor w = make_input({3, 2, 3, 3}, Fill::Random, 2);
  Tensor b = make_input({3}, Fill::Random, 3, false);
  gradcheck([](const std::vector<Tensor>& t) { return ops::conv2d(t[0], t[1], t[2], 1, 1); }, {x, w, b}, "weight only");
  CHECK_FALSE(x.has_grad());
  CHECK_FALSE(b.has_grad());
  x.set_requires_grad(true);
  w.set_requires_grad(false);
  gradcheck([](const std::vector<Tensor>& t) { return ops::conv2d(t[0], t[1], t[2], 2, 1); }, {x, w, b}, "x only");
  CHECK_FALSE(w.has_grad());
}

namespace {
// Runs one variant on the same data; backward results land on top of `prefill` to check that the
// kernels accumulate.
template <class T>
std::vector<Tensor> run_variant(const cpu::Conv2dDims& d, const Tensor& x, const Tensor& w, const Tensor& b,
                                const Tensor& dy, double prefill, cpu::ConvVariant v) {
  const DType dt = dtype_of<T>();
  Tensor y = Tensor::empty({d.N, d.Cout, d.OH, d.OW}, dt);
  Tensor dx = Tensor::full(x.shape(), prefill, dt), dw = Tensor::full(w.shape(), prefill, dt);
  Tensor db = Tensor::full({d.Cout}, prefill, dt);
  cpu::conv2d_forward<T>(d, x.data<T>(), w.data<T>(), b.data<T>(), y.data<T>(), v);
  cpu::conv2d_backward_data<T>(d, dy.data<T>(), w.data<T>(), dx.data<T>(), v);
  cpu::conv2d_backward_weight<T>(d, x.data<T>(), dy.data<T>(), dw.data<T>(), db.data<T>(), v);
  return {y, dx, dw, db};
}

template <class T>
void compare_variants(double tol) {
  const char* names[] = {"y", "dx", "dw", "db"};
  struct Case {
    int64_t N, Cin, H, W, Cout, KH, KW, stride, padding;
  };
  // Batches of 1 (Im2colBatch then has one chunk) up to 7 (several chunks of weight-gradient
  // partials on any thread count up to 7).
  const Case cases[] = {{1, 3, 13, 11, 4, 3, 3, 1, 1}, {5, 3, 13, 11, 4, 3, 3, 2, 1}, {7, 4, 9, 9, 6, 1, 1, 1, 0},
                        {3, 2, 17, 15, 5, 7, 7, 2, 3}, {4, 3, 16, 16, 8, 4, 4, 4, 0}, {2, 5, 6, 7, 3, 1, 1, 2, 0},
                        {6, 1, 1, 1, 2, 3, 3, 1, 1}};
  Rng rng(77);
  WorstError worst{
      std::string("conv2d im2col variants vs Direct, ") + (sizeof(T) == 4 ? "float32" : "float64"), 0.0, {}};
  for (const Case& c : cases) {
    const cpu::Conv2dDims d = cpu::conv2d_dims(c.N, c.Cin, c.H, c.W, c.Cout, c.KH, c.KW, c.stride, c.padding);
    const DType dt = dtype_of<T>();
    Tensor x = Tensor::randn({c.N, c.Cin, c.H, c.W}, rng, 0, 1, dt);
    Tensor w = Tensor::randn({c.Cout, c.Cin, c.KH, c.KW}, rng, 0, 0.3, dt);
    Tensor b = Tensor::randn({c.Cout}, rng, 0, 1, dt);
    Tensor dy = Tensor::randn({c.N, c.Cout, d.OH, d.OW}, rng, 0, 1, dt);
    auto ref = run_variant<T>(d, x, w, b, dy, 0.5, cpu::ConvVariant::Direct);
    for (cpu::ConvVariant v : {cpu::ConvVariant::Im2col, cpu::ConvVariant::Im2colBatch, cpu::ConvVariant::Auto}) {
      auto got = run_variant<T>(d, x, w, b, dy, 0.5, v);
      for (int i = 0; i < 4; ++i) {
        const std::string label = std::string(cpu::conv_variant_name(v)) + " " + names[i] + " " + shape_str(x.shape()) +
                                  " k" + std::to_string(c.KH) + " s" + std::to_string(c.stride) + " p" +
                                  std::to_string(c.padding);
        check_close(got[size_t(i)], ref[size_t(i)], tol, label);
        worst.add(label, rel_err(got[size_t(i)], ref[size_t(i)]));
      }
    }
  }
}
}  // namespace

TEST_CASE("conv2d variants agree: Im2col, Im2colBatch, Auto vs Direct (float32 and float64)") {
  compare_variants<float>(1e-5);
  compare_variants<double>(1e-12);
}

TEST_CASE("conv2d backward kernels accumulate onto existing gradients (every variant)") {
  // A zero start, then a start of 0.5: the results must differ by 0.5 everywhere. N = 5 gives
  // Im2colBatch several weight-gradient chunks (the first accumulates straight into dw).
  const cpu::Conv2dDims d = cpu::conv2d_dims(5, 2, 5, 5, 3, 3, 3, 2, 1);
  Rng rng(5);
  Tensor x = Tensor::randn({5, 2, 5, 5}, rng, 0, 1, DType::F64), w = Tensor::randn({3, 2, 3, 3}, rng, 0, 1, DType::F64);
  Tensor b = Tensor::zeros({3}, DType::F64), dy = Tensor::randn({5, 3, d.OH, d.OW}, rng, 0, 1, DType::F64);
  for (cpu::ConvVariant v : kVariants) {
    auto zero = run_variant<double>(d, x, w, b, dy, 0.0, v);
    auto half = run_variant<double>(d, x, w, b, dy, 0.5, v);
    for (int i = 1; i < 4; ++i) {
      std::vector<double> a = zero[size_t(i)].to_f64_vector(), c = half[size_t(i)].to_f64_vector();
      double m = 0;
      for (size_t j = 0; j < a.size(); ++j) m = std::max(m, std::fabs(c[j] - a[j] - 0.5));
      CHECK_MESSAGE(m < 1e-12, cpu::conv_variant_name(v) << " output " << i << " off by " << m);
    }
  }
}

TEST_CASE("im2col and col2im are adjoint: <im2col(x), c> == <x, col2im(c)>") {
  struct Case {
    int64_t Cin, H, W, K, s, p;
  };
  const Case cases[] = {{3, 7, 5, 3, 1, 1},   {2, 9, 8, 3, 2, 1}, {1, 11, 11, 7, 2, 3},
                        {3, 12, 13, 4, 4, 0}, {2, 5, 5, 1, 2, 1}, {1, 2, 3, 5, 3, 2}};
  Rng rng(9);
  for (const Case& c : cases) {
    const cpu::Conv2dDims d = cpu::conv2d_dims(1, c.Cin, c.H, c.W, 1, c.K, c.K, c.s, c.p);
    const int64_t rows = c.Cin * c.K * c.K, P = d.OH * d.OW;
    Tensor x = Tensor::randn({c.Cin, c.H, c.W}, rng, 0, 1, DType::F64);
    Tensor col = Tensor::randn({rows, P}, rng, 0, 1, DType::F64);
    Tensor ux = Tensor::empty({rows, P}, DType::F64), cx = Tensor::zeros({c.Cin, c.H, c.W}, DType::F64);
    cpu::im2col<double>(d, x.data<double>(), ux.data<double>());
    cpu::col2im<double>(d, col.data<double>(), cx.data<double>());
    double lhs = 0, rhs = 0;
    for (int64_t i = 0; i < rows * P; ++i) lhs += ux.data<double>()[i] * col.data<double>()[i];
    for (int64_t i = 0; i < x.numel(); ++i) rhs += x.data<double>()[i] * cx.data<double>()[i];
    INFO("Cin " << c.Cin << " H " << c.H << " W " << c.W << " k " << c.K << " s " << c.s << " p " << c.p);
    CHECK(std::fabs(lhs - rhs) <= 1e-12 * (std::fabs(lhs) + 1));
  }
}

TEST_CASE("conv2d records on the tape only when a gradient is needed") {
  tape().clear();
  Tensor x = Tensor::ones({1, 1, 3, 3}), w = Tensor::ones({1, 1, 3, 3});
  Tensor y = ops::conv2d(x, w, Tensor(), 1, 1);
  CHECK(tape().size() == 0);
  CHECK_FALSE(y.requires_grad());
  CHECK(y.to_f32_vector() == std::vector<float>{4, 6, 4, 6, 9, 6, 4, 6, 4});
  w.set_requires_grad(true);
  {
    NoGradGuard ng;
    ops::conv2d(x, w, Tensor(), 1, 1);
    CHECK(tape().size() == 0);
  }
  Tensor y2 = ops::conv2d(x, w, Tensor(), 1, 1);
  CHECK(tape().size() == 1);
  CHECK(y2.requires_grad());
  tape().clear();
}

TEST_CASE("conv2d rejects bad arguments with clipcu::Error") {
  Tensor x = Tensor::zeros({2, 3, 8, 8}), w = Tensor::zeros({4, 3, 3, 3});
  CHECK_NOTHROW(ops::conv2d(x, w, Tensor::zeros({4}), 1, 1));
  CHECK_THROWS_AS(ops::conv2d(Tensor::zeros({3, 8, 8}), w, Tensor(), 1, 1), Error);           // x not 4-d
  CHECK_THROWS_AS(ops::conv2d(x, Tensor::zeros({4, 3, 3}), Tensor(), 1, 1), Error);           // weight not 4-d
  CHECK_THROWS_AS(ops::conv2d(x, Tensor::zeros({4, 2, 3, 3}), Tensor(), 1, 1), Error);        // channel mismatch
  CHECK_THROWS_AS(ops::conv2d(x, w, Tensor::zeros({3}), 1, 1), Error);                        // bias shape
  CHECK_THROWS_AS(ops::conv2d(x, w, Tensor::zeros({4, 1}), 1, 1), Error);                     // bias rank
  CHECK_THROWS_AS(ops::conv2d(x, Tensor::zeros({4, 3, 9, 9}), Tensor(), 1, 0), Error);        // kernel > input
  CHECK_THROWS_AS(ops::conv2d(x, Tensor::zeros({4, 3, 11, 3}), Tensor(), 1, 1), Error);       // kernel > padded input
  CHECK_NOTHROW(ops::conv2d(x, Tensor::zeros({4, 3, 10, 3}), Tensor(), 1, 1));                // = padded input
  CHECK_THROWS_AS(ops::conv2d(x, w, Tensor(), 0, 1), Error);                                  // stride 0
  CHECK_THROWS_AS(ops::conv2d(x, w, Tensor(), 1, -1), Error);                                 // negative padding
  CHECK_THROWS_AS(ops::conv2d(x, w.to(DType::F64), Tensor(), 1, 1), Error);                   // mixed dtypes
  CHECK_THROWS_AS(ops::conv2d(x.to(DType::BF16), w.to(DType::BF16), Tensor(), 1, 1), Error);  // no bf16 on CPU
  CHECK_THROWS_AS(ops::conv2d(Tensor::zeros({2, 3, 8, 8}, DType::I32), w, Tensor(), 1, 1), Error);
  CHECK_THROWS_AS(ops::conv2d(Tensor(), w, Tensor(), 1, 1), Error);
  CHECK_THROWS_AS(ops::conv2d(x, Tensor::zeros({0, 3, 3, 3}), Tensor(), 1, 1), Error);
  std::string msg;
  try {
    ops::conv2d(x, Tensor::zeros({4, 2, 3, 3}), Tensor(), 1, 1);
  } catch (const Error& e) {
    msg = e.what();
  }
  {  // the message names the op and both shapes
    CHECK(msg.find("conv2d") != std::string::npos);
    CHECK(msg.find("[2, 3, 8, 8]") != std::string::npos);
    CHECK(msg.find("[4, 2, 3, 3]") != std::string::npos);
  }
}
