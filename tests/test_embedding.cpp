// Embedding lookup: golden forward and scatter-add gradient (repeated ids), I32 and I64 ids,
// float64 finite-difference gradchecks, a bit-exact determinism check of the parallel
// scatter-add against a serial loop, and out-of-range ids throwing clipcu::Error.
#include <cstring>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "engine/rng.h"
#include "kernels/cpu/embedding.h"
#include "tests/support.h"

using namespace clipcu;
using namespace clipcu::test;

TEST_CASE("embedding matches the golden forward and scatter-add gradient") {
  const st::File& g = golden("ops.safetensors");
  // Goldens are float64 results rounded to float32: F32 within the README's tolerances, F64
  // within the float32 rounding of the reference (~6e-8, checked at 1e-6).
  for (DType dt : {DType::F32, DType::F64}) {
    for (DType it : {DType::I64, DType::I32}) {
      WorstError worst;
      worst.group = std::string("embedding golden ") + std::string(dtype_name(dt)) + " ids " +
                    std::string(dtype_name(it));
      const double tol_fwd = dt == DType::F32 ? 1e-5 : 1e-6, tol_grad = dt == DType::F32 ? 1e-4 : 1e-6;
      tape().clear();
      Tensor table = g.get("embedding.table", dt).clone().set_requires_grad(true);
      Tensor ids = g.get("embedding.ids").to(it);
      Tensor out = ops::embedding(table, ids);
      check_close(out, g.get("embedding.out"), tol_fwd, "embedding.out");
      worst.add("out", rel_err(out, g.get("embedding.out")));
      tape().backward(out, g.get("embedding.grad_out", dt));
      check_close(table.grad(), g.get("embedding.grad_table"), tol_grad, "embedding.grad_table");
      worst.add("grad_table", rel_err(table.grad(), g.get("embedding.grad_table")));
    }
  }
}

TEST_CASE("embedding gradchecks: random, ones, arange tables, odd sizes, repeated ids") {
  struct Case {
    int64_t V, C;
    std::vector<int64_t> ids;
    Shape ids_shape;
  };
  const std::vector<Case> cases = {
      {7, 5, {0, 6, 6, 3, 0, 0, 2, 6, 1, 5, 3, 3}, {3, 4}},  // repeats: the gradient must add up
      {1, 1, {0, 0, 0}, {3}},                                // V = 1, C = 1
      {13, 3, {12}, {1}},
      {5, 2, {4, 1, 1, 0, 2, 3, 4}, {7}},
  };
  for (const Case& c : cases) {
    for (Fill f : {Fill::Random, Fill::Ones, Fill::Arange}) {
      Tensor table = make_input({c.V, c.C}, f, 17);
      Tensor ids = Tensor::from_ints(c.ids, c.ids_shape);
      gradcheck([ids](const std::vector<Tensor>& in) { return ops::embedding(in[0], ids); }, {table},
                "embedding V=" + std::to_string(c.V) + " C=" + std::to_string(c.C));
    }
  }
  // a scalar id -> one row [C]
  Tensor t = Tensor::arange({4, 3});
  Tensor one = ops::embedding(t, Tensor::from_ints({2}, {}));
  CHECK(one.shape() == Shape{3});
  CHECK(one.to_f32_vector() == std::vector<float>{6, 7, 8});
}

TEST_CASE("embedding backward is deterministic and bit-identical to a serial scatter-add") {
  // Large enough for the parallel path; few rows so every row collects many positions.
  const int64_t V = 37, C = 67, N = 20011;
  Rng rng(3);
  std::vector<int64_t> idv(static_cast<size_t>(N));
  for (auto& v : idv) v = int64_t(rng.below(uint64_t(V)));
  Tensor ids = Tensor::from_ints(idv, {N});
  Tensor gy = Tensor::randn({N, C}, rng);
  // serial reference in position order: the order the bucketed kernel promises per row
  std::vector<float> ref(size_t(V * C), 0.f);
  const float* g = gy.data<float>();
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c) ref[size_t(idv[size_t(n)] * C + c)] += g[n * C + c];
  for (int rep = 0; rep < 2; ++rep) {
    std::vector<float> got(size_t(V * C), 0.f);
    cpu::embedding_backward<float, int64_t>(N, V, C, ids.data<int64_t>(), g, got.data());
    CHECK(std::memcmp(got.data(), ref.data(), got.size() * sizeof(float)) == 0);
  }
  // accumulation: a second backward keeps adding onto the first, in the same order
  std::vector<float> twice(size_t(V * C), 0.f);
  cpu::embedding_backward<float, int64_t>(N, V, C, ids.data<int64_t>(), g, twice.data());
  cpu::embedding_backward<float, int64_t>(N, V, C, ids.data<int64_t>(), g, twice.data());
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c) ref[size_t(idv[size_t(n)] * C + c)] += g[n * C + c];
  CHECK(std::memcmp(twice.data(), ref.data(), twice.size() * sizeof(float)) == 0);
}

TEST_CASE("embedding rejects bad ids and bad arguments") {
  Tensor table = Tensor::zeros({10, 4});
  CHECK_THROWS_WITH_AS(ops::embedding(table, Tensor::from_ints({1, 10, 2}, {3})), doctest::Contains("id 10"), Error);
  CHECK_THROWS_WITH_AS(ops::embedding(table, Tensor::from_ints({1, 10, 2}, {3})), doctest::Contains("V=10"), Error);
  CHECK_THROWS_WITH_AS(ops::embedding(table, Tensor::from_ints({-3}, {1}, DType::I32)), doctest::Contains("id -3"),
                       Error);
  CHECK_THROWS_AS(ops::embedding(table, Tensor::zeros({3})), Error);                         // float ids
  CHECK_THROWS_AS(ops::embedding(Tensor::zeros({10}), Tensor::from_ints({1}, {1})), Error);  // table not [V, C]
  CHECK_THROWS_AS(ops::embedding(Tensor::from_ints({1, 2}, {1, 2}), Tensor::from_ints({0}, {1})), Error);  // int table
  std::vector<float> out(4);
  const int32_t bad[] = {0, 11};
  CHECK_THROWS_AS((cpu::embedding_forward<float, int32_t>(2, 10, 4, table.data<float>(), bad, out.data())), Error);
}
