// Row-wise L2 normalization: golden forward and gradient, float64 finite-difference gradchecks
// (random, ones, arange; odd sizes), the eps clamp for zero and tiny rows, and bad arguments.
#include <cmath>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "tests/support.h"

using namespace clipcu;
using namespace clipcu::test;

TEST_CASE("l2_normalize matches the golden forward and gradient") {
  const st::File& g = golden("ops.safetensors");
  // F32 within the README's tolerances; F64 within the float32 rounding of the goldens.
  for (DType dt : {DType::F32, DType::F64}) {
    WorstError worst;
    worst.group = std::string("l2_normalize golden ") + std::string(dtype_name(dt));
    tape().clear();
    Tensor x = g.get("l2_normalize.x", dt).clone().set_requires_grad(true);
    Tensor y = ops::l2_normalize(x);
    check_close(y, g.get("l2_normalize.out"), dt == DType::F32 ? 1e-5 : 1e-6, "l2_normalize.out");
    worst.add("out", rel_err(y, g.get("l2_normalize.out")));
    tape().backward(y, g.get("l2_normalize.grad_out", dt));
    check_close(x.grad(), g.get("l2_normalize.grad_x"), dt == DType::F32 ? 1e-4 : 1e-6, "l2_normalize.grad_x");
    worst.add("grad_x", rel_err(x.grad(), g.get("l2_normalize.grad_x")));
  }
}

TEST_CASE("l2_normalize rows have unit norm, gradchecks on odd sizes") {
  Tensor y = ops::l2_normalize(make_input({7, 13}, Fill::Random, 2, false, DType::F32));
  std::vector<float> v = y.to_f32_vector();
  double worst = 0;
  for (int r = 0; r < 7; ++r) {
    double s = 0;
    for (int c = 0; c < 13; ++c) s += double(v[size_t(r * 13 + c)]) * v[size_t(r * 13 + c)];
    worst = std::max(worst, std::fabs(std::sqrt(s) - 1.0));
  }
  CHECK(worst < 1e-6);
  for (Shape s : {Shape{1, 11}, Shape{3, 5}, Shape{7, 13}, Shape{13, 2}}) {
    for (Fill f : {Fill::Random, Fill::Ones, Fill::Arange}) {
      Tensor x = make_input(s, f, 23);
      gradcheck([](const std::vector<Tensor>& in) { return ops::l2_normalize(in[0]); }, {x},
                "l2_normalize " + shape_str(s));
    }
  }
}

TEST_CASE("l2_normalize with C = 1 gives the sign and a zero gradient") {
  // y = x / |x| is constant in x away from 0: a finite-difference check would compare rounding
  // noise with zero, so the closed form is checked instead.
  for (Fill f : {Fill::Random, Fill::Arange}) {
    tape().clear();
    Tensor x = make_input({5, 1}, f, 29);
    Tensor y = ops::l2_normalize(x);
    std::vector<double> xv = x.to_f64_vector(), yv = y.to_f64_vector();
    for (size_t i = 0; i < xv.size(); ++i) CHECK(yv[i] == doctest::Approx(xv[i] > 0 ? 1.0 : -1.0).epsilon(1e-15));
    tape().backward(y, make_input({5, 1}, Fill::Random, 30, false));
    double worst = 0;
    for (double gv : x.grad().to_f64_vector()) worst = std::max(worst, std::fabs(gv));
    CHECK(worst < 1e-14);
  }
}

TEST_CASE("l2_normalize clamps the norm at 1e-12: zero rows stay finite") {
  tape().clear();
  Tensor x = Tensor::from_vector(std::vector<double>{0, 0, 0, 3e-13, 4e-13, 0, 3, 4, 0}, {3, 3});
  x.set_requires_grad(true);
  Tensor y = ops::l2_normalize(x);
  std::vector<double> v = y.to_f64_vector();
  CHECK(v[0] == 0.0);
  CHECK(v[1] == 0.0);
  CHECK(v[3] == doctest::Approx(0.3));  // tiny row: divided by eps, not by its norm 5e-13
  CHECK(v[4] == doctest::Approx(0.4));
  CHECK(v[6] == doctest::Approx(0.6));
  CHECK(v[7] == doctest::Approx(0.8));
  tape().backward(y, Tensor::ones({3, 3}, DType::F64));
  std::vector<double> gx = x.grad().to_f64_vector();
  bool finite = true;
  for (double d : gx) finite = finite && std::isfinite(d);
  CHECK(finite);
  CHECK(gx[0] == doctest::Approx(1e12));  // y = x / eps there: the gradient is gy / eps
  // a normal row: gradient orthogonal to the row, (gy - y (y.gy)) / ||x||
  CHECK(gx[6] == doctest::Approx((1 - 0.6 * 1.4) / 5));
  CHECK(gx[7] == doctest::Approx((1 - 0.8 * 1.4) / 5));
}

TEST_CASE("l2_normalize rejects bad arguments") {
  CHECK_THROWS_WITH_AS(ops::l2_normalize(Tensor::zeros({2, 3, 4})), doctest::Contains("l2_normalize"), Error);
  CHECK_THROWS_AS(ops::l2_normalize(Tensor::zeros({5})), Error);
  CHECK_THROWS_AS(ops::l2_normalize(Tensor::from_ints({1, 2}, {1, 2})), Error);
  CHECK_THROWS_AS(ops::l2_normalize(Tensor()), Error);
}
