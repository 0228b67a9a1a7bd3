// CPU reference ops on CLIP-tiny shapes: every gemm variant on the linear layers' shapes (forward
// and the two gradient forms), layer norm, attention forward + backward (both variants),
// quick_gelu (baseline and AVX2 loops), permutes, and the attention block's head layout as the
// slice + reshape + permute composition against the fused split_qkv_heads / merge_heads ops.
//
// CLIP-tiny here: width 96, 2 heads of 48, image tokens 65 (32 px, patch 4, + class token), text
// context 16, MLP 384, batch 128, so the linear layers see M = 128 * 65 = 8320 rows.
// Each benchmark runs for about 0.1 s, and the naive oracle only on a 520-row slice, so the
// default run stays short. Times are wall-clock (OpenMP / OpenBLAS threads work in parallel);
// GFLOP/s counts 2 * M * N * K per gemm. On a shared machine compare the CPU column with
// OMP_NUM_THREADS=1.
//   build/<dir>/bench/bench_cpu_ops [--benchmark_filter=gemm]
#include <benchmark/benchmark.h>

#include <cmath>
#include <vector>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "engine/rng.h"
#include "kernels/cpu/activation.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/layernorm.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/shape.h"

using namespace clipcu;

namespace {

constexpr double kMinTime = 0.1;

std::vector<float> zeros(int64_t n) { return std::vector<float>(static_cast<size_t>(n)); }

std::vector<float> random_vector(int64_t n, uint64_t seed) {
  Rng rng(seed);
  std::vector<float> v = zeros(n);
  for (float& x : v) x = float(rng.normal());
  return v;
}

// args: variant, M, N, K, form (0: y = x W^T forward, 1: dx = dy W, 2: dW = dy^T x).
void BM_gemm(benchmark::State& state) {
  const auto variant = cpu::GemmVariant(state.range(0));
  const int64_t M = state.range(1), N = state.range(2), K = state.range(3);
  const int form = int(state.range(4));
  if (!cpu::gemm_variant_available(variant)) {
    state.SkipWithError("variant not built");
    return;
  }
  // The linear layer x [M, K], W [N, K], dy [M, N] in its three products.
  std::vector<float> x = random_vector(M * K, 1), w = random_vector(N * K, 2), dy = random_vector(M * N, 3);
  std::vector<float> out = zeros(std::max({M * N, M * K, N * K}));
  for (auto _ : state) {
    switch (form) {
      case 0: cpu::gemm<float>(false, true, M, N, K, 1.f, x.data(), w.data(), 0.f, out.data(), variant); break;
      case 1: cpu::gemm<float>(false, false, M, K, N, 1.f, dy.data(), w.data(), 1.f, out.data(), variant); break;
      default: cpu::gemm<float>(true, false, N, K, M, 1.f, dy.data(), x.data(), 1.f, out.data(), variant); break;
    }
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  static const char* forms[] = {"y=xW^T", "dx=dyW", "dW=dy^Tx"};
  state.SetLabel(std::string(cpu::gemm_variant_name(variant)) + " " + forms[form]);
  state.counters["GFLOP/s"] = benchmark::Counter(2.0 * double(M) * double(N) * double(K) * 1e-9,
                                                 benchmark::Counter::kIsIterationInvariantRate);
}

void gemm_args(benchmark::internal::Benchmark* b) {
  struct Shape {
    int64_t N, K;
  };
  // qkv projection, attention output projection, MLP up (c_fc), MLP down (c_proj).
  const Shape shapes[] = {{288, 96}, {96, 96}, {384, 96}, {96, 384}};
  for (const Shape& s : shapes) {
    for (int form = 0; form < 3; ++form) {
      for (auto v : {cpu::GemmVariant::Blocked, cpu::GemmVariant::OpenBLAS})
        b->Args({int64_t(v), 8320, s.N, s.K, form});
    }
    b->Args({int64_t(cpu::GemmVariant::Naive), 520, s.N, s.K, 0});
    b->Args({int64_t(cpu::GemmVariant::Blocked), 520, s.N, s.K, 0});
  }
}
BENCHMARK(BM_gemm)->Apply(gemm_args)->ArgNames({"variant", "M", "N", "K", "form"})->MinTime(kMinTime)
    ->UseRealTime()->Unit(benchmark::kMicrosecond);

// args: N rows, C channels, backward (0/1).
void BM_layernorm(benchmark::State& state) {
  const int64_t N = state.range(0), C = state.range(1);
  const bool bwd = state.range(2) != 0;
  std::vector<float> x = random_vector(N * C, 4), w = random_vector(C, 5), b = random_vector(C, 6),
                     dy = random_vector(N * C, 7);
  std::vector<float> y = zeros(N * C), mean = zeros(N), rstd = zeros(N), dx = zeros(N * C), dw = zeros(C),
                     db = zeros(C);
  cpu::layernorm_forward<float>(N, C, 1e-5, x.data(), w.data(), b.data(), y.data(), mean.data(), rstd.data());
  for (auto _ : state) {
    if (bwd) {
      cpu::layernorm_backward<float>(N, C, dy.data(), x.data(), w.data(), mean.data(), rstd.data(), dx.data(),
                                     dw.data(), db.data());
    } else {
      cpu::layernorm_forward<float>(N, C, 1e-5, x.data(), w.data(), b.data(), y.data(), mean.data(), rstd.data());
    }
    benchmark::ClobberMemory();
  }
  state.SetLabel(bwd ? "backward" : "forward");
  // Bytes that must move: forward reads x and writes y; backward reads x, dy and writes dx.
  state.SetBytesProcessed(int64_t(state.iterations()) * N * C * int64_t(sizeof(float)) * (bwd ? 3 : 2));
}
BENCHMARK(BM_layernorm)->ArgNames({"N", "C", "bwd"})->Args({8320, 96, 0})->Args({8320, 96, 1})
    ->Args({1536, 96, 0})->Args({1536, 96, 1})->MinTime(kMinTime)->UseRealTime()->Unit(benchmark::kMicrosecond);

// args: variant, B, H, T, D, causal, backward.
void BM_attention(benchmark::State& state) {
  cpu::AttentionParams p;
  p.variant = cpu::AttentionVariant(state.range(6));
  p.B = state.range(0);
  p.H = state.range(1);
  p.Tq = p.Tk = state.range(2);
  p.D = state.range(3);
  p.causal = state.range(4) != 0;
  const bool bwd = state.range(5) != 0;
  const int64_t n = p.B * p.H * p.Tq * p.D;
  std::vector<float> q = random_vector(n, 8), k = random_vector(n, 9), v = random_vector(n, 10),
                     dout = random_vector(n, 11);
  std::vector<float> out = zeros(n), lse = zeros(p.B * p.H * p.Tq), dq = zeros(n), dk = zeros(n), dv = zeros(n);
  cpu::attention_forward<float>(p, q.data(), k.data(), v.data(), out.data(), lse.data());
  for (auto _ : state) {
    if (bwd) {
      cpu::attention_backward<float>(p, q.data(), k.data(), v.data(), out.data(), lse.data(), dout.data(),
                                     dq.data(), dk.data(), dv.data());
    } else {
      cpu::attention_forward<float>(p, q.data(), k.data(), v.data(), out.data(), lse.data());
    }
    benchmark::ClobberMemory();
  }
  state.SetLabel(std::string(cpu::attention_variant_name(p.variant)) + (p.causal ? " causal " : " ") +
                 (bwd ? "backward" : "forward"));
  // Products of [Tq, Tk, D] size, 2 flops each: forward q k^T and P v; backward the recomputed
  // scores, dP, dV, dQ and dK. A causal mask halves them.
  const double flops = (bwd ? 10.0 : 4.0) * double(p.B * p.H) * double(p.Tq) * double(p.Tk) * double(p.D) *
                       (p.causal ? 0.5 : 1.0);
  state.counters["GFLOP/s"] = benchmark::Counter(flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}
void attention_args(benchmark::internal::Benchmark* b) {
  for (auto v : {cpu::AttentionVariant::Rowwise, cpu::AttentionVariant::Gemm}) {
    for (int bwd = 0; bwd < 2; ++bwd) {
      b->Args({128, 2, 65, 48, 0, bwd, int64_t(v)});  // image tower
      b->Args({128, 2, 16, 48, 1, bwd, int64_t(v)});  // text tower
    }
  }
}
BENCHMARK(BM_attention)->ArgNames({"B", "H", "T", "D", "causal", "bwd", "variant"})->Apply(attention_args)
    ->MinTime(kMinTime)->UseRealTime()->Unit(benchmark::kMicrosecond);

// args: SIMD level (cpu::SimdLevel), backward (0/1). quick_gelu on the MLP's hidden activations
// [128 * 65, 384].
void BM_quick_gelu(benchmark::State& state) {
  const auto level = cpu::SimdLevel(state.range(0));
  const bool bwd = state.range(1) != 0;
  if (!cpu::simd_level_available(level)) {
    state.SkipWithError("no AVX2 on this CPU");
    return;
  }
  const int64_t n = 128 * 65 * 384;
  std::vector<float> x = random_vector(n, 12), dy = random_vector(n, 13), y = zeros(n), dx = zeros(n);
  for (auto _ : state) {
    if (bwd) {
      cpu::activation_backward<float>(cpu::Activation::QuickGELU, n, x.data(), y.data(), dy.data(), dx.data(), level);
    } else {
      cpu::activation_forward<float>(cpu::Activation::QuickGELU, n, x.data(), y.data(), level);
    }
    benchmark::ClobberMemory();
  }
  state.SetLabel(std::string(cpu::simd_level_name(level)) + (bwd ? " backward" : " forward"));
  state.SetBytesProcessed(int64_t(state.iterations()) * n * int64_t(sizeof(float)) * (bwd ? 4 : 2));
}
BENCHMARK(BM_quick_gelu)->ArgNames({"simd", "bwd"})->Args({1, 0})->Args({2, 0})->Args({1, 1})->Args({2, 1})
    ->MinTime(kMinTime)->UseRealTime()->Unit(benchmark::kMicrosecond);

// args: case (0: heads split [B, T, H, D] -> [B, H, T, D], 1: patch tokens [B, C, HW] -> [B, HW, C]),
// accumulate (the backward form).
void BM_permute(benchmark::State& state) {
  const int c = int(state.range(0));
  const bool acc = state.range(1) != 0;
  const std::vector<int64_t> shape = c == 0 ? std::vector<int64_t>{128, 65, 2, 48} : std::vector<int64_t>{128, 96, 64};
  const std::vector<int> dims = c == 0 ? std::vector<int>{0, 2, 1, 3} : std::vector<int>{0, 2, 1};
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  std::vector<float> x = random_vector(n, 14), y = zeros(n);
  for (auto _ : state) {
    cpu::permute<float>(int(shape.size()), shape.data(), dims.data(), x.data(), y.data(), acc);
    benchmark::ClobberMemory();
  }
  state.SetLabel(std::string(c == 0 ? "heads [B,T,H,D]->[B,H,T,D]" : "tokens [B,C,HW]->[B,HW,C]") +
                 (acc ? " accumulate" : ""));
  state.SetBytesProcessed(int64_t(state.iterations()) * n * int64_t(sizeof(float)) * (acc ? 3 : 2));
}
BENCHMARK(BM_permute)->ArgNames({"case", "acc"})->Args({0, 0})->Args({0, 1})->Args({1, 0})->Args({1, 1})
    ->MinTime(kMinTime)->UseRealTime()->Unit(benchmark::kMicrosecond);

// args: fused (0: slice + reshape + permute per part and permute + reshape back, as
// nn::MultiheadAttention does it; 1: split_qkv_heads + merge_heads). One forward and backward of
// the head layouts around an attention block of the image tower (B 128, T 65, H 2, D 48), on the
// tape, gradients included.
void BM_qkv_heads(benchmark::State& state) {
  const bool fused = state.range(0) != 0;
  const int64_t B = 128, T = 65, H = 2, D = 48, W = H * D;
  Rng rng(15);
  Tensor qkv = Tensor::randn({B, T, 3 * W}, rng).set_requires_grad(true);
  Tensor seed = Tensor::randn({B, T, W}, rng);
  for (auto _ : state) {
    tape().clear();
    qkv.zero_grad();
    std::vector<Tensor> p;
    if (fused) {
      p = ops::split_qkv_heads(qkv, H);
    } else {
      for (int64_t i = 0; i < 3; ++i)
        p.push_back(ops::permute(ops::reshape(ops::slice(qkv, 2, i * W, (i + 1) * W), {B, T, H, D}), {0, 2, 1, 3}));
    }
    // stand-in for attention: o = q + k + v keeps all three parts on the tape
    Tensor o = ops::add(ops::add(p[0], p[1]), p[2]);
    Tensor merged = fused ? ops::merge_heads(o) : ops::reshape(ops::permute(o, {0, 2, 1, 3}), {B, T, W});
    backward(merged, seed);
    benchmark::DoNotOptimize(qkv.grad().raw());
  }
  state.SetLabel(fused ? "split_qkv_heads + merge_heads" : "slice + reshape + permute (x3) + permute + reshape");
}
BENCHMARK(BM_qkv_heads)->ArgNames({"fused"})->Arg(0)->Arg(1)->MinTime(kMinTime)->UseRealTime()
    ->Unit(benchmark::kMicrosecond);

}  // namespace

BENCHMARK_MAIN();
