// CUDA kernels side by side with cuBLAS and a device-to-device copy, on CLIP ViT-B/32 training
// shapes (batch 256): the GEMM backends (bf16, M = 256 * 50 rows: qkv, fc, fc2 forward and the
// two gradient forms), attention forward + backward (B 256, H 12, T 50, D 64; text H 8, T 77,
// causal), layer norm forward and backward [12800, 768] float32 against the copy bandwidth, and
// the fused contrastive loss (B 4096, E 512). Times are CUDA-event times of the kernels on the
// current stream (manual time); TFLOP/s counts 2 M N K per GEMM and 4 B H Tq Tk D for the
// attention forward (x 2.5 for forward + backward); GB/s counts bytes read + written once.
// Without a GPU the program says so and registers nothing.
//   build/<dir>/bench/bench_cuda_ops [--benchmark_filter=gemm]
#include <benchmark/benchmark.h>

#include <cstdio>

#include "engine/device.h"

#ifdef CLIPCU_WITH_CUDA
#include <cuda_runtime_api.h>

#include <algorithm>
#include <string>
#include <vector>

#include "engine/cuda_runtime.h"
#include "kernels/cuda/attention.cuh"
#include "kernels/cuda/clip_loss.cuh"
#include "kernels/cuda/common/check.h"
#include "kernels/cuda/gemm.cuh"
#include "kernels/cuda/layernorm.cuh"

using namespace clipcu;
using cuda::bf16;

namespace {

// Device memory filled with values in [-scale, scale) from a cheap hash of the index (tens of
// millions of elements: a normal generator would dominate the run), or with one constant.
template <class T>
struct Buf {
  T* p = nullptr;
  size_t n = 0;
  explicit Buf(size_t count, double scale = 0.5) : n(count) {
    p = static_cast<T*>(device_alloc(Device::cuda(0), std::max<size_t>(n, 1) * sizeof(T)));
    std::vector<T> h(n);
    for (size_t i = 0; i < n; ++i) h[i] = T(float(scale * (double((i * 2654435761u) % 2048u) / 1024.0 - 1.0)));
    device_copy(p, Device::cuda(0), h.data(), Device::cpu(), n * sizeof(T));
  }
  void fill(float v) {
    std::vector<T> h(n, T(v));
    device_copy(p, Device::cuda(0), h.data(), Device::cpu(), n * sizeof(T));
  }
  ~Buf() { device_free(Device::cuda(0), p); }
  Buf(const Buf&) = delete;
  Buf& operator=(const Buf&) = delete;
};

// Times f() on the current stream with CUDA events, one call per iteration.
template <class F>
void run_timed(benchmark::State& st, F&& f) {
  cudaStream_t s = cuda::current_stream();
  cudaEvent_t a, b;
  CLIPCU_CUDA_CHECK(cudaEventCreate(&a));
  CLIPCU_CUDA_CHECK(cudaEventCreate(&b));
  f();  // warm-up (first-launch costs, cuBLAS heuristics)
  CLIPCU_CUDA_CHECK(cudaStreamSynchronize(s));
  for (auto _ : st) {
    CLIPCU_CUDA_CHECK(cudaEventRecord(a, s));
    f();
    CLIPCU_CUDA_CHECK(cudaEventRecord(b, s));
    CLIPCU_CUDA_CHECK(cudaEventSynchronize(b));
    float ms = 0;
    CLIPCU_CUDA_CHECK(cudaEventElapsedTime(&ms, a, b));
    st.SetIterationTime(double(ms) * 1e-3);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
}

void rate(benchmark::State& st, const char* name, double per_iteration) {
  st.counters[name] = benchmark::Counter(per_iteration, benchmark::Counter::kIsIterationInvariantRate);
}

void BM_copy(benchmark::State& st) {
  const size_t bytes = size_t(12800) * 768 * 4;
  Buf<float> a(bytes / 4), b(bytes / 4);
  run_timed(st, [&] {
    CLIPCU_CUDA_CHECK(cudaMemcpyAsync(b.p, a.p, bytes, cudaMemcpyDeviceToDevice, cuda::current_stream()));
  });
  rate(st, "GB/s", 2.0 * double(bytes) * 1e-9);
}

void BM_gemm(benchmark::State& st, cuda::GemmBackend backend, int64_t M, int64_t N, int64_t K, bool ta, bool tb) {
  Buf<bf16> A(size_t(M * K)), B(size_t(K * N)), C(size_t(M * N));
  cuda::GemmParams<bf16> p;
  p.trans_a = ta, p.trans_b = tb, p.M = M, p.N = N, p.K = K;
  p.A = A.p, p.B = B.p, p.C = C.p, p.backend = backend;
  p.lt = cuda::cublaslt_handle(), p.cublas = cuda::cublas_handle();
  p.workspace = cuda::cublaslt_workspace(), p.workspace_bytes = cuda::kCublasLtWorkspaceBytes;
  run_timed(st, [&] { cuda::gemm(p, cuda::current_stream()); });
  rate(st, "TFLOP/s", 2.0 * double(M) * double(N) * double(K) * 1e-12);
}

void BM_attention(benchmark::State& st, cuda::AttentionKernel kernel, int64_t B, int64_t H, int64_t T, bool causal) {
  const int64_t D = 64;
  cuda::AttentionShape s;
  s.B = B, s.H = H, s.Tq = T, s.Tk = T, s.D = D, s.causal = causal, s.kernel = kernel;
  const size_t n = size_t(B * H * T * D);
  Buf<bf16> q(n), k(n), v(n), out(n), dout(n), dq(n), dk(n), dv(n);
  Buf<float> lse(size_t(B * H * T)), ws(cuda::attention_backward_workspace_floats(s));
  cuda::AttentionArgs<bf16> a;
  a.q = q.p, a.k = k.p, a.v = v.p, a.out = out.p, a.lse = lse.p, a.dout = dout.p;
  a.dq = dq.p, a.dk = dk.p, a.dv = dv.p, a.workspace = ws.p;
  run_timed(st, [&] {
    cuda::attention_forward(s, a, cuda::current_stream());
    cuda::attention_backward(s, a, cuda::current_stream());
  });
  rate(st, "TFLOP/s", 2.5 * 4.0 * double(B * H) * double(T) * double(T) * double(D) * (causal ? 0.5 : 1.0) * 1e-12);
}

void BM_layernorm(benchmark::State& st, cuda::LayerNormKernel kernel, bool backward) {
  const int64_t N = 12800, C = 768;
  const size_t nc = size_t(N * C);
  Buf<float> x(nc), y(nc), w(static_cast<size_t>(C)), b(static_cast<size_t>(C)), mean(static_cast<size_t>(N)), rstd(static_cast<size_t>(N)), dy(nc), dx(nc);
  Buf<float> dw(static_cast<size_t>(C)), db(static_cast<size_t>(C)), ws(cuda::layernorm_backward_workspace_floats(N, C));
  cuda::LayerNormForwardArgs<float> f;
  f.N = N, f.C = C, f.x = x.p, f.weight = w.p, f.bias = b.p, f.y = y.p, f.mean = mean.p, f.rstd = rstd.p;
  f.kernel = kernel;
  cuda::layernorm_forward(f, cuda::current_stream());
  cuda::LayerNormBackwardArgs<float> g;
  g.N = N, g.C = C, g.dy = dy.p, g.h = x.p, g.weight = w.p, g.mean = mean.p, g.rstd = rstd.p, g.dx = dx.p;
  g.dweight = dw.p, g.dbias = db.p, g.workspace = ws.p, g.kernel = kernel;
  if (backward) {
    run_timed(st, [&] { cuda::layernorm_backward(g, cuda::current_stream()); });
    rate(st, "GB/s", 4.0 * double(nc) * 4.0 * 1e-9);  // dy, h and dx read, dx written
  } else {
    run_timed(st, [&] { cuda::layernorm_forward(f, cuda::current_stream()); });
    rate(st, "GB/s", 2.0 * double(nc) * 4.0 * 1e-9);  // x read, y written
  }
}

void BM_clip_loss(benchmark::State& st, int64_t B, int64_t E) {
  Buf<float> img(size_t(B * E)), txt(size_t(B * E)), ls(1, 0.0), in(size_t(B * E)), tn(size_t(B * E));
  Buf<float> inorm(static_cast<size_t>(B)), tnorm(static_cast<size_t>(B)), r(static_cast<size_t>(B)), c(static_cast<size_t>(B)), loss(1), scratch(static_cast<size_t>(B));
  Buf<float> gl(1), gi(size_t(B * E)), gt(size_t(B * E)), gs(1);
  gl.fill(1.f);  // d out / d loss
  cuda::ClipLossArgs<float> a;
  a.B = B, a.E = E, a.image = img.p, a.text = txt.p, a.log_scale = ls.p, a.image_n = in.p, a.text_n = tn.p;
  a.image_norm = inorm.p, a.text_norm = tnorm.p, a.row_lse = r.p, a.col_lse = c.p, a.loss = loss.p;
  a.scratch = scratch.p;
  run_timed(st, [&] {
    cuda::clip_loss_forward(a, cuda::current_stream());
    cuda::clip_loss_backward(a, gl.p, gi.p, gt.p, gs.p, cuda::current_stream());
  });
}

void register_all() {
  auto reg = [](const std::string& name, auto fn) {
    benchmark::RegisterBenchmark(name.c_str(), fn)->UseManualTime()->Unit(benchmark::kMicrosecond);
  };
  reg("copy_d2d/[12800,768]f32", BM_copy);
  const int64_t M = 256 * 50;
  struct Shape {
    const char* name;
    int64_t N, K;
  };
  for (const Shape& sh : {Shape{"qkv", 2304, 768}, Shape{"fc", 3072, 768}, Shape{"fc2", 768, 3072}, Shape{"proj", 768, 768}})
    for (cuda::GemmBackend be : {cuda::GemmBackend::TensorCore, cuda::GemmBackend::Cublas, cuda::GemmBackend::Simple}) {
      const std::string b = cuda::gemm_backend_name(be);
      // forward y = x W^T, dX = dY W, dW = dY^T X
      reg("gemm_bf16/" + b + "/" + sh.name + "/fwd_NT", [=](benchmark::State& st) { BM_gemm(st, be, M, sh.N, sh.K, false, true); });
      if (be == cuda::GemmBackend::Simple) continue;  // one SIMT reference point is enough
      reg("gemm_bf16/" + b + "/" + sh.name + "/dX_NN", [=](benchmark::State& st) { BM_gemm(st, be, M, sh.K, sh.N, false, false); });
      reg("gemm_bf16/" + b + "/" + sh.name + "/dW_TN", [=](benchmark::State& st) { BM_gemm(st, be, sh.N, sh.K, M, true, false); });
    }
  for (cuda::AttentionKernel k : {cuda::AttentionKernel::Tiled, cuda::AttentionKernel::Simple}) {
    const std::string n = cuda::attention_kernel_name(k);
    reg("attention_fwd_bwd_bf16/" + n + "/vit_B256_H12_T50", [=](benchmark::State& st) { BM_attention(st, k, 256, 12, 50, false); });
    reg("attention_fwd_bwd_bf16/" + n + "/text_B256_H8_T77_causal", [=](benchmark::State& st) { BM_attention(st, k, 256, 8, 77, true); });
  }
  for (cuda::LayerNormKernel k : {cuda::LayerNormKernel::Warp, cuda::LayerNormKernel::Simple}) {
    const std::string n = cuda::layernorm_kernel_name(k);
    reg("layernorm_f32/" + n + "/fwd/[12800,768]", [=](benchmark::State& st) { BM_layernorm(st, k, false); });
    reg("layernorm_f32/" + n + "/bwd/[12800,768]", [=](benchmark::State& st) { BM_layernorm(st, k, true); });
  }
  reg("clip_loss_f32_fwd_bwd/B4096_E512", [](benchmark::State& st) { BM_clip_loss(st, 4096, 512); });
}

}  // namespace
#endif  // CLIPCU_WITH_CUDA

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
#ifdef CLIPCU_WITH_CUDA
  if (clipcu::cuda_available()) {
    register_all();
    benchmark::RunSpecifiedBenchmarks();
  } else {
    std::printf("bench_cuda_ops: no GPU answers: nothing to run (SKIPPED)\n");
  }
#else
  std::printf("bench_cuda_ops: this build has no CUDA backend: nothing to run (SKIPPED)\n");
#endif
  benchmark::Shutdown();
  return 0;
}
