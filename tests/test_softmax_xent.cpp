// Mean softmax cross entropy: golden loss and gradient, I32 and I64 targets, float64
// finite-difference gradchecks (random, ones, arange; odd sizes, N = 1, C = 1), numerical
// stability with huge logits, the upstream gradient scaling, and bad targets and shapes.
#include <cmath>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "engine/rng.h"
#include "tests/support.h"

using namespace clipcu;
using namespace clipcu::test;

TEST_CASE("softmax_cross_entropy matches the golden loss and gradient") {
  const st::File& g = golden("ops.safetensors");
  for (DType dt : {DType::F32, DType::F64}) {
    for (DType it : {DType::I64, DType::I32}) {
      WorstError worst;
      worst.group = std::string("softmax_xent golden ") + std::string(dtype_name(dt)) + " targets " +
                    std::string(dtype_name(it));
      tape().clear();
      Tensor logits = g.get("softmax_xent.logits", dt).clone().set_requires_grad(true);
      Tensor targets = g.get("softmax_xent.targets").to(it);
      Tensor loss = ops::softmax_cross_entropy(logits, targets);
      REQUIRE(loss.shape() == Shape{1});
      // F32 within the README's tolerances; F64 within the float32 rounding of the goldens
      check_close(loss, g.get("softmax_xent.loss"), dt == DType::F32 ? 1e-5 : 1e-6, "softmax_xent.loss");
      worst.add("loss", rel_err(loss, g.get("softmax_xent.loss")));
      tape().backward(loss);
      check_close(logits.grad(), g.get("softmax_xent.grad_logits"), dt == DType::F32 ? 1e-4 : 1e-6,
                  "softmax_xent.grad_logits");
      worst.add("grad_logits", rel_err(logits.grad(), g.get("softmax_xent.grad_logits")));
    }
  }
}

TEST_CASE("softmax_cross_entropy gradchecks on odd sizes") {
  struct Case {
    int64_t N, C;
  };
  for (Case c : {Case{3, 7}, Case{5, 2}, Case{13, 11}, Case{1, 17}, Case{7, 2}}) {
    Rng rng(uint64_t(c.N * 100 + c.C));
    std::vector<int64_t> t(static_cast<size_t>(c.N));
    for (auto& v : t) v = int64_t(rng.below(uint64_t(c.C)));
    t.back() = c.C - 1;  // the last class is always hit
    Tensor targets = Tensor::from_ints(t, {c.N});
    for (Fill f : {Fill::Random, Fill::Ones, Fill::Arange}) {
      Tensor logits = make_input({c.N, c.C}, f, 31);
      gradcheck([targets](const std::vector<Tensor>& in) { return ops::softmax_cross_entropy(in[0], targets); },
                {logits}, "softmax_xent N=" + std::to_string(c.N) + " C=" + std::to_string(c.C));
    }
  }
}

TEST_CASE("softmax_cross_entropy with one class: zero loss and zero gradient") {
  // log softmax of a single logit is exactly 0, whatever the logit
  tape().clear();
  Tensor logits = make_input({3, 1}, Fill::Random, 33);
  Tensor loss = ops::softmax_cross_entropy(logits, Tensor::from_ints({0, 0, 0}, {3}));
  CHECK(loss.item() == 0.0);
  tape().backward(loss);
  CHECK(logits.grad().to_f64_vector() == std::vector<double>{0, 0, 0});
}

TEST_CASE("softmax_cross_entropy is stable for huge logits and scales with the upstream gradient") {
  tape().clear();
  // rows: target far below the max; two equal huge logits; a huge negative range
  Tensor logits = Tensor::from_vector(std::vector<float>{1000.f, 0.f, 1000.f, 1000.f, -1000.f, -2000.f}, {3, 2});
  logits.set_requires_grad(true);
  Tensor loss = ops::softmax_cross_entropy(logits, Tensor::from_ints({1, 0, 0}, {3}));
  const double expect = (1000.0 + std::log(2.0) + std::log1p(std::exp(-1000.0))) / 3.0;
  CHECK(loss.item() == doctest::Approx(expect).epsilon(1e-6));
  tape().backward(loss, Tensor::full({1}, 2.5));
  std::vector<float> gl = logits.grad().to_f32_vector();
  const double s = 2.5 / 3.0;
  CHECK(gl[0] == doctest::Approx(s));  // softmax 1, not the target
  CHECK(gl[1] == doctest::Approx(-s));
  CHECK(gl[2] == doctest::Approx(-0.5 * s));
  CHECK(gl[3] == doctest::Approx(0.5 * s));
  CHECK(std::fabs(gl[4]) < 1e-6);
  CHECK(std::fabs(gl[5]) < 1e-6);
}

TEST_CASE("softmax_cross_entropy rejects bad targets and shapes") {
  Tensor logits = Tensor::zeros({3, 4});
  CHECK_THROWS_WITH_AS(ops::softmax_cross_entropy(logits, Tensor::from_ints({0, 4, 1}, {3})),
                       doctest::Contains("target 4"), Error);
  CHECK_THROWS_WITH_AS(ops::softmax_cross_entropy(logits, Tensor::from_ints({0, 1, -1}, {3}, DType::I32)),
                       doctest::Contains("target -1"), Error);
  CHECK_THROWS_AS(ops::softmax_cross_entropy(logits, Tensor::from_ints({0, 1}, {2})), Error);
  CHECK_THROWS_AS(ops::softmax_cross_entropy(logits, Tensor::zeros({3})), Error);
  CHECK_THROWS_AS(ops::softmax_cross_entropy(Tensor::zeros({4}), Tensor::from_ints({0}, {1})), Error);
  CHECK_THROWS_AS(ops::softmax_cross_entropy(Tensor::zeros({0, 4}), Tensor::zeros({0}, DType::I64)), Error);
  CHECK_THROWS_AS(ops::softmax_cross_entropy(Tensor::zeros({2, 0}), Tensor::from_ints({0, 0}, {2})), Error);
}
