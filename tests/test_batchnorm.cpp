// batch_norm2d: golden parity in training mode (output, running statistics, every gradient),
// float64 finite-difference gradchecks in training and inference modes, the running-statistics
// rule against a hand computation, and shape errors.
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "engine/rng.h"
#include "tests/support.h"

using namespace clipcu;
using namespace clipcu::test;

namespace {
Tensor G(const std::string& name) { return golden("ops.safetensors").get(name).clone(); }
}  // namespace

TEST_CASE("batch_norm2d golden: training forward, running statistics, gradients") {
  tape().clear();
  Tensor x = G("batchnorm_train.x").set_requires_grad(true);
  Tensor w = G("batchnorm_train.weight").set_requires_grad(true);
  Tensor b = G("batchnorm_train.bias").set_requires_grad(true);
  const int64_t C = x.size(1);
  Tensor rm = Tensor::zeros({C}), rv = Tensor::ones({C});  // PyTorch's initial buffers
  Tensor y = ops::batch_norm2d(x, w, b, rm, rv, /*training=*/true, 0.1, 1e-5);
  WorstError fwd{"batch_norm2d golden forward", 0.0, {}}, bwd{"batch_norm2d golden gradients", 0.0, {}};
  for (auto [got, name] : {std::pair{y, "out"}, {rm, "running_mean_after"}, {rv, "running_var_after"}}) {
    check_close(got, G(std::string("batchnorm_train.") + name), 1e-5, name);
    fwd.add(name, rel_err(got, G(std::string("batchnorm_train.") + name)));
  }
  backward(y, G("batchnorm_train.grad_out"));
  for (auto [got, name] : {std::pair{x.grad(), "grad_x"}, {w.grad(), "grad_weight"}, {b.grad(), "grad_bias"}}) {
    check_close(got, G(std::string("batchnorm_train.") + name), 1e-4, name);
    bwd.add(name, rel_err(got, G(std::string("batchnorm_train.") + name)));
  }
}

TEST_CASE("batch_norm2d gradcheck float64, training mode") {
  const Shape shapes[] = {{2, 3, 5, 7}, {1, 2, 3, 1}, {3, 1, 1, 1}, {5, 4, 2, 3}};
  uint64_t seed = 1;
  double worst = 0;
  for (const Shape& s : shapes) {
    for (Fill fill : {Fill::Random, Fill::Ones, Fill::Arange}) {
      const int64_t C = s[1];
      // Random weight/bias even for the ones/arange inputs: a constant weight hides a swapped index.
      std::vector<Tensor> in{make_input(s, fill, seed++), make_input({C}, Fill::Random, seed++),
                             make_input({C}, Fill::Random, seed++)};
      Tensor rm = Tensor::zeros({C}, DType::F64), rv = Tensor::ones({C}, DType::F64);
      worst = std::max(worst, gradcheck(
                                  [rm, rv](const std::vector<Tensor>& t) {
                                    return ops::batch_norm2d(t[0], t[1], t[2], rm, rv, true, 0.1, 1e-5);
                                  },
                                  in, "train " + shape_str(s) + " " + fill_name(fill)));
    }
  }
  // No affine parameters, no running statistics (track_running_stats=False).
  Tensor x = make_input({2, 3, 3, 5}, Fill::Random, 99);
  worst = std::max(worst, gradcheck(
                              [](const std::vector<Tensor>& t) {
                                return ops::batch_norm2d(t[0], Tensor(), Tensor(), Tensor(), Tensor(), true);
                              },
                              {x}, "train, no weight/bias/running stats"));
  MESSAGE("batch_norm2d training gradcheck: worst rel err " << worst);
}

TEST_CASE("batch_norm2d gradcheck float64, inference mode") {
  const Shape shapes[] = {{2, 3, 5, 7}, {1, 1, 1, 1}, {1, 5, 3, 2}};
  uint64_t seed = 50;
  double worst = 0;
  for (const Shape& s : shapes) {
    for (Fill fill : {Fill::Random, Fill::Ones, Fill::Arange}) {
      const int64_t C = s[1];
      Rng rng(seed++);
      Tensor rm = Tensor::randn({C}, rng, 0, 0.5, DType::F64), rv = Tensor::uniform({C}, rng, 0.5, 1.5, DType::F64);
      std::vector<Tensor> in{make_input(s, fill, seed++), make_input({C}, Fill::Random, seed++),
                             make_input({C}, Fill::Random, seed++)};
      worst = std::max(worst, gradcheck(
                                  [rm, rv](const std::vector<Tensor>& t) {
                                    return ops::batch_norm2d(t[0], t[1], t[2], rm, rv, false, 0.1, 1e-5);
                                  },
                                  in, "eval " + shape_str(s) + " " + fill_name(fill)));
    }
  }
  MESSAGE("batch_norm2d inference gradcheck: worst rel err " << worst);
}

TEST_CASE("batch_norm2d running statistics and inference against a hand computation") {
  const int64_t N = 3, C = 2, H = 5, W = 3, M = N * H * W;
  Tensor x = make_input({N, C, H, W}, Fill::Random, 7, false);
  Rng rng(3);
  Tensor rm = Tensor::randn({C}, rng, 0, 1, DType::F64), rv = Tensor::uniform({C}, rng, 0.5, 2, DType::F64);
  std::vector<double> rm0 = rm.to_f64_vector(), rv0 = rv.to_f64_vector();
  const double momentum = 0.3, eps = 1e-3;
  Tensor y = ops::batch_norm2d(x, Tensor(), Tensor(), rm, rv, true, momentum, eps);
  std::vector<double> xv = x.to_f64_vector(), yv = y.to_f64_vector();
  for (int64_t c = 0; c < C; ++c) {
    double sum = 0, ss = 0;
    for (int64_t n = 0; n < N; ++n)
      for (int64_t i = 0; i < H * W; ++i) sum += xv[size_t((n * C + c) * H * W + i)];
    double mean = sum / double(M);
    for (int64_t n = 0; n < N; ++n)
      for (int64_t i = 0; i < H * W; ++i) ss += std::pow(xv[size_t((n * C + c) * H * W + i)] - mean, 2);
    CHECK(rm.to_f64_vector()[size_t(c)] ==
          doctest::Approx((1 - momentum) * rm0[size_t(c)] + momentum * mean).epsilon(1e-12));
    CHECK(rv.to_f64_vector()[size_t(c)] ==
          doctest::Approx((1 - momentum) * rv0[size_t(c)] + momentum * ss / double(M - 1)).epsilon(1e-12));
    const size_t i0 = size_t((1 * C + c) * H * W + 4);  // one element, normalized with the biased variance
    CHECK(yv[i0] == doctest::Approx((xv[i0] - mean) / std::sqrt(ss / double(M) + eps)).epsilon(1e-12));
  }
  // Inference uses the (just updated) running statistics and leaves them alone.
  std::vector<double> rm1 = rm.to_f64_vector(), rv1 = rv.to_f64_vector();
  Tensor w = Tensor::from_vector(std::vector<double>{2.0, -0.5}, {C}),
         b = Tensor::from_vector(std::vector<double>{0.25, 1.0}, {C});
  Tensor ye = ops::batch_norm2d(x, w, b, rm, rv, false, momentum, eps);
  CHECK(rm.to_f64_vector() == rm1);
  CHECK(rv.to_f64_vector() == rv1);
  std::vector<double> yev = ye.to_f64_vector(), wv = w.to_f64_vector(), bv = b.to_f64_vector();
  double worst = 0;
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t i = 0; i < H * W; ++i) {
        size_t k = size_t((n * C + c) * H * W + i);
        double ref = (xv[k] - rm1[size_t(c)]) / std::sqrt(rv1[size_t(c)] + eps) * wv[size_t(c)] + bv[size_t(c)];
        worst = std::max(worst, std::fabs(yev[k] - ref));
      }
  CHECK(worst < 1e-12);
}

TEST_CASE("batch_norm2d float32 agrees with float64") {
  Tensor x = make_input({4, 6, 7, 5}, Fill::Random, 11, false);
  Tensor w = make_input({6}, Fill::Random, 12, false), b = make_input({6}, Fill::Random, 13, false);
  for (bool training : {true, false}) {
    Tensor rm = Tensor::full({6}, 0.1, DType::F64), rv = Tensor::full({6}, 1.5, DType::F64);
    Tensor rm32 = rm.to(DType::F32), rv32 = rv.to(DType::F32);
    Tensor y64 = ops::batch_norm2d(x, w, b, rm, rv, training);
    Tensor y32 = ops::batch_norm2d(x.to(DType::F32), w.to(DType::F32), b.to(DType::F32), rm32, rv32, training);
    check_close(y32, y64, 1e-6, training ? "train f32 vs f64" : "eval f32 vs f64");
    check_close(rv32, rv, 1e-6, "running_var f32 vs f64");
  }
}

TEST_CASE("batch_norm2d records only when needed, no-grad forward still updates running stats") {
  tape().clear();
  Tensor x = Tensor::arange({2, 2, 2, 2}, DType::F32);
  Tensor rm = Tensor::zeros({2}), rv = Tensor::ones({2});
  Tensor w = Tensor::ones({2}).set_requires_grad(true), b = Tensor::zeros({2});
  {
    NoGradGuard ng;
    ops::batch_norm2d(x, w, b, rm, rv, true);
  }
  CHECK(tape().size() == 0);
  CHECK(rm.to_f32_vector()[0] != 0.0f);  // PyTorch updates the buffers in training mode regardless
  ops::batch_norm2d(x, Tensor(), Tensor(), rm, rv, false);
  CHECK(tape().size() == 0);
  ops::batch_norm2d(x, w, b, rm, rv, false);
  CHECK(tape().size() == 1);
  tape().clear();
}

TEST_CASE("batch_norm2d rejects bad arguments with clipcu::Error") {
  Tensor x = Tensor::zeros({2, 3, 4, 4}), c3 = Tensor::zeros({3}), c4 = Tensor::zeros({4});
  CHECK_NOTHROW(ops::batch_norm2d(x, c3, c3, Tensor::zeros({3}), Tensor::ones({3}), true));
  CHECK_THROWS_AS(ops::batch_norm2d(Tensor::zeros({2, 3, 4}), c3, c3, c3, c3, true), Error);     // not 4-d
  CHECK_THROWS_AS(ops::batch_norm2d(x, c4, c3, c3, c3, true), Error);                            // weight channels
  CHECK_THROWS_AS(ops::batch_norm2d(x, c3, c4, c3, c3, true), Error);                            // bias channels
  CHECK_THROWS_AS(ops::batch_norm2d(x, c3, c3, c4, c3, false), Error);                           // running_mean
  CHECK_THROWS_AS(ops::batch_norm2d(x, c3, c3, c3, c4, false), Error);                           // running_var
  CHECK_THROWS_AS(ops::batch_norm2d(x, c3, c3, c3, Tensor(), true), Error);                      // one of two
  CHECK_THROWS_AS(ops::batch_norm2d(x, c3, c3, Tensor(), Tensor(), false), Error);               // eval w/o stats
  CHECK_THROWS_AS(ops::batch_norm2d(Tensor::zeros({1, 3, 1, 1}), c3, c3, c3, c3, true), Error);  // 1 value/channel
  CHECK_NOTHROW(ops::batch_norm2d(Tensor::zeros({1, 3, 1, 1}), c3, c3, c3, Tensor::ones({3}), false));
  CHECK_THROWS_AS(ops::batch_norm2d(x, c3.to(DType::F64), c3, c3, c3, true), Error);  // mixed dtypes
  CHECK_THROWS_AS(ops::batch_norm2d(x, c3, c3, c3, c3, true, 1.5), Error);            // momentum
  CHECK_THROWS_AS(ops::batch_norm2d(x, c3, c3, c3, c3, true, 0.1, -1.0), Error);      // eps
  CHECK_THROWS_AS(ops::batch_norm2d(Tensor(), c3, c3, c3, c3, true), Error);
}

TEST_CASE("batch_norm2d_relu: the fused op equals relu(batch_norm2d), forward, running statistics, gradients") {
  // float64 and float32, training and inference, odd shapes; the dy mask is the fused output's
  // sign, so the gradients must match the composition exactly (the same float operations).
  uint64_t seed = 300;
  for (DType dt : {DType::F64, DType::F32})
    for (bool training : {true, false})
      for (const Shape& s : {Shape{2, 3, 5, 7}, Shape{1, 4, 3, 1}, Shape{3, 1, 2, 2}}) {
        const int64_t C = s[1];
        const Tensor x0 = make_input(s, Fill::Random, seed++).to(dt), w0 = make_input({C}, Fill::Random, seed++).to(dt);
        const Tensor b0 = make_input({C}, Fill::Random, seed++).to(dt), g = make_input(s, Fill::Random, seed++).to(dt);
        const std::string label = std::string(dtype_name(dt)) + (training ? " train " : " eval ") + shape_str(s);
        INFO(label);
        std::vector<Tensor> outs, grads;
        for (bool fused : {true, false}) {
          tape().clear();
          Tensor x = x0.clone().set_requires_grad(true), w = w0.clone().set_requires_grad(true);
          Tensor b = b0.clone().set_requires_grad(true);
          Tensor rm = Tensor::full({C}, 0.25, dt), rv = Tensor::full({C}, 1.5, dt);
          Tensor y = fused ? ops::batch_norm2d_relu(x, w, b, rm, rv, training)
                           : ops::relu(ops::batch_norm2d(x, w, b, rm, rv, training));
          backward(y, g);
          outs.insert(outs.end(), {y, rm, rv});
          grads.insert(grads.end(), {x.grad(), w.grad(), b.grad()});
        }
        for (size_t i = 0; i < 3; ++i) {
          CHECK(outs[i].to_f64_vector() == outs[i + 3].to_f64_vector());
          CHECK(grads[i].to_f64_vector() == grads[i + 3].to_f64_vector());
        }
        // some outputs were clipped, some not: both sides of the mask ran
        const std::vector<double> y = outs[0].to_f64_vector();
        CHECK(std::count(y.begin(), y.end(), 0.0) > 0);
        CHECK(std::count_if(y.begin(), y.end(), [](double v) { return v > 0; }) > 0);
      }
}
