// CPU reference ops on CLIP-tiny shapes: every gemm variant on the linear layers' shapes (forward
// and the two gradient forms), layer norm and attention forward + backward.
//
// CLIP-tiny here: width 96, 2 heads of 48, image tokens 65 (32 px, patch 4, + class token), text
// context 12, MLP 384, batch 128, so the linear layers see M = 128 * 65 = 8320 rows.
// Each benchmark runs for about 0.1 s, and the naive oracle only on a 520-row slice, so the
// default run stays short. Times are wall-clock (OpenMP / OpenBLAS threads work in parallel);
// GFLOP/s counts 2 * M * N * K per gemm.
//   build/<dir>/bench/bench_cpu_ops [--benchmark_filter=gemm]
#include <benchmark/benchmark.h>

#include <cmath>
#include <vector>

#include "engine/rng.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/layernorm.h"
#include "kernels/cpu/matmul.h"

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

// args: B, H, T, D, causal, backward.
void BM_attention(benchmark::State& state) {
  cpu::AttentionParams p;
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
  state.SetLabel(std::string(p.causal ? "causal " : "") + (bwd ? "backward" : "forward"));
  // Products of [Tq, Tk, D] size, 2 flops each: forward q k^T and P v; backward the recomputed
  // scores, dP, dV, dQ and dK. A causal mask halves them.
  const double flops = (bwd ? 10.0 : 4.0) * double(p.B * p.H) * double(p.Tq) * double(p.Tk) * double(p.D) *
                       (p.causal ? 0.5 : 1.0);
  state.counters["GFLOP/s"] = benchmark::Counter(flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_attention)->ArgNames({"B", "H", "T", "D", "causal", "bwd"})
    ->Args({128, 2, 65, 48, 0, 0})->Args({128, 2, 65, 48, 0, 1})   // image tower
    ->Args({128, 2, 12, 48, 1, 0})->Args({128, 2, 12, 48, 1, 1})   // text tower
    ->MinTime(kMinTime)->UseRealTime()->Unit(benchmark::kMicrosecond);

}  // namespace

BENCHMARK_MAIN();
