// Tensor, dtype conversions, RNG and the autograd tape's bookkeeping.
#include <cmath>

#include "engine/autograd.h"
#include "engine/rng.h"
#include "tests/support.h"

using namespace clipcu;

TEST_CASE("tensor factories, views and copies") {
  Tensor a = Tensor::arange({2, 3});
  CHECK(a.numel() == 6);
  CHECK(a.size(-1) == 3);
  CHECK(a.to_f32_vector() == std::vector<float>{0, 1, 2, 3, 4, 5});
  Tensor v = a.view({3, -1});
  CHECK(v.shape() == Shape{3, 2});
  v.data<float>()[0] = 7;  // views share storage
  CHECK(a.data<float>()[0] == 7);
  Tensor r = a.rows(1, 1);
  CHECK(r.shape() == Shape{1, 3});
  CHECK(r.data<float>()[0] == 3);
  Tensor c = a.clone();
  c.data<float>()[1] = 42;
  CHECK(a.data<float>()[1] == 1);
  CHECK_THROWS_AS(a.view({4, 2}), Error);
  CHECK_THROWS_AS(a.data<double>(), Error);
  CHECK_THROWS_AS(a.rows(2, 1), Error);
}

TEST_CASE("dtype conversions round-trip") {
  std::vector<float> vals{0.f, 1.f, -2.5f, 3.1415926f, 65504.f, 1e-7f, -1e30f};
  Tensor f = Tensor::from_vector(vals, {7});
  Tensor h = f.to(DType::F16).to(DType::F32);
  Tensor b = f.to(DType::BF16).to(DType::F32);
  CHECK(h.data<float>()[3] == doctest::Approx(3.1415926).epsilon(1e-3));
  CHECK(h.data<float>()[4] == 65504.f);
  CHECK(std::isinf(h.data<float>()[6]));
  CHECK(b.data<float>()[3] == doctest::Approx(3.1415926).epsilon(1e-2));
  CHECK(b.data<float>()[6] == doctest::Approx(-1e30).epsilon(1e-2));
  CHECK(f16_to_f32(f32_to_f16(1e-7f)) == doctest::Approx(1.1920929e-7).epsilon(0.2));  // subnormal half
  CHECK(bf16_to_f32(f32_to_bf16(1.0f + 1.0f / 256)) == 1.0f);  // ties to even
}

TEST_CASE("rng is reproducible and its state restores") {
  Rng a(7), b(7);
  for (int i = 0; i < 10; ++i) CHECK(a.next_u64() == b.next_u64());
  a.normal();
  auto s = a.state();
  double x = a.normal(), y = a.uniform();
  Rng c;
  c.set_state(s);
  CHECK(c.normal() == x);
  CHECK(c.uniform() == y);
  Rng f1 = a.fork("w"), f2 = a.fork("w"), f3 = a.fork("v");
  CHECK(f1.next_u64() == f2.next_u64());
  CHECK(f1.next_u64() != f3.next_u64());
  for (int i = 0; i < 1000; ++i) CHECK(a.below(7) < 7);
}

TEST_CASE("tape records only what needs a gradient and names it by scope") {
  tape().clear();
  Tensor x = Tensor::ones({2}).set_requires_grad(true);
  Tensor y = Tensor::empty({2});
  {
    NameScope s1("visual");
    NameScope s2("ln_pre");
    tape().record("identity", {x}, {y}, [x, y]() mutable {
      Tensor& g = x.grad_buffer();
      for (int i = 0; i < 2; ++i) g.data<float>()[i] += y.grad().data<float>()[i];
    });
  }
  CHECK(tape().size() == 1);
  CHECK(y.requires_grad());
  CHECK(y.name() == "visual.ln_pre.identity");
  CHECK(current_scope().empty());
  {
    NameScope a("visual.transformer");
    {
      NameScope b("resblocks.3");
      CHECK(current_scope() == "visual.transformer.resblocks.3");
    }
    CHECK(current_scope() == "visual.transformer");
  }
  CHECK(current_scope().empty());
  {
    NoGradGuard ng;
    CHECK_FALSE(tape().record("identity", {x}, {Tensor::empty({2})}, [] {}));
  }
  tape().backward(y, Tensor::full({2}, 3.0));
  CHECK(x.grad().to_f32_vector() == std::vector<float>{3, 3});
  CHECK(tape().size() == 0);
  CHECK_THROWS_AS(tape().backward(Tensor::ones({1})), Error);
}
