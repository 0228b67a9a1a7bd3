// add / mul with suffix broadcasting and scale: values, float64 finite-difference checks on the
// broadcasting shapes the towers use, deterministic broadcast gradients, and shape errors.
#include <utility>
#include <vector>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "kernels/cpu/elementwise.h"
#include "tests/support.h"

using namespace clipcu;
using test::Fill;
using test::kFills;
using test::fill_name;

namespace {

struct Pair {
  Shape a, b;
};
// Equal shapes, [B, T, C] + [T, C] (positional embedding), [N, C] + [C] (bias), a one-element b.
const Pair kPairs[] = {{{3, 5}, {3, 5}},  {{2, 7, 3}, {7, 3}}, {{5, 3}, {3}},   {{2, 3, 5}, {5}},
                       {{1, 1}, {1}},     {{4, 1}, {1}},       {{3, 2}, {}},    {{7}, {7}}};

}  // namespace

TEST_CASE("add / mul / scale: forward values with broadcasting") {
  test::WorstError worst;
  worst.group = "elementwise forward vs direct";
  for (const Pair& p : kPairs)
    for (DType dt : {DType::F32, DType::F64}) {
      Tensor a = test::make_input(p.a, Fill::Random, 1, false, dt);
      Tensor b = test::make_input(p.b, Fill::Random, 2, false, dt);
      std::vector<double> av = a.to_f64_vector(), bv = b.to_f64_vector(), sum, prod, sc;
      for (size_t i = 0; i < av.size(); ++i) {
        sum.push_back(av[i] + bv[i % bv.size()]);
        prod.push_back(av[i] * bv[i % bv.size()]);
        sc.push_back(-2.5 * av[i]);
      }
      const std::string label = shape_str(p.a) + " with " + shape_str(p.b) + " " + std::string(dtype_name(dt));
      const double tol = dt == DType::F32 ? 1e-7 : 1e-16;
      for (auto [y, ref, name] : {std::tuple{ops::add(a, b), sum, "add"}, std::tuple{ops::mul(a, b), prod, "mul"},
                                  std::tuple{ops::scale(a, -2.5), sc, "scale"}}) {
        REQUIRE(y.shape() == p.a);
        REQUIRE(y.dtype() == dt);
        const double e = test::rel_err(y, Tensor::from_vector(ref, p.a, DType::F64));
        worst.add(std::string(name) + " " + label, e);
        CHECK_MESSAGE(e <= tol, name << " " << label << ": rel err " << e);
      }
    }
}

TEST_CASE("add / mul / scale: gradchecks incl. broadcasting shapes") {
  for (const Pair& p : kPairs)
    for (Fill fill : kFills) {
      const std::string label = shape_str(p.a) + " with " + shape_str(p.b) + " " + fill_name(fill);
      Tensor a = test::make_input(p.a, fill, 91), b = test::make_input(p.b, fill, 92);
      test::gradcheck([](const std::vector<Tensor>& in) { return ops::add(in[0], in[1]); }, {a, b}, "add " + label);
      test::gradcheck([](const std::vector<Tensor>& in) { return ops::mul(in[0], in[1]); }, {a, b}, "mul " + label);
      test::gradcheck([](const std::vector<Tensor>& in) { return ops::scale(in[0], -0.37); }, {a}, "scale " + label);
    }
  // The same tensor on both sides: both shares accumulate.
  Tensor x = test::make_input({3, 4}, Fill::Random, 93);
  test::gradcheck([](const std::vector<Tensor>& in) { return ops::add(in[0], in[0]); }, {x}, "x + x");
  test::gradcheck([](const std::vector<Tensor>& in) { return ops::mul(in[0], in[0]); }, {x}, "x * x");
  // A constant side gets no gradient.
  Tensor c = test::make_input({4}, Fill::Random, 94, false);
  test::gradcheck([](const std::vector<Tensor>& in) { return ops::mul(in[0], in[1]); }, {x, c}, "x * const");
  CHECK_FALSE(c.has_grad());
}

TEST_CASE("add / mul: broadcast gradients over many rows are deterministic and accurate") {
  // [600, 50, 8] + [8]: 30000 rows span many reduction chunks and both threads.
  Tensor a = test::make_input({600, 50, 8}, Fill::Random, 5, true, DType::F32);
  Tensor b = test::make_input({8}, Fill::Random, 6, true, DType::F32);
  Tensor seed = test::make_input({600, 50, 8}, Fill::Random, 7, false, DType::F32);
  std::vector<float> first_add, first_mul;
  for (int run = 0; run < 3; ++run) {
    b.zero_grad();
    backward(ops::add(a, b), seed);
    std::vector<float> g = b.grad().to_f32_vector();
    b.zero_grad();
    backward(ops::mul(a, b), seed);
    std::vector<float> h = b.grad().to_f32_vector();
    if (run == 0) {
      first_add = g;
      first_mul = h;
    } else {
      CHECK(g == first_add);
      CHECK(h == first_mul);
    }
  }
  // The float64 sums of the same float32 values.
  std::vector<double> sv = seed.to_f64_vector(), av = a.to_f64_vector(), ref_add(8, 0.0), ref_mul(8, 0.0);
  for (size_t i = 0; i < sv.size(); ++i) {
    ref_add[i % 8] += sv[i];
    ref_mul[i % 8] += sv[i] * av[i];
  }
  test::check_close(Tensor::from_vector(first_add, {8}), Tensor::from_vector(ref_add, {8}, DType::F64), 1e-7,
                    "add: db over 30000 rows");
  test::check_close(Tensor::from_vector(first_mul, {8}), Tensor::from_vector(ref_mul, {8}, DType::F64), 1e-7,
                    "mul: db over 30000 rows");
}

TEST_CASE("add / mul / scale: bad shapes and dtypes throw errors naming the op") {
  Tensor a = Tensor::zeros({3, 4});
  CHECK_THROWS_WITH_AS(ops::add(a, Tensor::zeros({3})), doctest::Contains("op add: shapes"), Error);
  CHECK_THROWS_WITH_AS(ops::mul(a, Tensor::zeros({2, 3, 4})), doctest::Contains("op mul: shapes"), Error);
  CHECK_THROWS_WITH_AS(ops::add(Tensor::zeros({4}), a), doctest::Contains("op add"), Error);
  CHECK_THROWS_WITH_AS(ops::add(a, Tensor::zeros({4}, DType::F64)), doctest::Contains("op add"), Error);
  CHECK_THROWS_WITH_AS(ops::mul(a, Tensor::from_ints({1, 2, 3, 4}, {4})), doctest::Contains("op mul"), Error);
  CHECK_THROWS_WITH_AS(ops::scale(Tensor(), 2.0), doctest::Contains("op scale"), Error);
  auto host = std::make_shared<std::vector<float>>(4);
  Tensor on_gpu = Tensor::borrow(host->data(), {4}, DType::F32, Device::cuda(0), host);
#ifndef CLIPCU_WITH_CUDA
  CHECK_THROWS_WITH_AS(ops::add(a, on_gpu), doctest::Contains("op add: this build has no CUDA backend"), Error);
  CHECK_THROWS_WITH_AS(ops::scale(on_gpu, 2.0), doctest::Contains("op scale: this build has no CUDA backend"), Error);
#else  // inputs on two devices are refused before anything reads them (one-device GPU runs:
       // tests/test_cuda_engine.cpp)
  CHECK_THROWS_WITH_AS(ops::add(a, on_gpu), doctest::Contains("op add"), Error);
#endif
}

TEST_CASE("fill_rows (linear's bias broadcast): every row is the bias, small and threaded sizes") {
  // 300 x 257 is past the threading threshold (2^16 elements) and its chunks split rows.
  for (auto [R, C] : {std::pair<int64_t, int64_t>{1, 1}, {3, 5}, {300, 257}}) {
    std::vector<float> row(static_cast<size_t>(C)), out(static_cast<size_t>(R * C), -1.0f);
    for (int64_t c = 0; c < C; ++c) row[size_t(c)] = float(c) * 0.5f - 3.0f;
    cpu::fill_rows<float>(R, C, row.data(), out.data());
    bool all = true;
    for (int64_t r = 0; r < R; ++r)
      for (int64_t c = 0; c < C; ++c) all = all && out[size_t(r * C + c)] == row[size_t(c)];
    CHECK_MESSAGE(all, "fill_rows " << R << " x " << C);
  }
}
