// Attention core: golden parity (plain and causal, forward and every gradient), a direct float64
// reference for Tq != Tk and large scores, float64 finite-difference checks, and shape errors.
#include <cmath>
#include <vector>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "kernels/cpu/attention.h"
#include "tests/support.h"

using namespace clipcu;
using test::Fill;
using test::kFills;
using test::fill_name;
using test::golden_input;

namespace {

// softmax(q k^T / sqrt(D)) v written out with the full score matrix, in float64.
Tensor reference_attention(const Tensor& q, const Tensor& k, const Tensor& v, bool causal) {
  const int64_t B = q.size(0), H = q.size(1), Tq = q.size(2), D = q.size(3), Tk = k.size(2);
  std::vector<double> Q = q.to_f64_vector(), K = k.to_f64_vector(), V = v.to_f64_vector();
  std::vector<double> O(size_t(B * H * Tq * D), 0.0);
  for (int64_t bh = 0; bh < B * H; ++bh)
    for (int64_t i = 0; i < Tq; ++i) {
      std::vector<double> s(size_t(Tk), -INFINITY);
      double m = -INFINITY;
      for (int64_t j = 0; j < Tk; ++j) {
        if (causal && j > i) continue;
        double dot = 0;
        for (int64_t d = 0; d < D; ++d) dot += Q[size_t((bh * Tq + i) * D + d)] * K[size_t((bh * Tk + j) * D + d)];
        s[size_t(j)] = dot / std::sqrt(double(D));
        m = std::max(m, s[size_t(j)]);
      }
      double z = 0;
      for (int64_t j = 0; j < Tk; ++j) z += std::exp(s[size_t(j)] - m);
      for (int64_t j = 0; j < Tk; ++j) {
        const double p = std::exp(s[size_t(j)] - m) / z;
        for (int64_t d = 0; d < D; ++d) O[size_t((bh * Tq + i) * D + d)] += p * V[size_t((bh * Tk + j) * D + d)];
      }
    }
  return Tensor::from_vector(O, q.shape(), DType::F64);
}

struct AttnCase {
  int64_t B, H, Tq, Tk, D;
  bool causal;
};

}  // namespace

TEST_CASE("attention: golden forward and every gradient, plain and causal (float32 and float64)") {
  for (const char* prefix : {"attention", "attention_causal"}) {
    const bool causal = std::string(prefix) == "attention_causal";
    for (DType dt : {DType::F32, DType::F64}) {
      const double fwd_tol = dt == DType::F32 ? 1e-5 : 1e-6, grad_tol = dt == DType::F32 ? 1e-4 : 1e-6;
      const std::string pre = std::string(prefix) + ".";
      std::string tag = " ";
      tag += dtype_name(dt);
      test::WorstError worst;
      worst.group = std::string(prefix) + " golden" + tag;
      Tensor q = golden_input(pre + "q", dt), k = golden_input(pre + "k", dt), v = golden_input(pre + "v", dt);
      q.set_requires_grad(true);
      k.set_requires_grad(true);
      v.set_requires_grad(true);
      tape().clear();
      Tensor y = ops::attention(q, k, v, causal);
      Tensor out = golden_input(pre + "out", dt);
      test::check_close(y, out, fwd_tol, pre + "out" + tag);
      worst.add("out", test::rel_err(y, out));
      backward(y, golden_input(pre + "grad_out", dt));
      for (auto [t, name] : {std::pair{q, "grad_q"}, std::pair{k, "grad_k"}, std::pair{v, "grad_v"}}) {
        Tensor ref = golden_input(pre + name, dt);
        test::check_close(t.grad(), ref, grad_tol, pre + name + tag);
        worst.add(name, test::rel_err(t.grad(), ref));
      }
    }
  }
}

TEST_CASE("attention: forward against a direct float64 reference (Tq != Tk, T = 1, large scores)") {
  const AttnCase cases[] = {{1, 1, 1, 1, 1, false}, {1, 1, 1, 1, 1, true},  {2, 3, 1, 17, 8, false},
                            {1, 2, 5, 3, 4, false},  {3, 1, 7, 7, 5, true},  {2, 2, 13, 13, 16, false}};
  test::WorstError worst;
  worst.group = "attention forward vs float64 reference";
  for (const AttnCase& c : cases)
    for (Fill fill : kFills)
      for (DType dt : {DType::F32, DType::F64}) {
        Tensor q = test::make_input({c.B, c.H, c.Tq, c.D}, fill, 1, false, dt);
        Tensor k = test::make_input({c.B, c.H, c.Tk, c.D}, fill, 2, false, dt);
        Tensor v = test::make_input({c.B, c.H, c.Tk, c.D}, fill, 3, false, dt);
        Tensor y = ops::attention(q, k, v, c.causal);
        const std::string label = "attention " + shape_str(q.shape()) + " x " + shape_str(k.shape()) +
                                  (c.causal ? " causal " : " ") + fill_name(fill) + " " +
                                  std::string(dtype_name(dt));
        const double e = test::rel_err(y, reference_attention(q, k, v, c.causal));
        worst.add(label, e);
        CHECK_MESSAGE(e <= (dt == DType::F32 ? 1e-6 : 1e-13), label << ": rel err " << e);
      }
  // Scores of several hundred: a softmax without the max shift would overflow float32.
  Tensor q = test::make_input({1, 2, 6, 8}, Fill::Random, 4, false, DType::F32);
  Tensor k = test::make_input({1, 2, 9, 8}, Fill::Random, 5, false, DType::F32);
  Tensor v = test::make_input({1, 2, 9, 8}, Fill::Random, 6, false, DType::F32);
  for (int64_t i = 0; i < q.numel(); ++i) q.data<float>()[i] *= 100.f;
  test::check_close(ops::attention(q, k, v), reference_attention(q, k, v, false), 1e-5, "attention, scores ~ 300");
}

TEST_CASE("attention: gradchecks incl. Tq != Tk, T = 1 and causal") {
  const AttnCase cases[] = {{1, 1, 1, 1, 1, false}, {1, 1, 1, 1, 3, true},  {1, 2, 1, 7, 3, false},
                            {2, 1, 4, 9, 5, false},  {1, 1, 7, 3, 2, false}, {2, 3, 5, 5, 4, true},
                            {1, 2, 6, 6, 3, false}};
  for (const AttnCase& c : cases)
    for (Fill fill : kFills) {
      Tensor q = test::make_input({c.B, c.H, c.Tq, c.D}, fill, 61);
      Tensor k = test::make_input({c.B, c.H, c.Tk, c.D}, fill, 62);
      // With ones everywhere, every dP_ij = dO_i . v_j is equal along j, so dS and the true
      // gradients of q and k are exactly 0 and a relative check compares finite-difference noise
      // with zero (checked separately below). Random v keeps the uniform probabilities of
      // q = k = ones but gives q and k a real gradient.
      Tensor v = test::make_input({c.B, c.H, c.Tk, c.D}, fill == Fill::Ones ? Fill::Random : fill, 63);
      const bool causal = c.causal;
      test::gradcheck([causal](const std::vector<Tensor>& in) { return ops::attention(in[0], in[1], in[2], causal); },
                      {q, k, v},
                      "attention " + shape_str(q.shape()) + " x " + shape_str(k.shape()) +
                          (causal ? " causal " : " ") + fill_name(fill));
    }
  // All ones: the gradients of q and k vanish.
  {
    Tensor q = test::make_input({1, 2, 3, 4}, Fill::Ones, 0), k = test::make_input({1, 2, 7, 4}, Fill::Ones, 0),
           v = test::make_input({1, 2, 7, 4}, Fill::Ones, 0);
    backward(ops::attention(q, k, v), test::make_input({1, 2, 3, 4}, Fill::Random, 64, false));
    CHECK(test::max_abs_err(q.grad(), Tensor::zeros(q.shape(), DType::F64)) < 1e-15);
    CHECK(test::max_abs_err(k.grad(), Tensor::zeros(k.shape(), DType::F64)) < 1e-15);
    CHECK(test::max_abs_err(v.grad(), Tensor::zeros(v.shape(), DType::F64)) > 0.1);
  }
  // Self-attention on one tensor: the three gradients accumulate into one buffer.
  {
    Tensor x = test::make_input({2, 2, 5, 3}, Fill::Random, 65);
    test::gradcheck([](const std::vector<Tensor>& in) { return ops::attention(in[0], in[0], in[0], true); }, {x},
                    "attention(x, x, x) causal");
  }
  // Only v requires a gradient (the kernel skips dS entirely), then only q.
  Tensor q = test::make_input({1, 2, 3, 4}, Fill::Random, 71, false);
  Tensor k = test::make_input({1, 2, 5, 4}, Fill::Random, 72, false);
  Tensor v = test::make_input({1, 2, 5, 4}, Fill::Random, 73);
  test::gradcheck([](const std::vector<Tensor>& in) { return ops::attention(in[0], in[1], in[2]); }, {q, k, v},
                  "attention, v only");
  CHECK_FALSE(q.has_grad());
  CHECK_FALSE(k.has_grad());
  q.set_requires_grad(true);
  v.set_requires_grad(false);
  test::gradcheck([](const std::vector<Tensor>& in) { return ops::attention(in[0], in[1], in[2]); }, {q, k, v},
                  "attention, q only");
}

TEST_CASE("attention: bad shapes and dtypes throw errors naming the op") {
  Tensor q = Tensor::zeros({2, 3, 5, 4}), k = Tensor::zeros({2, 3, 7, 4});
  CHECK_NOTHROW(ops::attention(q, k, k));
  CHECK_THROWS_WITH_AS(ops::attention(q, k, k, true), doctest::Contains("op attention: causal"), Error);
  CHECK_THROWS_WITH_AS(ops::attention(q, Tensor::zeros({2, 3, 7, 5}), k), doctest::Contains("attention: argument 'k'"),
                       Error);
  CHECK_THROWS_WITH_AS(ops::attention(q, k, Tensor::zeros({2, 3, 6, 4})), doctest::Contains("attention: argument 'v'"),
                       Error);
  CHECK_THROWS_WITH_AS(ops::attention(Tensor::zeros({3, 5, 4}), k, k), doctest::Contains("attention: argument 'q'"),
                       Error);
  CHECK_THROWS_WITH_AS(ops::attention(q, Tensor::zeros({2, 3, 0, 4}), Tensor::zeros({2, 3, 0, 4})),
                       doctest::Contains("op attention: no keys"), Error);
  CHECK_THROWS_WITH_AS(ops::attention(q, k.to(DType::F64), k), doctest::Contains("op attention"), Error);
  auto host = std::make_shared<std::vector<float>>(2 * 3 * 5 * 4);
  Tensor on_gpu = Tensor::borrow(host->data(), {2, 3, 5, 4}, DType::F32, Device::cuda(0), host);
#ifndef CLIPCU_WITH_CUDA
  CHECK_THROWS_WITH_AS(ops::attention(on_gpu, k, k), doctest::Contains("op attention: this build has no CUDA backend"), Error);
#else  // inputs on two devices are refused before anything reads them
  CHECK_THROWS_WITH_AS(ops::attention(on_gpu, k, k), doctest::Contains("op attention"), Error);
#endif
}

TEST_CASE("attention kernels: Rowwise and Gemm variants, multi-block, causal, Tq != Tk, aliased gradients") {
  // The op runs AttentionVariant::Auto (Gemm); here both variants run on the kernels directly.
  // Gemm cuts queries into blocks of 128 rows, so some cases have several blocks (and causal
  // blocks that see fewer keys than Tk). Forward against the float64 reference; gradients of
  // the two variants against each other (the rowwise loops are the simple reference, and the
  // op's gradchecks above check Gemm against finite differences).
  const AttnCase cases[] = {{2, 3, 1, 17, 8, false},  {1, 2, 5, 3, 4, false},    {3, 1, 7, 7, 5, true},
                            {1, 2, 130, 130, 16, true}, {1, 1, 300, 45, 8, false}, {2, 1, 129, 129, 3, false},
                            {1, 1, 257, 257, 5, true}};
  test::WorstError worst;
  worst.group = "attention variants";
  for (const AttnCase& c : cases)
    for (DType dt : {DType::F32, DType::F64}) {
      const std::string label = shape_str({c.B, c.H, c.Tq, c.D}) + " x " + shape_str({c.B, c.H, c.Tk, c.D}) +
                                (c.causal ? " causal " : " ") + std::string(dtype_name(dt));
      Tensor q = test::make_input({c.B, c.H, c.Tq, c.D}, Fill::Random, 11, false, dt);
      Tensor k = test::make_input({c.B, c.H, c.Tk, c.D}, Fill::Random, 12, false, dt);
      Tensor v = test::make_input({c.B, c.H, c.Tk, c.D}, Fill::Random, 13, false, dt);
      Tensor dout = test::make_input({c.B, c.H, c.Tq, c.D}, Fill::Random, 14, false, dt);
      const Tensor ref = reference_attention(q, k, v, c.causal);
      std::vector<Tensor> grads[2];
      for (cpu::AttentionVariant variant : {cpu::AttentionVariant::Rowwise, cpu::AttentionVariant::Gemm}) {
        cpu::AttentionParams p;
        p.B = c.B;
        p.H = c.H;
        p.Tq = c.Tq;
        p.Tk = c.Tk;
        p.D = c.D;
        p.causal = c.causal;
        p.variant = variant;
        Tensor out = Tensor::empty(q.shape(), dt), lse = Tensor::empty({c.B, c.H, c.Tq}, dt);
        Tensor dq = Tensor::full(q.shape(), 0.5, dt), dk = Tensor::full(k.shape(), 0.5, dt),
               dv = Tensor::full(v.shape(), 0.5, dt);  // backward accumulates onto what is there
        Tensor self = Tensor::zeros(k.shape(), dt);    // dq, dk, dv all into one buffer (q = k = v)
        auto run = [&](auto tag) {
          using T = decltype(tag);
          cpu::attention_forward<T>(p, q.data<T>(), k.data<T>(), v.data<T>(), out.data<T>(), lse.data<T>());
          cpu::attention_backward<T>(p, q.data<T>(), k.data<T>(), v.data<T>(), out.data<T>(), lse.data<T>(),
                                     dout.data<T>(), dq.data<T>(), dk.data<T>(), dv.data<T>());
          if (c.Tq == c.Tk) {
            Tensor o2 = Tensor::empty(k.shape(), dt), l2 = Tensor::empty({c.B, c.H, c.Tk}, dt);
            cpu::attention_forward<T>(p, k.data<T>(), k.data<T>(), k.data<T>(), o2.data<T>(), l2.data<T>());
            cpu::attention_backward<T>(p, k.data<T>(), k.data<T>(), k.data<T>(), o2.data<T>(), l2.data<T>(),
                                       dout.data<T>(), self.data<T>(), self.data<T>(), self.data<T>());
          }
        };
        if (dt == DType::F32) {
          run(float{});
        } else {
          run(double{});
        }
        const std::string vl = std::string(cpu::attention_variant_name(variant)) + " " + label;
        const double e = test::rel_err(out, ref);
        worst.add(vl + " out", e);
        CHECK_MESSAGE(e <= (dt == DType::F32 ? 1e-6 : 1e-13), vl << ": forward rel err " << e);
        grads[variant == cpu::AttentionVariant::Gemm ? 1 : 0] = {dq, dk, dv, self};
      }
      const char* names[] = {"dq", "dk", "dv", "d(self)"};
      for (size_t g = 0; g < 4; ++g) {
        const double e = test::rel_err(grads[1][g], grads[0][g]);
        worst.add(label + " " + names[g] + " gemm vs rowwise", e);
        CHECK_MESSAGE(e <= (dt == DType::F32 ? 1e-5 : 1e-12), label << " " << names[g] << ": gemm vs rowwise " << e);
      }
    }
}
