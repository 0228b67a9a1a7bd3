// CPU reference ops on CLIP-tiny shapes: every gemm variant on the linear layers' shapes (forward
// and the two gradient forms), layer norm, attention forward + backward (both variants),
// quick_gelu (baseline and AVX2 loops), permutes, and the attention block's head layout as the
// slice + reshape + permute composition against the fused split_qkv_heads / merge_heads ops;
// then the other reference ops of kernels/cpu: conv2d (every variant, forward and both
// gradients) on the ViT patch embedding and tiny ModifiedResNet convolutions, batch norm, average
// pooling, token embedding, the contrastive loss, softmax cross entropy, L2 normalization, the
// broadcast add, and the AdamW step. (Whole CPU training and inference steps: bench_step.cpp.)
//
// CLIP-tiny here: width 96, 2 heads of 48, image tokens 65 (32 px, patch 4, + class token), text
// context 16, MLP 384, batch 128, so the linear layers see M = 128 * 65 = 8320 rows.
// Each benchmark runs for about 0.1 s, and the naive oracle only on a 520-row slice, so the
// default run stays short. Times are wall-clock (OpenMP / OpenBLAS threads work in parallel);
// GFLOP/s counts 2 * M * N * K per gemm. On a shared machine compare the CPU column with
// OMP_NUM_THREADS=1.
//   build/<dir>/bench/bench_cpu_ops [--benchmark_filter=gemm]
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "engine/rng.h"
#include "kernels/cpu/activation.h"
#include "kernels/cpu/adamw.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/batchnorm.h"
#include "kernels/cpu/clip_loss.h"
#include "kernels/cpu/conv2d.h"
#include "kernels/cpu/elementwise.h"
#include "kernels/cpu/embedding.h"
#include "kernels/cpu/l2_normalize.h"
#include "kernels/cpu/layernorm.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/pool.h"
#include "kernels/cpu/shape.h"
#include "kernels/cpu/softmax_xent.h"

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

// args: variant (cpu::ConvVariant), case, pass (0: forward, 1: dx, 2: dW + dbias).
// Cases: 0 the ViT patch embedding of clip-tiny-cpu (batch 32, 32 px, 3 -> 96, 4x4 stride 4);
// 1 a ModifiedResNet stem convolution (batch 32, 64 px, 3 -> 4, 3x3 stride 2, pad 1);
// 2 a Bottleneck 3x3 (batch 8, 16 x 16, 32 -> 32, pad 1).
cpu::Conv2dDims conv_case(int c) {
  switch (c) {
    case 0: return cpu::conv2d_dims(32, 3, 32, 32, 96, 4, 4, 4, 0);
    case 1: return cpu::conv2d_dims(32, 3, 64, 64, 4, 3, 3, 2, 1);
    default: return cpu::conv2d_dims(8, 32, 16, 16, 32, 3, 3, 1, 1);
  }
}
void BM_conv2d(benchmark::State& state) {
  const auto variant = cpu::ConvVariant(state.range(0));
  const cpu::Conv2dDims d = conv_case(int(state.range(1)));
  const int pass = int(state.range(2));
  const int64_t nx = d.N * d.Cin * d.H * d.W, nw = d.Cout * d.Cin * d.KH * d.KW, ny = d.N * d.Cout * d.OH * d.OW;
  std::vector<float> x = random_vector(nx, 16), w = random_vector(nw, 17), b = random_vector(d.Cout, 18),
                     dy = random_vector(ny, 19);
  std::vector<float> y = zeros(ny), dx = zeros(nx), dw = zeros(nw), db = zeros(d.Cout);
  for (auto _ : state) {
    switch (pass) {
      case 0: cpu::conv2d_forward<float>(d, x.data(), w.data(), b.data(), y.data(), variant); break;
      case 1: cpu::conv2d_backward_data<float>(d, dy.data(), w.data(), dx.data(), variant); break;
      default: cpu::conv2d_backward_weight<float>(d, x.data(), dy.data(), dw.data(), db.data(), variant); break;
    }
    benchmark::ClobberMemory();
  }
  static const char* passes[] = {"forward", "dx", "dW"};
  state.SetLabel(std::string(cpu::conv_variant_name(variant)) + " " + passes[pass]);
  state.counters["GFLOP/s"] = benchmark::Counter(2.0 * double(ny) * double(d.Cin * d.KH * d.KW) * 1e-9,
                                                 benchmark::Counter::kIsIterationInvariantRate);
}
void conv_args(benchmark::internal::Benchmark* b) {
  for (int c = 0; c < 3; ++c)
    for (int pass = 0; pass < 3; ++pass)
      for (auto v : {cpu::ConvVariant::Direct, cpu::ConvVariant::Im2col, cpu::ConvVariant::Im2colBatch})
        b->Args({int64_t(v), c, pass});
}
BENCHMARK(BM_conv2d)->ArgNames({"variant", "case", "pass"})->Apply(conv_args)->MinTime(kMinTime)->UseRealTime()
    ->Unit(benchmark::kMicrosecond);

// args: backward (0/1). Training-mode batch norm of a Bottleneck's activations [32, 32, 16 x 16].
void BM_batchnorm(benchmark::State& state) {
  const bool bwd = state.range(0) != 0;
  const int64_t N = 32, C = 32, HW = 256, n = N * C * HW;
  std::vector<float> x = random_vector(n, 20), w = random_vector(C, 21), b = random_vector(C, 22),
                     dy = random_vector(n, 23);
  std::vector<float> y = zeros(n), mean = zeros(C), rstd = zeros(C), rm = zeros(C), rv = zeros(C), dx = zeros(n),
                     dw = zeros(C), db = zeros(C);
  cpu::batchnorm2d_forward_train<float>(N, C, HW, x.data(), w.data(), b.data(), 0.1, 1e-5, y.data(), mean.data(),
                                        rstd.data(), rm.data(), rv.data());
  for (auto _ : state) {
    if (bwd) {
      cpu::batchnorm2d_backward<float>(N, C, HW, true, x.data(), w.data(), mean.data(), rstd.data(), dy.data(),
                                       dx.data(), dw.data(), db.data());
    } else {
      cpu::batchnorm2d_forward_train<float>(N, C, HW, x.data(), w.data(), b.data(), 0.1, 1e-5, y.data(),
                                            mean.data(), rstd.data(), rm.data(), rv.data());
    }
    benchmark::ClobberMemory();
  }
  state.SetLabel(bwd ? "backward" : "forward (train)");
  state.SetBytesProcessed(int64_t(state.iterations()) * n * int64_t(sizeof(float)) * (bwd ? 4 : 2));
}
BENCHMARK(BM_batchnorm)->ArgNames({"bwd"})->Arg(0)->Arg(1)->MinTime(kMinTime)->UseRealTime()
    ->Unit(benchmark::kMicrosecond);

// args: backward (0/1). 2 x 2 average pooling of [32 * 32, 16, 16] (a Bottleneck's stride).
void BM_avgpool(benchmark::State& state) {
  const bool bwd = state.range(0) != 0;
  const int64_t NC = 32 * 32, H = 16, W = 16, k = 2, n = NC * H * W, m = n / (k * k);
  std::vector<float> x = random_vector(n, 24), dy = random_vector(m, 25), y = zeros(m), dx = zeros(n);
  for (auto _ : state) {
    if (bwd) {
      cpu::avgpool2d_backward<float>(NC, H, W, k, dy.data(), dx.data());
    } else {
      cpu::avgpool2d_forward<float>(NC, H, W, k, x.data(), y.data());
    }
    benchmark::ClobberMemory();
  }
  state.SetLabel(bwd ? "backward" : "forward");
  state.SetBytesProcessed(int64_t(state.iterations()) * (n * (bwd ? 2 : 1) + m) * int64_t(sizeof(float)));
}
BENCHMARK(BM_avgpool)->ArgNames({"bwd"})->Arg(0)->Arg(1)->MinTime(kMinTime)->UseRealTime()
    ->Unit(benchmark::kMicrosecond);

// args: backward (0/1). The text tower's token embedding: batch 128 x context 20 ids over the
// 49408-token vocabulary, width 96 (clip-tiny-cpu).
void BM_embedding(benchmark::State& state) {
  const bool bwd = state.range(0) != 0;
  const int64_t N = 128 * 20, V = 49408, C = 96;
  Rng rng(26);
  std::vector<int64_t> ids(static_cast<size_t>(N));
  for (int64_t& id : ids) id = int64_t(rng.below(uint64_t(V)));
  std::vector<float> table = random_vector(V * C, 27), gout = random_vector(N * C, 28), out = zeros(N * C),
                     gtable = zeros(V * C);
  for (auto _ : state) {
    if (bwd) {
      cpu::embedding_backward<float, int64_t>(N, V, C, ids.data(), gout.data(), gtable.data());
    } else {
      cpu::embedding_forward<float, int64_t>(N, V, C, table.data(), ids.data(), out.data());
    }
    benchmark::ClobberMemory();
  }
  state.SetLabel(bwd ? "backward (scatter-add)" : "forward (gather)");
  state.SetBytesProcessed(int64_t(state.iterations()) * N * C * int64_t(sizeof(float)) * (bwd ? 3 : 2));
}
BENCHMARK(BM_embedding)->ArgNames({"bwd"})->Arg(0)->Arg(1)->MinTime(kMinTime)->UseRealTime()
    ->Unit(benchmark::kMicrosecond);

// args: B, E. The contrastive loss forward + backward (clip-tiny: B 128, E 64; and B 1024, E 512).
void BM_clip_loss(benchmark::State& state) {
  const int64_t B = state.range(0), E = state.range(1);
  std::vector<float> img = random_vector(B * E, 29), txt = random_vector(B * E, 30);
  std::vector<float> in = zeros(B * E), tn = zeros(B * E), inorm = zeros(B), tnorm = zeros(B), logits = zeros(B * B),
                     r = zeros(B), c = zeros(B), gi = zeros(B * E), gt = zeros(B * E), gs = zeros(1);
  cpu::ClipLossParams<float> p;
  p.B = B, p.E = E, p.image = img.data(), p.text = txt.data(), p.log_scale = std::log(1.f / 0.07f);
  p.image_n = in.data(), p.text_n = tn.data(), p.image_norm = inorm.data(), p.text_norm = tnorm.data();
  p.logits = logits.data(), p.row_lse = r.data(), p.col_lse = c.data();
  for (auto _ : state) {
    benchmark::DoNotOptimize(cpu::clip_loss_forward<float>(p));
    cpu::clip_loss_backward<float>(p, 1.f, gi.data(), gt.data(), gs.data());
    benchmark::ClobberMemory();
  }
  state.SetLabel("forward + backward");
  // logits, d image, d text: three [B, B, E] products
  state.counters["GFLOP/s"] = benchmark::Counter(6.0 * double(B) * double(B) * double(E) * 1e-9,
                                                 benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_clip_loss)->ArgNames({"B", "E"})->Args({128, 64})->Args({1024, 512})->MinTime(kMinTime)->UseRealTime()
    ->Unit(benchmark::kMicrosecond);

// args: N, C. Softmax cross entropy forward + backward over logits [N, C] (the clip loss's rows).
void BM_softmax_xent(benchmark::State& state) {
  const int64_t N = state.range(0), C = state.range(1);
  std::vector<float> logits = random_vector(N * C, 31), lse = zeros(N), grad = zeros(N * C);
  std::vector<int64_t> targets(static_cast<size_t>(N));
  for (int64_t i = 0; i < N; ++i) targets[size_t(i)] = i % C;
  for (auto _ : state) {
    const float loss = cpu::softmax_xent_forward<float, int64_t>(N, C, logits.data(), targets.data(), lse.data());
    benchmark::DoNotOptimize(loss);
    cpu::softmax_xent_backward<float, int64_t>(N, C, logits.data(), targets.data(), lse.data(), 1.f, grad.data());
    benchmark::ClobberMemory();
  }
  state.SetLabel("forward + backward");
  state.SetBytesProcessed(int64_t(state.iterations()) * N * C * int64_t(sizeof(float)) * 3);
}
BENCHMARK(BM_softmax_xent)->ArgNames({"N", "C"})->Args({1024, 1024})->MinTime(kMinTime)->UseRealTime()
    ->Unit(benchmark::kMicrosecond);

// args: N, C. L2 normalization of feature rows, forward + backward.
void BM_l2_normalize(benchmark::State& state) {
  const int64_t N = state.range(0), C = state.range(1);
  std::vector<float> x = random_vector(N * C, 32), gy = random_vector(N * C, 33), y = zeros(N * C), norm = zeros(N),
                     gx = zeros(N * C);
  for (auto _ : state) {
    cpu::l2_normalize_forward<float>(N, C, x.data(), y.data(), norm.data());
    cpu::l2_normalize_backward<float>(N, C, y.data(), norm.data(), gy.data(), gx.data());
    benchmark::ClobberMemory();
  }
  state.SetLabel("forward + backward");
  state.SetBytesProcessed(int64_t(state.iterations()) * N * C * int64_t(sizeof(float)) * 5);
}
BENCHMARK(BM_l2_normalize)->ArgNames({"N", "C"})->Args({1024, 512})->MinTime(kMinTime)->UseRealTime()
    ->Unit(benchmark::kMicrosecond);

// args: backward (0/1). Broadcast add of a bias row over the MLP's hidden activations [8320, 384]
// (forward), and its backward (dx copy + column sums).
void BM_add_bias(benchmark::State& state) {
  const bool bwd = state.range(0) != 0;
  const int64_t R = 8320, C = 384, n = R * C;
  std::vector<float> x = random_vector(n, 34), b = random_vector(C, 35), y = zeros(n), db = zeros(C);
  for (auto _ : state) {
    if (bwd) {
      cpu::add_backward<float>(R, C, x.data(), y.data(), db.data());
    } else {
      cpu::add_forward<float>(R, C, x.data(), b.data(), y.data());
    }
    benchmark::ClobberMemory();
  }
  state.SetLabel(bwd ? "backward" : "forward");
  state.SetBytesProcessed(int64_t(state.iterations()) * n * int64_t(sizeof(float)) * (bwd ? 3 : 2));
}
BENCHMARK(BM_add_bias)->ArgNames({"bwd"})->Arg(0)->Arg(1)->MinTime(kMinTime)->UseRealTime()
    ->Unit(benchmark::kMicrosecond);

// One AdamW step over the parameters of clip-tiny-cpu (5.4M floats in one tensor): p, m, v and g
// read, p, m, v written.
void BM_adamw(benchmark::State& state) {
  const int64_t n = 5439937;
  std::vector<float> p = random_vector(n, 36), g = random_vector(n, 37), m = zeros(n), v = zeros(n);
  cpu::AdamWStep s;
  s.lr = 1e-4, s.beta1 = 0.9, s.beta2 = 0.98, s.eps = 1e-6, s.weight_decay = 0.2, s.t = 1;
  for (auto _ : state) {
    cpu::adamw_step<float>(n, s, p.data(), g.data(), m.data(), v.data());
    benchmark::ClobberMemory();
  }
  state.SetLabel("clip-tiny-cpu parameters");
  state.SetBytesProcessed(int64_t(state.iterations()) * n * int64_t(sizeof(float)) * 7);
}
BENCHMARK(BM_adamw)->MinTime(kMinTime)->UseRealTime()->Unit(benchmark::kMicrosecond);

}  // namespace

BENCHMARK_MAIN();
