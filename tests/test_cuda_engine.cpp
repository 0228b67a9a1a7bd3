// The engine's differentiable ops (engine/ops.h) on CUDA tensors against the same ops on the CPU:
// forward through the op, backward through the autograd tape, in float32 and bf16.
//
// Every case builds random inputs with odd sizes in float64, rounds them to the storage type
// under test (float32 or bf16), and runs the op twice: on the CPU in float64 on the rounded
// values (the reference), and on the GPU in the storage type. Outputs and every input gradient
// are compared by norm-wise relative error: float32 1e-5 forward and 1e-4 gradients (cuBLAS in
// full float32: the default CLIPCU_GEMM=cublas without CLIPCU_TF32), bf16 1e-2. A second
// forward + backward on the same GPU inputs checks that gradients ACCUMULATE (the tape's
// contract): the gradient must become twice the first one. Multi-output ops are contracted with
// fixed random weights (sum_k sum_all(out_k * w_k)); single outputs get a random backward seed.
// Also: an op mixing devices and F64 on CUDA are clear errors; a small ViT CLIP (and the text
// tower alone) forward + backward through the tape on the GPU matches the model on the CPU.
//
// Without a GPU the GPU tests are skipped: doctest skips them, and the last test case exits 77,
// which ctest reports as "Skipped" (as tests/test_cuda_ops.cpp does).
#include <array>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include "tests/support.h"

#ifdef CLIPCU_WITH_CUDA
#include <nlohmann/json.hpp>

#include "engine/autograd.h"
#include "engine/cuda_runtime.h"
#include "engine/device.h"
#include "engine/dtype.h"
#include "engine/models/clip.h"
#include "engine/models/config.h"
#include "engine/ops.h"
#include "engine/rng.h"

using namespace clipcu;
using test::WorstError;

namespace {

constexpr double kF32Fwd = 1e-5;
constexpr double kF32Grad = 1e-4;
constexpr double kBf16 = 1e-2;

const Device kGpu = Device::cuda(0);

// ---------------------------------------------------------------- inputs
// A float64 CPU tensor: normal(0, std), or uniform in [lo, hi).
Tensor randn(const Shape& s, uint64_t seed, double std = 1.0) {
  Rng rng(seed);
  return Tensor::randn(s, rng, 0.0, std, DType::F64);
}
Tensor uniform(const Shape& s, uint64_t seed, double lo, double hi) {
  Rng rng(seed);
  return Tensor::uniform(s, rng, lo, hi, DType::F64);
}
Tensor ints(const std::vector<int64_t>& v, DType dt = DType::I64) { return Tensor::from_ints(v, {int64_t(v.size())}, dt); }

// The value a float64 tensor holds once stored as dt, back in float64 (the reference's input).
Tensor rounded(const Tensor& t, DType dt) { return t.to(dt).to(DType::F64); }

struct Arg {
  Tensor value;  // float64 (floating inputs) or an index tensor, on the CPU
  bool grad;     // requires a gradient
};
Arg in(Tensor t, bool grad = true) { return Arg{std::move(t), grad}; }

using OpFn = std::function<std::vector<Tensor>(const std::vector<Tensor>&)>;

// Worst errors of one op group, per storage type.
struct Worst {
  WorstError f32_fwd, f32_grad, bf16_fwd, bf16_grad;
  explicit Worst(const std::string& g)
      : f32_fwd{g + " f32 forward (tol 1e-5)", 0.0, {}},
        f32_grad{g + " f32 gradients (tol 1e-4)", 0.0, {}},
        bf16_fwd{g + " bf16 forward (tol 1e-2)", 0.0, {}},
        bf16_grad{g + " bf16 gradients (tol 1e-2)", 0.0, {}} {}
};

void expect_close(const Tensor& got, const Tensor& ref, double tol, const std::string& label, WorstError& w) {
  REQUIRE_MESSAGE(got.defined(), label << ": undefined");
  REQUIRE_MESSAGE(got.shape() == ref.shape(), label << ": shape " << shape_str(got.shape()) << " vs "
                                                    << shape_str(ref.shape()));
  const double e = test::rel_err(got, ref);
  w.add(label, e);
  CHECK_MESSAGE(e <= tol, label << ": rel err " << e << " > tol " << tol);
}

// One scalar to differentiate: a single output with a seed (the tape's own seeding), or the
// contraction sum_k sum_all(out_k * w_k) of several outputs.
struct Seeds {
  std::vector<Tensor> w;  // float64, one per output
};

void run_backward(const std::vector<Tensor>& outs, const Seeds& seeds, DType dt, Device d) {
  auto seed_of = [&](size_t k) {
    return d.is_cpu() ? rounded(seeds.w[k], dt) : seeds.w[k].to(dt).to(d);
  };
  if (outs.size() == 1) {
    backward(outs[0], seed_of(0));
    return;
  }
  Tensor total;
  for (size_t k = 0; k < outs.size(); ++k) {
    if (!outs[k].requires_grad()) continue;
    Tensor term = ops::sum_all(ops::mul(outs[k], seed_of(k)));
    total = total.defined() ? ops::add(total, term) : term;
  }
  REQUIRE(total.defined());
  backward(total);
}

// Runs `f` on the CPU (float64 on the values rounded to dt) and on the GPU (dt), compares the
// outputs and the gradients of every input that requires one, then checks accumulation.
void check_op(const std::string& label_in, const OpFn& f, const std::vector<Arg>& args, DType dt, uint64_t seed,
              Worst& worst) {
  const bool f32 = dt == DType::F32;
  const std::string label = label_in + (f32 ? " f32" : " bf16");
  INFO(label);
  const double tol_fwd = f32 ? kF32Fwd : kBf16, tol_grad = f32 ? kF32Grad : kBf16;
  WorstError& wf = f32 ? worst.f32_fwd : worst.bf16_fwd;
  WorstError& wg = f32 ? worst.f32_grad : worst.bf16_grad;
  tape().clear();

  std::vector<Tensor> ref_in, gpu_in;
  for (const Arg& a : args) {
    if (is_floating(a.value.dtype())) {
      Tensor r = rounded(a.value, dt);
      Tensor g = a.value.to(dt).to(kGpu);
      if (a.grad) {
        r.set_requires_grad(true);
        g.set_requires_grad(true);
      }
      ref_in.push_back(r);
      gpu_in.push_back(g);
    } else {
      ref_in.push_back(a.value);
      gpu_in.push_back(a.value.to(kGpu));
    }
  }

  // reference
  std::vector<Tensor> ref_out = f(ref_in);
  Seeds seeds;
  for (size_t k = 0; k < ref_out.size(); ++k) seeds.w.push_back(randn(ref_out[k].shape(), seed * 7919 + k));
  bool any_grad = false;
  for (const Arg& a : args) any_grad = any_grad || a.grad;
  if (any_grad) run_backward(ref_out, seeds, dt, Device::cpu());

  // GPU
  std::vector<Tensor> gpu_out = f(gpu_in);
  REQUIRE(gpu_out.size() == ref_out.size());
  for (size_t k = 0; k < gpu_out.size(); ++k) {
    CHECK_MESSAGE(gpu_out[k].device() == kGpu, label << ": output " << k << " is on " << gpu_out[k].device().str());
    CHECK_MESSAGE(gpu_out[k].dtype() == dt, label << ": output " << k << " is " << gpu_out[k].str());
    expect_close(gpu_out[k], ref_out[k], tol_fwd, label + " output " + std::to_string(k), wf);
  }
  if (!any_grad) return;
  run_backward(gpu_out, seeds, dt, kGpu);
  std::vector<Tensor> first(args.size());
  for (size_t i = 0; i < args.size(); ++i) {
    if (!args[i].grad) continue;
    const std::string gl = label + " grad of input " + std::to_string(i);
    REQUIRE_MESSAGE(ref_in[i].has_grad(), gl << ": the reference has no gradient");
    REQUIRE_MESSAGE(gpu_in[i].has_grad(), gl << ": no gradient on the GPU");
    CHECK_MESSAGE(gpu_in[i].grad().device() == kGpu, gl);
    CHECK_MESSAGE(gpu_in[i].grad().dtype() == dt, gl);
    expect_close(gpu_in[i].grad(), ref_in[i].grad(), tol_grad, gl, wg);
    first[i] = gpu_in[i].grad().to(Device::cpu()).to(DType::F64);
  }

  // accumulation: a second forward + backward adds the same gradient again
  std::vector<Tensor> again = f(gpu_in);
  run_backward(again, seeds, dt, kGpu);
  for (size_t i = 0; i < args.size(); ++i) {
    if (!args[i].grad) continue;
    const Tensor twice = ops::scale(first[i], 2.0);
    expect_close(gpu_in[i].grad(), twice, f32 ? 1e-6 : kBf16,
                 label + " grad of input " + std::to_string(i) + " accumulated twice", wg);
  }
  tape().clear();
}

void check_both(const std::string& label, const OpFn& f, const std::vector<Arg>& args, uint64_t seed, Worst& worst) {
  check_op(label, f, args, DType::F32, seed, worst);
  check_op(label, f, args, DType::BF16, seed, worst);
}

OpFn one(std::function<Tensor(const std::vector<Tensor>&)> g) {
  return [g](const std::vector<Tensor>& x) { return std::vector<Tensor>{g(x)}; };
}

}  // namespace

// ================================================================ elementwise
CLIPCU_GPU_TEST("cuda engine: add, mul (suffix broadcast), scale, activations, exp match the CPU") {
  Worst w("elementwise");
  uint64_t s = 100;
  const Shape a3 = {3, 5, 7};
  for (const Shape& bs : {Shape{3, 5, 7}, Shape{5, 7}, Shape{7}}) {
    const std::string sh = " a " + shape_str(a3) + " b " + shape_str(bs);
    check_both("add" + sh, one([](const auto& x) { return ops::add(x[0], x[1]); }), {in(randn(a3, s)), in(randn(bs, s + 1))},
               s + 2, w);
    check_both("mul" + sh, one([](const auto& x) { return ops::mul(x[0], x[1]); }), {in(randn(a3, s + 3)), in(randn(bs, s + 4))},
               s + 5, w);
    s += 10;
  }
  // many outer rows (several chunks in the deterministic column sums), and one side without a gradient
  check_both("add a [1000, 3] b [3]", one([](const auto& x) { return ops::add(x[0], x[1]); }),
             {in(randn({1000, 3}, 201)), in(randn({3}, 202))}, 203, w);
  check_both("mul a [517, 13] b [13]", one([](const auto& x) { return ops::mul(x[0], x[1]); }),
             {in(randn({517, 13}, 204)), in(randn({13}, 205))}, 206, w);
  check_both("mul a [4, 9] b [9], b without gradient", one([](const auto& x) { return ops::mul(x[0], x[1]); }),
             {in(randn({4, 9}, 207)), in(randn({9}, 208), false)}, 209, w);
  check_both("scale -1.7 [5, 13]", one([](const auto& x) { return ops::scale(x[0], -1.7); }), {in(randn({5, 13}, 210))},
             211, w);
  const Shape xs = {7, 33};
  check_both("relu", one([](const auto& x) { return ops::relu(x[0]); }), {in(randn(xs, 212))}, 213, w);
  check_both("quick_gelu", one([](const auto& x) { return ops::quick_gelu(x[0]); }), {in(randn(xs, 214, 2.0))}, 215, w);
  check_both("gelu", one([](const auto& x) { return ops::gelu(x[0]); }), {in(randn(xs, 216, 2.0))}, 217, w);
  check_both("gelu_tanh", one([](const auto& x) { return ops::gelu(x[0], true); }), {in(randn(xs, 218, 2.0))}, 219, w);
  check_both("gelu [1]", one([](const auto& x) { return ops::gelu(x[0]); }), {in(randn({1}, 220))}, 221, w);
  check_both("exp", one([](const auto& x) { return ops::exp(x[0]); }), {in(uniform({11, 3, 5}, 222, -3.0, 3.0))}, 223, w);
}

// ================================================================ shapes
CLIPCU_GPU_TEST("cuda engine: reshape, permute, slice, concat, gather_rows, mean, sum_all, head layouts match the CPU") {
  Worst w("shape");
  check_both("reshape [3, 10] -> [5, -1]", one([](const auto& x) { return ops::reshape(x[0], {5, -1}); }),
             {in(randn({3, 10}, 300))}, 301, w);
  struct P {
    Shape shape;
    std::vector<int> dims;
  };
  uint64_t s = 310;
  for (const P& p : {P{{2, 3, 5, 7}, {0, 2, 1, 3}}, P{{2, 3, 5, 7}, {3, 1, 0, 2}}, P{{7}, {0}}, P{{5, 3}, {1, 0}},
                     P{{2, 3, 1, 5, 2, 3}, {5, 0, 3, 1, 4, 2}}}) {
    std::string d;
    for (int k : p.dims) d += std::to_string(k);
    const std::vector<int> dims = p.dims;
    check_both("permute " + shape_str(p.shape) + " by " + d,
               one([dims](const auto& x) { return ops::permute(x[0], dims); }), {in(randn(p.shape, s))}, s + 1, w);
    s += 2;
  }
  check_both("slice [4, 9, 5] dim 1 [2, 7)", one([](const auto& x) { return ops::slice(x[0], 1, 2, 7); }),
             {in(randn({4, 9, 5}, 320))}, 321, w);
  check_both("slice [4, 9, 5] dim 0 [3, 4)", one([](const auto& x) { return ops::slice(x[0], 0, 3, 4); }),
             {in(randn({4, 9, 5}, 322))}, 323, w);
  check_both("slice [4, 9, 5] dim -1 [0, 5)", one([](const auto& x) { return ops::slice(x[0], -1, 0, 5); }),
             {in(randn({4, 9, 5}, 324))}, 325, w);
  check_both("concat dim 1 of [2, 3, 5] [2, 1, 5] [2, 4, 5]",
             one([](const auto& x) { return ops::concat({x[0], x[1], x[2]}, 1); }),
             {in(randn({2, 3, 5}, 330)), in(randn({2, 1, 5}, 331), false), in(randn({2, 4, 5}, 332))}, 333, w);
  check_both("concat dim 0 of [1, 7] [3, 7]", one([](const auto& x) { return ops::concat({x[0], x[1]}, 0); }),
             {in(randn({1, 7}, 334)), in(randn({3, 7}, 335))}, 336, w);
  check_both("gather_rows [3, 7, 5] I64", one([](const auto& x) { return ops::gather_rows(x[0], x[1]); }),
             {in(randn({3, 7, 5}, 340)), in(ints({6, 0, 3}), false)}, 341, w);
  check_both("gather_rows [4, 2, 9] I32", one([](const auto& x) { return ops::gather_rows(x[0], x[1]); }),
             {in(randn({4, 2, 9}, 342)), in(ints({1, 1, 0, 1}, DType::I32), false)}, 343, w);
  check_both("mean [4, 9, 5] dim 1", one([](const auto& x) { return ops::mean(x[0], 1); }), {in(randn({4, 9, 5}, 350))},
             351, w);
  check_both("mean [4, 9, 5] dim 0 keepdim", one([](const auto& x) { return ops::mean(x[0], 0, true); }),
             {in(randn({4, 9, 5}, 352))}, 353, w);
  check_both("mean [4, 9, 5] dim -1", one([](const auto& x) { return ops::mean(x[0], -1); }), {in(randn({4, 9, 5}, 354))},
             355, w);
  // positive inputs: the sum does not cancel, so its relative error means something
  check_both("sum_all [37, 129]", one([](const auto& x) { return ops::sum_all(x[0]); }),
             {in(uniform({37, 129}, 360, 0.0, 1.0))}, 361, w);
  check_both("sum_all [300, 257]", one([](const auto& x) { return ops::sum_all(x[0]); }),
             {in(uniform({300, 257}, 362, 0.0, 1.0))}, 363, w);
  check_both("sum_all [1]", one([](const auto& x) { return ops::sum_all(x[0]); }), {in(uniform({1}, 364, 0.5, 1.0))},
             365, w);
  check_both("split_qkv_heads [2, 5, 36] H 3",
             [](const std::vector<Tensor>& x) { return ops::split_qkv_heads(x[0], 3); }, {in(randn({2, 5, 36}, 370))},
             371, w);
  check_both("merge_heads [2, 3, 5, 4]", one([](const auto& x) { return ops::merge_heads(x[0]); }),
             {in(randn({2, 3, 5, 4}, 372))}, 373, w);
}

// ================================================================ dense
CLIPCU_GPU_TEST("cuda engine: matmul (four transpose forms) and linear (with and without bias) match the CPU") {
  Worst w("dense");
  uint64_t s = 400;
  for (auto [M, N, K] : {std::array<int64_t, 3>{7, 13, 5}, {33, 17, 65}, {1, 1, 1}})
    for (bool ta : {false, true})
      for (bool tb : {false, true}) {
        const Shape as = ta ? Shape{K, M} : Shape{M, K}, bs = tb ? Shape{N, K} : Shape{K, N};
        const std::string label = std::string("matmul ") + (ta ? "T" : "N") + (tb ? "T" : "N") + " M " +
                                  std::to_string(M) + " N " + std::to_string(N) + " K " + std::to_string(K);
        check_both(label, one([ta, tb](const auto& x) { return ops::matmul(x[0], x[1], ta, tb); }),
                   {in(randn(as, s)), in(randn(bs, s + 1))}, s + 2, w);
        s += 3;
      }
  check_both("linear x [3, 5, 17] W [11, 17] b [11]", one([](const auto& x) { return ops::linear(x[0], x[1], x[2]); }),
             {in(randn({3, 5, 17}, 420)), in(randn({11, 17}, 421)), in(randn({11}, 422))}, 423, w);
  check_both("linear x [9, 24] W [40, 24] b [40] (aligned bias)",
             one([](const auto& x) { return ops::linear(x[0], x[1], x[2]); }),
             {in(randn({9, 24}, 424)), in(randn({40, 24}, 425)), in(randn({40}, 426))}, 427, w);
  check_both("linear x [4, 7] W [3, 7] no bias", one([](const auto& x) { return ops::linear(x[0], x[1]); }),
             {in(randn({4, 7}, 428)), in(randn({3, 7}, 429))}, 430, w);
  check_both("linear x [6, 8] W [5, 8] b [5], x without gradient",
             one([](const auto& x) { return ops::linear(x[0], x[1], x[2]); }),
             {in(randn({6, 8}, 431), false), in(randn({5, 8}, 432)), in(randn({5}, 433))}, 434, w);
}

// ================================================================ normalization, attention
CLIPCU_GPU_TEST("cuda engine: layer_norm, l2_normalize and attention match the CPU") {
  Worst w("norm+attention");
  check_both("layer_norm [3, 7, 37]", one([](const auto& x) { return ops::layer_norm(x[0], x[1], x[2]); }),
             {in(randn({3, 7, 37}, 500)), in(randn({37}, 501)), in(randn({37}, 502))}, 503, w);
  check_both("layer_norm [5, 64] (warp path)", one([](const auto& x) { return ops::layer_norm(x[0], x[1], x[2]); }),
             {in(randn({5, 64}, 504, 3.0)), in(randn({64}, 505)), in(randn({64}, 506))}, 507, w);
  check_both("layer_norm [9, 768]", one([](const auto& x) { return ops::layer_norm(x[0], x[1], x[2]); }),
             {in(randn({9, 768}, 508)), in(randn({768}, 509)), in(randn({768}, 510))}, 511, w);
  check_both("layer_norm [4, 13] no affine", one([](const auto& x) { return ops::layer_norm(x[0], Tensor(), Tensor()); }),
             {in(randn({4, 13}, 512))}, 513, w);
  // every variant through CLIPCU_LAYERNORM (the engine reads it at each call)
  for (const char* variant : {"pipelined", "simple"}) {
    setenv("CLIPCU_LAYERNORM", variant, 1);
    check_both(std::string("layer_norm [33, 768] CLIPCU_LAYERNORM=") + variant,
               one([](const auto& x) { return ops::layer_norm(x[0], x[1], x[2]); }),
               {in(randn({33, 768}, 514)), in(randn({768}, 515)), in(randn({768}, 516))}, 517, w);
  }
  unsetenv("CLIPCU_LAYERNORM");
  check_both("l2_normalize [7, 33]", one([](const auto& x) { return ops::l2_normalize(x[0]); }),
             {in(randn({7, 33}, 520))}, 521, w);
  check_both("l2_normalize [3, 300]", one([](const auto& x) { return ops::l2_normalize(x[0]); }),
             {in(randn({3, 300}, 522))}, 523, w);
  struct A {
    int64_t B, H, Tq, Tk, D;
    bool causal;
  };
  uint64_t s = 530;
  for (const A& a : {A{2, 3, 7, 11, 16, false}, A{1, 2, 9, 9, 8, true}, A{2, 1, 5, 5, 64, false},
                     A{1, 2, 13, 13, 64, true}, A{1, 1, 1, 6, 20, false}}) {
    const bool causal = a.causal;
    const std::string label = "attention B " + std::to_string(a.B) + " H " + std::to_string(a.H) + " Tq " +
                              std::to_string(a.Tq) + " Tk " + std::to_string(a.Tk) + " D " + std::to_string(a.D) +
                              (causal ? " causal" : "");
    check_both(label, one([causal](const auto& x) { return ops::attention(x[0], x[1], x[2], causal); }),
               {in(randn({a.B, a.H, a.Tq, a.D}, s)), in(randn({a.B, a.H, a.Tk, a.D}, s + 1)),
                in(randn({a.B, a.H, a.Tk, a.D}, s + 2))},
               s + 3, w);
    s += 4;
  }
  // only k needs a gradient (the kernels skip dK and dV together: the op supplies a scratch dV)
  check_both("attention, gradient for k only", one([](const auto& x) { return ops::attention(x[0], x[1], x[2]); }),
             {in(randn({1, 2, 5, 8}, 560), false), in(randn({1, 2, 6, 8}, 561)), in(randn({1, 2, 6, 8}, 562), false)},
             563, w);
}

// ================================================================ embedding, losses
CLIPCU_GPU_TEST("cuda engine: embedding, softmax_cross_entropy and clip_loss match the CPU") {
  Worst w("embedding+losses");
  check_both("embedding table [11, 6] ids [3, 4] I64 (repeated ids)",
             one([](const auto& x) { return ops::embedding(x[0], x[1]); }),
             {in(randn({11, 6}, 600)), in(Tensor::from_ints({3, 1, 3, 10, 0, 3, 1, 7, 7, 7, 2, 10}, {3, 4}), false)}, 601,
             w);
  check_both("embedding table [5, 33] ids [7] I32", one([](const auto& x) { return ops::embedding(x[0], x[1]); }),
             {in(randn({5, 33}, 602)), in(ints({4, 4, 0, 1, 4, 2, 0}, DType::I32), false)}, 603, w);
  check_both("softmax_cross_entropy [7, 13] I64", one([](const auto& x) { return ops::softmax_cross_entropy(x[0], x[1]); }),
             {in(randn({7, 13}, 610, 2.0)), in(ints({0, 12, 5, 5, 1, 7, 3}), false)}, 611, w);
  check_both("softmax_cross_entropy [3, 300] I32",
             one([](const auto& x) { return ops::softmax_cross_entropy(x[0], x[1]); }),
             {in(randn({3, 300}, 612, 3.0)), in(ints({299, 0, 17}, DType::I32), false)}, 613, w);
  uint64_t s = 620;
  for (auto [B, E] : {std::array<int64_t, 2>{5, 17}, {1, 8}, {33, 64}}) {
    Tensor img = randn({B, E}, s);
    for (double ls : {0.0, std::log(1 / 0.07)}) {
      // At scale 1 the logits are all near 0 and so is the log-scale gradient (a difference of two
      // near-zero means): text = image + noise makes matching pairs score higher. At scale 1/0.07
      // that would make the loss itself a cancellation (lse - target ~ 0.01 from logits ~ 14,
      // beyond float32's 1e-5 relative), so the texts are independent there: loss and gradients O(1).
      Tensor txt = ls == 0.0 ? ops::add(img, randn({B, E}, s + 1, 0.7)) : randn({B, E}, s + 1);
      const std::string label = "clip_loss B " + std::to_string(B) + " E " + std::to_string(E) + " log_scale " +
                                std::to_string(ls);
      check_both(label, one([](const auto& x) { return ops::clip_loss(x[0], x[1], x[2]).loss; }),
                 {in(img), in(txt), in(Tensor::full({}, ls, DType::F64))}, s + 2, w);
      // logits_per_image (no gradient) against the CPU
      check_op(label + " logits", one([](const auto& x) { return ops::clip_loss(x[0], x[1], x[2]).logits_per_image; }),
               {in(img, false), in(txt, false), in(Tensor::full({1}, ls, DType::F64), false)}, DType::F32, s + 3, w);
      s += 4;
    }
  }
}

// ================================================================ errors
CLIPCU_GPU_TEST("cuda engine: mixed devices and F64 on CUDA are clear errors") {
  const Tensor cpu_a = Tensor::ones({2, 3}), gpu_a = Tensor::ones({2, 3}, DType::F32, kGpu);
  const char* same = "all inputs of an op must be on one device";
  CHECK_THROWS_WITH_AS(ops::add(cpu_a, gpu_a), doctest::Contains(same), Error);
  CHECK_THROWS_WITH_AS(ops::add(gpu_a, cpu_a), doctest::Contains("op add: argument 'b' is on cpu but 'a' is on cuda:0"),
                       Error);
  CHECK_THROWS_WITH_AS(ops::matmul(gpu_a, cpu_a, false, true), doctest::Contains(same), Error);
  CHECK_THROWS_WITH_AS(ops::linear(gpu_a, Tensor::ones({4, 3})), doctest::Contains(same), Error);
  CHECK_THROWS_WITH_AS(ops::layer_norm(gpu_a, Tensor::ones({3}), Tensor()), doctest::Contains(same), Error);
  CHECK_THROWS_WITH_AS(ops::concat({gpu_a, cpu_a}, 0), doctest::Contains("one device"), Error);
  CHECK_THROWS_WITH_AS(ops::gather_rows(Tensor::ones({2, 3, 4}, DType::F32, kGpu), ints({0, 1})),
                       doctest::Contains(same), Error);
  CHECK_THROWS_WITH_AS(ops::embedding(Tensor::ones({5, 3}, DType::F32, kGpu), ints({0, 1})), doctest::Contains(same),
                       Error);
  CHECK_THROWS_WITH_AS(ops::clip_loss(gpu_a, gpu_a, Tensor::zeros({1})), doctest::Contains(same), Error);

  const Tensor f64 = Tensor::ones({2, 3}, DType::F64, kGpu);
  const char* no_f64 = "F64 runs on the CPU only";
  CHECK_THROWS_WITH_AS(ops::relu(f64), doctest::Contains(no_f64), Error);
  CHECK_THROWS_WITH_AS(ops::scale(f64, 2.0), doctest::Contains("op scale"), Error);
  CHECK_THROWS_WITH_AS(ops::matmul(f64, f64, false, true), doctest::Contains(no_f64), Error);
  CHECK_THROWS_WITH_AS(ops::l2_normalize(f64), doctest::Contains(no_f64), Error);
  // mixed float types stay an error on the GPU too
  CHECK_THROWS_AS(ops::add(gpu_a, gpu_a.to(DType::BF16)), Error);
  // bad indices are caught on the host before any kernel runs
  CHECK_THROWS_WITH_AS(ops::embedding(Tensor::ones({5, 3}, DType::F32, kGpu), ints({0, 5}).to(kGpu)),
                       doctest::Contains("id 5"), Error);
  CHECK_THROWS_WITH_AS(ops::gather_rows(Tensor::ones({2, 3, 4}, DType::F32, kGpu), ints({0, 3}).to(kGpu)),
                       doctest::Contains("index 3"), Error);
  CHECK_THROWS_AS(ops::softmax_cross_entropy(gpu_a, ints({0, 3}).to(kGpu)), Error);
  // attention's head dim limit of the CUDA kernels
  const Tensor big = Tensor::ones({1, 1, 2, 200}, DType::F32, kGpu);
  CHECK_THROWS_WITH_AS(ops::attention(big, big, big), doctest::Contains("head dim D 200"), Error);
}

CLIPCU_GPU_TEST("cuda engine: Tensor conversions and fills on the GPU") {
  const Tensor h = randn({3, 257}, 700).to(DType::F32);
  const Tensor g = h.to(kGpu);
  const Tensor b = g.to(DType::BF16);  // a kernel on the device
  CHECK(b.device() == kGpu);
  CHECK(b.dtype() == DType::BF16);
  CHECK(test::rel_err(b, h.to(DType::BF16)) == 0.0);  // the same rounding (nearest even) as the host
  CHECK(test::rel_err(b.to(DType::F32), h.to(DType::BF16).to(DType::F32)) == 0.0);
  Tensor f = Tensor::empty({1000}, DType::BF16, kGpu);
  f.fill(1.5);
  CHECK(test::rel_err(f, Tensor::full({1000}, 1.5)) == 0.0);
  Tensor z = Tensor::full({5}, -2.25, DType::F32, kGpu);
  CHECK(test::rel_err(z, Tensor::full({5}, -2.25)) == 0.0);
}

// ================================================================ a small model through the tape
namespace {

models::ModelConfig tiny_vit_config() {
  return models::parse_config(nlohmann::json::parse(R"({
    "embed_dim": 24, "quick_gelu": false,
    "vision_cfg": {"image_size": 15, "layers": 2, "width": 48, "patch_size": 5, "head_width": 16,
                   "mlp_ratio": 2.5},
    "text_cfg": {"context_length": 7, "vocab_size": 50, "width": 40, "heads": 5, "layers": 2}})"),
                              "tiny_vit_config");
}

// Every parameter gradient of the GPU model against the float64 CPU model: norm-wise over all
// gradients together <= tol, and per tensor ||g - ref|| <= tol (||ref|| + 1e-2 ||all ref||) (a
// tensor whose exact gradient is ~0, such as the key biases, is held to the global scale).
// Parameters whose name starts with `skip` (when not empty) are left out.
void compare_grads(models::CLIP& gpu, models::CLIP& ref, double tol, const std::string& what,
                   const std::string& skip = "") {
  auto keep = [&](const nn::NamedTensorList& all) {
    nn::NamedTensorList out;
    for (const auto& p : all)
      if (skip.empty() || p.first.rfind(skip, 0) != 0) out.push_back(p);
    return out;
  };
  const auto pg = keep(gpu.named_parameters()), pr = keep(ref.named_parameters());
  REQUIRE(pg.size() == pr.size());
  REQUIRE(!pg.empty());
  double num = 0, den = 0;
  std::vector<std::pair<double, double>> per(pg.size());  // (||g - ref||^2, ||ref||^2)
  for (size_t i = 0; i < pg.size(); ++i) {
    REQUIRE(pg[i].first == pr[i].first);
    REQUIRE_MESSAGE(pr[i].second.has_grad(), pr[i].first << ": no reference gradient");
    REQUIRE_MESSAGE(pg[i].second.has_grad(), pg[i].first << ": no gradient on the GPU");
    CHECK(pg[i].second.grad().device() == kGpu);
    const std::vector<double> a = pg[i].second.grad().to_f64_vector(), b = pr[i].second.grad().to_f64_vector();
    REQUIRE(a.size() == b.size());
    for (size_t k = 0; k < a.size(); ++k) {
      per[i].first += (a[k] - b[k]) * (a[k] - b[k]);
      per[i].second += b[k] * b[k];
    }
    num += per[i].first;
    den += per[i].second;
  }
  const double global = std::sqrt(num / den);
  MESSAGE(what << ": all " << pg.size() << " parameter gradients, norm-wise rel err " << global << " (tol " << tol << ")");
  CHECK_MESSAGE(global <= tol, what << ": gradients rel err " << global);
  double worst = 0;
  std::string worst_name;
  for (size_t i = 0; i < pg.size(); ++i) {
    const double e = std::sqrt(per[i].first) / (std::sqrt(per[i].second) + 1e-2 * std::sqrt(den));
    if (e > worst) worst = e, worst_name = pg[i].first;
    CHECK_MESSAGE(e <= tol, what << ": " << pg[i].first << " gradient rel err " << e);
  }
  MESSAGE(what << ": worst parameter " << worst_name << " " << worst);
}

}  // namespace

CLIPCU_GPU_TEST("cuda engine: text tower + clip_loss forward and backward through the tape match the CPU") {
  // no convolution on this path: the text transformer (embedding, causal attention, layer norm,
  // linear, gelu, gather_rows) and the fused loss
  const models::ModelConfig cfg = tiny_vit_config();
  auto ref = models::make_clip(cfg, 11), gpu = models::make_clip(cfg, 11);
  ref->to(DType::F64);
  gpu->to(kGpu);
  const Tensor tokens = test::clip_tokens(4, 7, 50, 3);
  Tensor img = randn({4, 24}, 12);
  Tensor img_ref = img.clone().set_requires_grad(true), img_gpu = img.to(DType::F32).to(kGpu).set_requires_grad(true);
  tape().clear();
  const Tensor lr = ref->loss(img_ref, ref->encode_text(tokens)).loss;
  backward(lr);
  const Tensor lg = gpu->loss(img_gpu, gpu->encode_text(tokens.to(kGpu))).loss;
  CHECK(lg.device() == kGpu);
  backward(lg);
  test::check_close(lg, lr, kF32Fwd, "text tower + loss: loss");
  test::check_close(img_gpu.grad(), img_ref.grad(), kF32Grad, "text tower + loss: image feature gradient");
  // the vision tower took no part: compare the text tower's and the scale's parameters only
  compare_grads(*gpu, *ref, kF32Grad, "text tower + loss f32 on the GPU vs f64 on the CPU", "visual.");
  tape().clear();
}

CLIPCU_GPU_TEST("cuda engine: a small ViT CLIP forward and backward through the tape match the CPU") {
  // Needs every op of the towers on the GPU, conv2d (the patch embedding) included.
  const models::ModelConfig cfg = tiny_vit_config();
  auto ref = models::make_clip(cfg, 5), gpu = models::make_clip(cfg, 5);
  ref->to(DType::F64);
  gpu->to(kGpu);
  const Tensor images = randn({3, 3, 15, 15}, 6);
  const Tensor tokens = test::clip_tokens(3, 7, 50, 7);
  tape().clear();
  const Tensor fi_r = ref->encode_image(images), ft_r = ref->encode_text(tokens);
  const Tensor loss_r = ref->loss(fi_r, ft_r).loss;
  backward(loss_r);
  const Tensor fi_g = gpu->encode_image(images.to(DType::F32).to(kGpu)), ft_g = gpu->encode_text(tokens.to(kGpu));
  CHECK(fi_g.device() == kGpu);
  test::check_close(fi_g, fi_r, 1e-5, "ViT CLIP: image features");
  test::check_close(ft_g, ft_r, 1e-5, "ViT CLIP: text features");
  const Tensor loss_g = gpu->loss(fi_g, ft_g).loss;
  test::check_close(loss_g, loss_r, 1e-5, "ViT CLIP: loss");
  backward(loss_g);
  compare_grads(*gpu, *ref, 1e-4, "ViT CLIP f32 on the GPU vs f64 on the CPU");
  tape().clear();
}

#endif  // CLIPCU_WITH_CUDA

// Last in the file: without a GPU every CLIPCU_GPU_TEST above was skipped; exit 77 = Skipped.
TEST_CASE("cuda engine: a GPU answers (otherwise the GPU tests are SKIPPED)") {
  clipcu::test::exit_77_without_gpu("test_cuda_engine");
  CHECK(clipcu::cuda_available());
}
