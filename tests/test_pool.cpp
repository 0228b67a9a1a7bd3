// avg_pool2d (kernel = stride = k, floor): golden parity, float64 gradchecks with odd sizes (the
// remainder rows/columns are dropped and get no gradient), a hand-checked case, shape errors.
#include <string>
#include <vector>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "tests/support.h"

using namespace clipcu;
using namespace clipcu::test;

namespace {
Tensor G(const std::string& name) { return golden("ops.safetensors").get(name).clone(); }
}  // namespace

TEST_CASE("avg_pool2d golden: forward and gradient") {
  tape().clear();
  Tensor x = G("avgpool2.x").set_requires_grad(true);
  Tensor y = ops::avg_pool2d(x, 2);
  WorstError worst{"avg_pool2d golden", 0.0, {}};
  check_close(y, G("avgpool2.out"), 1e-5, "avgpool2.out");
  worst.add("out", rel_err(y, G("avgpool2.out")));
  backward(y, G("avgpool2.grad_out"));
  check_close(x.grad(), G("avgpool2.grad_x"), 1e-4, "avgpool2.grad_x");
  worst.add("grad_x", rel_err(x.grad(), G("avgpool2.grad_x")));
}

TEST_CASE("avg_pool2d gradcheck float64: odd sizes, random, ones, arange") {
  struct Case {
    Shape shape;
    int k;
  };
  const Case cases[] = {{{2, 3, 7, 5}, 2}, {{1, 2, 7, 8}, 3}, {{3, 1, 5, 5}, 1}, {{1, 2, 5, 7}, 5}, {{2, 1, 4, 6}, 2}};
  uint64_t seed = 1;
  double worst = 0;
  for (const Case& c : cases) {
    for (Fill fill : {Fill::Random, Fill::Ones, Fill::Arange}) {
      const int k = c.k;
      const char* fname = fill == Fill::Random ? "random" : fill == Fill::Ones ? "ones" : "arange";
      worst = std::max(worst, gradcheck([k](const std::vector<Tensor>& t) { return ops::avg_pool2d(t[0], k); },
                                        {make_input(c.shape, fill, seed++)},
                                        shape_str(c.shape) + " k" + std::to_string(k) + " " + fname));
    }
  }
  MESSAGE("avg_pool2d gradcheck: worst rel err " << worst);
}

TEST_CASE("avg_pool2d by hand: floor drops the remainder, which gets no gradient") {
  tape().clear();
  Tensor x = Tensor::arange({1, 1, 5, 5}, DType::F64).set_requires_grad(true);
  Tensor y = ops::avg_pool2d(x, 2);
  CHECK(y.shape() == Shape{1, 1, 2, 2});
  // windows {0,1,5,6}, {2,3,7,8}, {10,11,15,16}, {12,13,17,18}
  CHECK(y.to_f64_vector() == std::vector<double>{3.0, 5.0, 13.0, 15.0});
  backward(y, Tensor::ones({1, 1, 2, 2}, DType::F64));
  std::vector<double> g = x.grad().to_f64_vector();
  for (int i = 0; i < 5; ++i)
    for (int j = 0; j < 5; ++j) {
      INFO("dx[" << i << ", " << j << "]");
      CHECK(g[size_t(i * 5 + j)] == (i < 4 && j < 4 ? 0.25 : 0.0));
    }
  // float32 path agrees
  Tensor y32 = ops::avg_pool2d(Tensor::arange({1, 1, 5, 5}), 2);
  CHECK(y32.to_f32_vector() == std::vector<float>{3.f, 5.f, 13.f, 15.f});
}

TEST_CASE("avg_pool2d rejects bad arguments with clipcu::Error") {
  Tensor x = Tensor::zeros({2, 3, 6, 5});
  CHECK_NOTHROW(ops::avg_pool2d(x, 5));
  CHECK_THROWS_AS(ops::avg_pool2d(x, 6), Error);  // kernel larger than W
  CHECK_THROWS_AS(ops::avg_pool2d(x, 0), Error);
  CHECK_THROWS_AS(ops::avg_pool2d(x, -2), Error);
  CHECK_THROWS_AS(ops::avg_pool2d(Tensor::zeros({3, 6, 5}), 2), Error);  // not 4-d
  CHECK_THROWS_AS(ops::avg_pool2d(Tensor::zeros({2, 3, 6, 5}, DType::I64), 2), Error);
  CHECK_THROWS_AS(ops::avg_pool2d(Tensor(), 2), Error);
}
