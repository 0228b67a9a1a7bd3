// Pointwise activations (relu, quick_gelu, gelu erf / tanh, exp): golden parity, values at known
// points and in the tails, float64 finite-difference checks, and errors.
#include <cmath>
#include <functional>
#include <limits>
#include <vector>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "tests/support.h"

using namespace clipcu;
using test::Fill;

namespace {

const Fill kFills[] = {Fill::Random, Fill::Ones, Fill::Arange};
const char* fill_name(Fill f) { return f == Fill::Random ? "random" : f == Fill::Ones ? "ones" : "arange"; }

Tensor golden_input(const std::string& name, DType dt) {
  Tensor t = test::golden("ops.safetensors").get(name).to(DType::F32).clone();
  return dt == DType::F32 ? t : t.to(dt);
}

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
  auto host = std::make_shared<std::vector<float>>(4);
  Tensor on_gpu = Tensor::borrow(host->data(), {4}, DType::F32, Device::cuda(0), host);
  CHECK_THROWS_WITH_AS(ops::quick_gelu(on_gpu), doctest::Contains("op quick_gelu: CUDA path not built yet"), Error);
  CHECK_THROWS_WITH_AS(ops::gelu(on_gpu, true), doctest::Contains("op gelu_tanh: CUDA path not built yet"), Error);
}
