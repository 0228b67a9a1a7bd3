// Our tensor-core implicit-GEMM convolutions (kernels/cuda/conv.cuh: ConvKernel::TensorCore,
// mma.sync; and on Hopper ConvKernel::Wgmma, bf16, named conv_bf16_wgmma/...) against cuDNN (ConvKernel::Cudnn) on the convolution layers of CLIP's ModifiedResNet RN50 at
// batch 256 (224 px: the 3-conv stem, the 1x1 and 3x3 layers of each stage) and the ViT-B/32
// patch embedding, in bf16 and float32 (ours TF32, cuDNN allowed TF32), forward, backward-data
// and backward-filter. Each benchmark first checks that both produce the same result (norm-wise
// relative error on a strided sample of the output, at most 1e-2 bf16 / 5e-3 TF32; otherwise it
// reports an error instead of a time), warms both up, then times one call of each per iteration
// with CUDA events on the current stream. The reported time is ours; counters: TFLOP/s (ours,
// 2 N Cout OH OW Cin KH KW per pass), cudnn_TFLOP/s, and ratio = cuDNN time / our time (1 means
// as fast as cuDNN; the target is >= 0.6 on the 3x3 and 1x1 layers). The times include each
// kernel's own layout work (our weight copies, split-K reduction; whatever cuDNN does inside).
// Order: the wgmma kernel (bf16, Hopper), float32, then the mma.sync kernel in bf16. Without a GPU (or without cuDNN) the program says so and runs nothing.
//   build/<dir>/bench/bench_cuda_conv [--benchmark_filter=bf16/.*3x3]
#include <benchmark/benchmark.h>

#include <cstdio>

#include "engine/device.h"

#ifdef CLIPCU_WITH_CUDA
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <exception>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "engine/cuda_runtime.h"
#include "kernels/cuda/common/check.h"
#include "kernels/cuda/conv.cuh"

using namespace clipcu;
using cuda::bf16;

namespace {

constexpr int64_t kBatch = 256;

struct Layer {
  const char* name;
  int64_t Cin, H, Cout, K, stride, pad;
};
// RN50 (width 64): stem 3 -> 32 (s2) -> 32 -> 64 at 112, then per stage the bottleneck's
// 1x1 reduce, 3x3 (before the block's average pool) and 1x1 expand.
const Layer kLayers[] = {
    {"stem1_3x3s2_3-32_224", 3, 224, 32, 3, 2, 1},     {"stem2_3x3_32-32_112", 32, 112, 32, 3, 1, 1},
    {"stem3_3x3_32-64_112", 32, 112, 64, 3, 1, 1},     {"l1_1x1_256-64_56", 256, 56, 64, 1, 1, 0},
    {"l1_3x3_64-64_56", 64, 56, 64, 3, 1, 1},          {"l1_1x1_64-256_56", 64, 56, 256, 1, 1, 0},
    {"l2_1x1_512-128_28", 512, 28, 128, 1, 1, 0},      {"l2_3x3_128-128_28", 128, 28, 128, 3, 1, 1},
    {"l2_1x1_128-512_28", 128, 28, 512, 1, 1, 0},      {"l3_1x1_1024-256_14", 1024, 14, 256, 1, 1, 0},
    {"l3_3x3_256-256_14", 256, 14, 256, 3, 1, 1},      {"l3_1x1_256-1024_14", 256, 14, 1024, 1, 1, 0},
    {"l4_1x1_2048-512_7", 2048, 7, 512, 1, 1, 0},      {"l4_3x3_512-512_7", 512, 7, 512, 3, 1, 1},
    {"l4_1x1_512-2048_7", 512, 7, 2048, 1, 1, 0},      {"vitb32_patch_3-768_224", 3, 224, 768, 32, 32, 0},
};

// Device memory with a cheap hash pattern in [-scale, scale): one chunk from the host, then
// doubling device copies (hundreds of MB per tensor; a host fill would dominate the run).
template <class T>
struct Buf {
  T* p = nullptr;
  size_t n = 0;
  Buf(size_t count, double scale) : n(std::max<size_t>(count, 1)) {
    p = static_cast<T*>(device_alloc(Device::cuda(0), n * sizeof(T)));
    const size_t chunk = std::min<size_t>(n, (size_t(1) << 20) - 3);
    std::vector<T> h(chunk);
    for (size_t i = 0; i < chunk; ++i) h[i] = T(float(scale * (double((i * 2654435761u) % 2048u) / 1024.0 - 1.0)));
    device_copy(p, Device::cuda(0), h.data(), Device::cpu(), chunk * sizeof(T));
    for (size_t done = chunk; done < n;) {
      const size_t c = std::min(done, n - done);
      CLIPCU_CUDA_CHECK(cudaMemcpy(p + done, p, c * sizeof(T), cudaMemcpyDeviceToDevice));
      done += c;
    }
  }
  ~Buf() { device_free(Device::cuda(0), p); }
  Buf(const Buf&) = delete;
  Buf& operator=(const Buf&) = delete;
};

// The tensors of one layer and dtype, kept while the benchmarks of that layer run.
template <class T>
struct LayerBufs {
  std::string key;
  std::unique_ptr<Buf<T>> x, w, y, dy, dx, dw;
};
template <class T>
LayerBufs<T>& layer_bufs(const Layer& L, const cuda::ConvShape& s) {
  static LayerBufs<T> b;
  if (b.key != L.name) {
    b = LayerBufs<T>{};  // free the previous layer's tensors first
    const size_t nx = size_t(s.N * s.Cin * s.H * s.W), nw = size_t(s.Cout * s.Cin * s.KH * s.KW);
    const size_t ny = size_t(s.N * s.Cout * s.OH * s.OW);
    b.x = std::make_unique<Buf<T>>(nx, 1.0);
    b.w = std::make_unique<Buf<T>>(nw, 1.0 / std::sqrt(double(s.Cin * s.KH * s.KW)));
    b.y = std::make_unique<Buf<T>>(ny, 1.0);
    b.dy = std::make_unique<Buf<T>>(ny, 1.0);
    b.dx = std::make_unique<Buf<T>>(nx, 1.0);
    b.dw = std::make_unique<Buf<T>>(nw, 1.0);
    b.key = L.name;
  }
  return b;
}

// About 64k values of a device array, every stride-th, as doubles (one strided copy).
template <class T>
std::vector<double> sample(const T* p, size_t n) {
  const size_t stride = std::max<size_t>(1, n / 65536), count = n / stride;
  std::vector<T> h(count);
  CLIPCU_CUDA_CHECK(cudaMemcpy2D(h.data(), sizeof(T), p, stride * sizeof(T), sizeof(T), count, cudaMemcpyDeviceToHost));
  std::vector<double> out(count);
  for (size_t i = 0; i < count; ++i) out[i] = double(float(h[i]));
  return out;
}
double rel_err(const std::vector<double>& a, const std::vector<double>& ref) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) num += (a[i] - ref[i]) * (a[i] - ref[i]), den += ref[i] * ref[i];
  if (std::isnan(num)) return INFINITY;
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

template <class T>
void run_pass(const cuda::ConvShape& s, cuda::ConvPass pass, const cuda::ConvArgs<T>& a, cudaStream_t st) {
  switch (pass) {
    case cuda::ConvPass::Forward: cuda::conv2d_forward<T>(s, a, st); break;
    case cuda::ConvPass::BackwardData: cuda::conv2d_backward_data<T>(s, a, st); break;
    case cuda::ConvPass::BackwardFilter: cuda::conv2d_backward_filter<T>(s, a, st); break;
  }
}

template <class T>
void BM_conv_body(benchmark::State& state, Layer L, cuda::ConvPass pass, cuda::ConvKernel kernel) {
  cudaStream_t st = cuda::current_stream();
  cuda::ConvShape ours = cuda::conv_shape(kBatch, L.Cin, L.H, L.H, L.Cout, L.K, L.K, L.stride, L.pad, kernel);
  cuda::ConvShape ref = ours;
  ref.kernel = cuda::ConvKernel::Cudnn;
#ifdef CLIPCU_WITH_CUDNN
  ref.cudnn = cuda::cudnn_handle();
#endif
  ref.allow_tf32 = true;  // the fair float baseline for our TF32 kernel
  LayerBufs<T>& b = layer_bufs<T>(L, ours);
  const size_t ws_bytes =
      std::max(cuda::conv2d_workspace_bytes<T>(ours, pass), cuda::conv2d_workspace_bytes<T>(ref, pass));
  Buf<unsigned char> ws(ws_bytes, 0.0);
  cuda::ConvArgs<T> a;
  a.x = b.x->p, a.w = b.w->p, a.y = b.y->p, a.dy = b.dy->p, a.dx = b.dx->p, a.dw = b.dw->p;
  a.workspace = ws.p, a.workspace_bytes = ws_bytes;

  // validation: the pass's output from zero (forward overwrites; the backwards accumulate)
  T* out = pass == cuda::ConvPass::Forward ? b.y->p : pass == cuda::ConvPass::BackwardData ? b.dx->p : b.dw->p;
  const size_t out_n = pass == cuda::ConvPass::Forward ? b.y->n : pass == cuda::ConvPass::BackwardData ? b.dx->n : b.dw->n;
  auto zero_out = [&] { CLIPCU_CUDA_CHECK(cudaMemsetAsync(out, 0, out_n * sizeof(T), st)); };
  zero_out();
  run_pass<T>(ref, pass, a, st);
  const std::vector<double> want = sample(out, out_n);
  zero_out();
  run_pass<T>(ours, pass, a, st);
  const std::vector<double> got = sample(out, out_n);
  const double err = rel_err(got, want), tol = std::is_same_v<T, bf16> ? 1e-2 : 5e-3;
  if (!(err <= tol)) {
    state.SkipWithError(("differs from cuDNN: rel err " + std::to_string(err)).c_str());
    return;
  }

  cudaEvent_t e0, e1, e2;
  CLIPCU_CUDA_CHECK(cudaEventCreate(&e0));
  CLIPCU_CUDA_CHECK(cudaEventCreate(&e1));
  CLIPCU_CUDA_CHECK(cudaEventCreate(&e2));
  run_pass<T>(ours, pass, a, st);  // warm-up
  run_pass<T>(ref, pass, a, st);
  CLIPCU_CUDA_CHECK(cudaStreamSynchronize(st));
  double ours_s = 0, ref_s = 0;
  int64_t iters = 0;
  for (auto _ : state) {
    CLIPCU_CUDA_CHECK(cudaEventRecord(e0, st));
    run_pass<T>(ours, pass, a, st);
    CLIPCU_CUDA_CHECK(cudaEventRecord(e1, st));
    run_pass<T>(ref, pass, a, st);
    CLIPCU_CUDA_CHECK(cudaEventRecord(e2, st));
    CLIPCU_CUDA_CHECK(cudaEventSynchronize(e2));
    float ms_ours = 0, ms_ref = 0;
    CLIPCU_CUDA_CHECK(cudaEventElapsedTime(&ms_ours, e0, e1));
    CLIPCU_CUDA_CHECK(cudaEventElapsedTime(&ms_ref, e1, e2));
    state.SetIterationTime(double(ms_ours) * 1e-3);
    ours_s += double(ms_ours) * 1e-3;
    ref_s += double(ms_ref) * 1e-3;
    ++iters;
  }
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  cudaEventDestroy(e2);
  const double flops = 2.0 * double(ours.N * ours.Cout * ours.OH * ours.OW) * double(ours.Cin * ours.KH * ours.KW);
  if (iters > 0 && ours_s > 0 && ref_s > 0) {
    state.counters["TFLOP/s"] = flops * double(iters) / ours_s * 1e-12;
    state.counters["cudnn_TFLOP/s"] = flops * double(iters) / ref_s * 1e-12;
    state.counters["ratio"] = ref_s / ours_s;
    state.counters["rel_err"] = err;
  }
}

// A failing call (cuDNN declining a shape, out of memory) skips this benchmark, not the rest.
template <class T>
void BM_conv(benchmark::State& state, Layer L, cuda::ConvPass pass, cuda::ConvKernel kernel) {
  try {
    BM_conv_body<T>(state, L, pass, kernel);
  } catch (const std::exception& e) {
    state.SkipWithError(e.what());
  }
}

const char* pass_name(cuda::ConvPass p) {
  return p == cuda::ConvPass::Forward ? "fwd" : p == cuda::ConvPass::BackwardData ? "dgrad" : "wgrad";
}

// Timed iterations per benchmark (each runs ours, then cuDNN, between CUDA events): fixed, so
// that Google Benchmark does not re-run the set-up and the validation to size its loop (which
// made the 144 benchmarks outlast the device check's time for them); the layers' passes take
// 0.1-10 ms, so 10 of each are 2-200 ms of GPU time.
constexpr int kConvIters = 10;

void register_all() {
  auto reg = [](const std::string& name, auto fn) {
    benchmark::RegisterBenchmark(name.c_str(), fn)
        ->UseManualTime()
        ->Iterations(kConvIters)
        ->Unit(benchmark::kMicrosecond);
  };
  constexpr cuda::ConvPass kPasses[] = {cuda::ConvPass::Forward, cuda::ConvPass::BackwardData,
                                        cuda::ConvPass::BackwardFilter};
  using K = cuda::ConvKernel;
  if (cuda::conv_wgmma_available(0))
    for (const Layer& L : kLayers)
      for (cuda::ConvPass p : kPasses)
        reg(std::string("conv_bf16_wgmma/") + L.name + "/" + pass_name(p),
            [=](benchmark::State& st) { BM_conv<bf16>(st, L, p, K::Wgmma); });
  // float32 (TF32) before the mma.sync bf16 kernel: on Hopper that one is the slower of our two
  // bf16 kernels, and a time limit cuts the last ones
  for (const Layer& L : kLayers)
    for (cuda::ConvPass p : kPasses)
      reg(std::string("conv_f32/") + L.name + "/" + pass_name(p),
          [=](benchmark::State& st) { BM_conv<float>(st, L, p, K::TensorCore); });
  for (const Layer& L : kLayers)
    for (cuda::ConvPass p : kPasses)
      reg(std::string("conv_bf16/") + L.name + "/" + pass_name(p),
          [=](benchmark::State& st) { BM_conv<bf16>(st, L, p, K::TensorCore); });
}

}  // namespace
#endif  // CLIPCU_WITH_CUDA

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
#ifdef CLIPCU_WITH_CUDA
  if (!clipcu::cuda_available()) {
    std::printf("bench_cuda_conv: no GPU answers: nothing to run (SKIPPED)\n");
  } else if (!clipcu::cuda::conv_cudnn_built()) {
    std::printf("bench_cuda_conv: this build has no cuDNN (the baseline): nothing to run (SKIPPED)\n");
  } else {
    register_all();
    benchmark::RunSpecifiedBenchmarks();
  }
#else
  std::printf("bench_cuda_conv: this build has no CUDA backend: nothing to run (SKIPPED)\n");
#endif
  benchmark::Shutdown();
  return 0;
}
