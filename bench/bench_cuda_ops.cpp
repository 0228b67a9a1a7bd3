// Every variant of our CUDA kernels against the vendor baseline, on the same inputs, in the same
// process (issue 8). Benchmark names are  <op>/<dtype>/<case>/<impl> :
//   impl  = one of our variants (the enum names of kernels/cuda/*.cuh: every value the headers
//           declare is run), or a baseline, whose name starts with "base-":
//     gemm       base-cublas (cublasGemmEx) and base-cublaslt (cublasLtMatmul, heuristic's first
//                algorithm); f32 also base-cublas-fp32 (no TF32). Our "cublas" backend is our
//                wrapper around cuBLASLt (+ the epilogue), not a baseline.
//     attention  base-composition: cuBLAS strided-batched GEMMs (S = Q K^T, O = P V and the four
//                backward products) + the softmax kernels of this file (forward and backward), S
//                and dP in float, P and dS in bf16, causal mask inside the softmax.
//     layernorm, embedding, adamw: base-copy, a device-to-device cudaMemcpyAsync moving the same
//                number of bytes (half read, half written): the roofline.
//     clip_loss  base-cublas-3gemm-fp32: the three [B, E] x [E, B]-sized products the math needs
//                (logits, d image, d text) as cuBLAS FP32 GEMMs, without any softmax work.
//   case  = the shape: ViT-B/32, ViT-B/16 and text-tower shapes at batch 256, squares 1024..8192.
// (RN50: the attention pool's k / v projections here; its convolutions are in bench_cuda_conv.)
// Counters: TFLOP/s (GEMM 2 M N K; attention forward + backward 3.5 x 4 B H Tq Tk D, halved when
// causal; clip loss 6 B^2 E) or GB/s (bytes read + written once), err (the norm-wise relative error
// of the validation run against the CPU reference), and x_<baseline> = t(baseline) / t(this): > 1
// means faster than that baseline (set when the baseline ran before it in the same process; the
// registration order puts baselines first); calls = how many calls were timed.
//
// Method: every case first runs once and is compared with the CPU twin (kernels/cpu/, float64) or
// with an exact host sum (GEMM: sampled entries); a mismatch is reported with SkipWithError and
// the case is not timed. Then a warm-up call, one call to size the loop, and 5 Google Benchmark
// iterations of `reps` calls each between two CUDA events on the current stream (manual time,
// reported per call; reps makes the timed calls last about CLIPCU_BENCH_TARGET_MS, default 20).
// Memory-bound cases rotate through several copies of their buffers so that the working set
// exceeds max(4 x L2, 256 MiB) and no iteration is served from L2. Inputs come from a hash of the
// index with 8 significant bits (exact in bf16 and TF32), generated on the device, so the host
// recomputes any input element without a download.
// Without a GPU the program says so and registers nothing (--benchmark_list_tests still lists).
//   [CLIPCU_BENCH_TARGET_MS=20] build/<dir>/bench/bench_cuda_ops [--benchmark_filter=^gemm/bf16/vitb32]
//       [--benchmark_out=cuda_ops.json --benchmark_out_format=json]
// (--benchmark_min_time has no effect: the iteration count is fixed, see run_timed.)
// This file holds device code (the baselines' softmax, the input fills): with the CUDA backend it
// is compiled by nvcc (bench/CMakeLists.txt).
#include <benchmark/benchmark.h>

#include <cstdio>
#include <string>

#include "engine/device.h"

#ifdef CLIPCU_WITH_CUDA
#ifndef __CUDACC__
#error "bench_cuda_ops.cpp holds kernels: compile it as CUDA (bench/CMakeLists.txt sets LANGUAGE CUDA)"
#endif
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "engine/cuda_runtime.h"
#include "engine/variants.h"
#include "kernels/cpu/adamw.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/clip_loss.h"
#include "kernels/cpu/embedding.h"
#include "kernels/cpu/layernorm.h"
#include "kernels/cuda/adamw.cuh"
#include "kernels/cuda/attention.cuh"
#include "kernels/cuda/clip_loss.cuh"
#include "kernels/cuda/common/check.h"
#include "kernels/cuda/embedding.cuh"
#include "kernels/cuda/gemm.cuh"
#include "kernels/cuda/layernorm.cuh"

using namespace clipcu;
using cuda::bf16;

namespace {

// ================================================================ inputs
// splitmix64 of (index, seed), reduced to v / 128 with v an integer in [-128, 127]: 8 significant
// bits, so bf16 and TF32 hold every value exactly and host and device agree bit for bit.
__host__ __device__ inline float hval(uint64_t i, uint32_t seed) {
  uint64_t x = i + (uint64_t(seed) << 40) + 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  x ^= x >> 31;
  return float(int(x >> 56) - 128) * (1.f / 128.f);
}

template <class T>
__host__ __device__ inline T from_f(float v);
template <>
__host__ __device__ inline float from_f<float>(float v) { return v; }
template <>
__host__ __device__ inline bf16 from_f<bf16>(float v) { return __float2bfloat16(v); }
inline double to_d(float v) { return v; }
inline double to_d(bf16 v) { return double(__bfloat162float(v)); }

// The stored value of element i of a buffer filled with (seed, scale); scale a power of two.
template <class T>
double host_val(uint64_t i, uint32_t seed, float scale) { return to_d(from_f<T>(hval(i, seed) * scale)); }

template <class T>
__global__ void fill_kernel(T* p, size_t n, uint32_t seed, float scale) {
  for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x)
    p[i] = from_f<T>(hval(i, seed) * scale);
}

cudaStream_t cs() { return cuda::current_stream(); }

// Device memory owned by a case (cudaMalloc: freed for real when the case ends, so the big
// shapes of one case do not stay cached while the next runs).
template <class T>
struct Dev {
  T* p = nullptr;
  size_t n = 0;
  Dev() = default;
  explicit Dev(size_t count) : n(count) { CLIPCU_CUDA_CHECK(cudaMalloc(&p, std::max<size_t>(n, 1) * sizeof(T))); }
  Dev(size_t count, uint32_t seed, float scale) : Dev(count) { fill(seed, scale); }
  ~Dev() {
    if (p) cudaFree(p);
  }
  Dev(Dev&& o) noexcept : p(std::exchange(o.p, nullptr)), n(o.n) {}
  Dev& operator=(Dev&& o) noexcept {
    std::swap(p, o.p);
    std::swap(n, o.n);
    return *this;
  }
  Dev(const Dev&) = delete;
  Dev& operator=(const Dev&) = delete;
  void fill(uint32_t seed, float scale) {
    if (n == 0) return;
    const unsigned blocks = unsigned(std::min<size_t>((n + 255) / 256, 65536));
    fill_kernel<T><<<blocks, 256, 0, cs()>>>(p, n, seed, scale);
    CLIPCU_CUDA_CHECK_LAUNCH("fill_kernel");
  }
  void zero() { CLIPCU_CUDA_CHECK(cudaMemsetAsync(p, 0, std::max<size_t>(n, 1) * sizeof(T), cs())); }
  // elements [off, off + count) as doubles
  std::vector<double> get(size_t off, size_t count) const {
    std::vector<T> h(count);
    if (count) CLIPCU_CUDA_CHECK(cudaMemcpyAsync(h.data(), p + off, count * sizeof(T), cudaMemcpyDeviceToHost, cs()));
    CLIPCU_CUDA_CHECK(cudaStreamSynchronize(cs()));
    std::vector<double> out(count);
    for (size_t i = 0; i < count; ++i) out[i] = to_d(h[i]);
    return out;
  }
  std::vector<double> get() const { return get(0, n); }
};

template <class T>
void upload(T* dst, const std::vector<T>& src) {
  if (src.empty()) return;
  CLIPCU_CUDA_CHECK(cudaMemcpyAsync(dst, src.data(), src.size() * sizeof(T), cudaMemcpyHostToDevice, cs()));
  CLIPCU_CUDA_CHECK(cudaStreamSynchronize(cs()));
}

// Norm-wise relative error ||got - ref|| / ||ref|| (absolute when ref is all zeros).
double rel_err(const std::vector<double>& got, const std::vector<double>& ref) {
  if (got.size() != ref.size()) return INFINITY;
  double num = 0, den = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double d = got[i] - ref[i];
    num += d * d;
    den += ref[i] * ref[i];
  }
  if (!std::isfinite(num)) return INFINITY;
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

// Bytes the rotating copies of a memory-bound case must span: L2 can then serve no iteration.
size_t g_rotate_bytes = size_t(256) << 20;
int rotation_sets(size_t bytes_per_set) {
  if (bytes_per_set == 0) return 1;
  return int(std::clamp<size_t>((g_rotate_bytes + bytes_per_set - 1) / bytes_per_set, 1, 64));
}

// ================================================================ one case = set-up + validation + timed call
// A case owns its buffers (type-erased holders), the call to time (it gets the iteration number,
// for rotation) and the result of its validation. Google Benchmark calls a benchmark function
// several times while it sizes the iteration count: the case of the last benchmark is kept, so
// set-up and validation run once per benchmark.
struct Case {
  std::vector<std::shared_ptr<void>> keep;  // buffers and handles alive for the case's lifetime
  std::function<void(int64_t)> run;
  double err = 0;      // validation error (norm-wise relative)
  std::string error;   // non-empty: skip with this message
  double flops = 0;    // per call
  double bytes = 0;    // per call
  template <class T>
  T& own(T&& x) {
    auto sp = std::make_shared<std::decay_t<T>>(std::move(x));
    keep.push_back(sp);
    return *sp;
  }
};

std::unique_ptr<Case> g_case;
std::string g_case_id;

Case& cached(const std::string& id, const std::function<std::unique_ptr<Case>()>& make) {
  if (g_case && g_case_id == id) return *g_case;
  g_case.reset();
  g_case_id.clear();
  CLIPCU_CUDA_CHECK(cudaDeviceSynchronize());
  g_case = make();
  g_case_id = id;
  return *g_case;
}

void check_tolerance(Case& c, double tol, const std::string& what) {
  if (!(c.err <= tol)) {
    char buf[256];
    std::snprintf(buf, sizeof buf, "validation failed: %s rel err %.3g > %.3g", what.c_str(), c.err, tol);
    c.error = buf;
  }
}

// Seconds of timed calls per benchmark (CLIPCU_BENCH_TARGET_MS, default 20 ms) and the fixed
// number of Google Benchmark iterations: each iteration runs `reps` calls between two events,
// with reps sized from the warm-up call, so a 5 us kernel and a 70 ms one both take about
// max(target, kIters calls) without Google Benchmark re-running the set-up to size the loop.
double g_target_s = 0.02;
constexpr int kIters = 5;

// Times c.run on the current stream with CUDA events; returns the mean seconds per call.
double run_timed(benchmark::State& st, Case& c) {
  cudaStream_t s = cs();
  cudaEvent_t a, b;
  CLIPCU_CUDA_CHECK(cudaEventCreate(&a));
  CLIPCU_CUDA_CHECK(cudaEventCreate(&b));
  // warm-up (first-launch costs, cuBLAS heuristics), then one timed call to size reps
  c.run(0);
  CLIPCU_CUDA_CHECK(cudaEventRecord(a, s));
  c.run(1);
  CLIPCU_CUDA_CHECK(cudaEventRecord(b, s));
  CLIPCU_CUDA_CHECK(cudaEventSynchronize(b));
  float ms0 = 0;
  CLIPCU_CUDA_CHECK(cudaEventElapsedTime(&ms0, a, b));
  const double per = std::max(double(ms0) * 1e-3, 1e-7);
  const int64_t reps = std::clamp<int64_t>(int64_t(g_target_s / (kIters * per)), 1, 2000);
  double total = 0;
  int64_t calls = 0, it = 1;
  for (auto _ : st) {
    CLIPCU_CUDA_CHECK(cudaEventRecord(a, s));
    for (int64_t r = 0; r < reps; ++r) c.run(++it);
    CLIPCU_CUDA_CHECK(cudaEventRecord(b, s));
    CLIPCU_CUDA_CHECK(cudaEventSynchronize(b));
    float ms = 0;
    CLIPCU_CUDA_CHECK(cudaEventElapsedTime(&ms, a, b));
    st.SetIterationTime(double(ms) * 1e-3 / double(reps));  // Google Benchmark's iteration = one call
    total += double(ms) * 1e-3;
    calls += reps;
  }
  st.counters["calls"] = double(calls);
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  return calls > 0 ? total / double(calls) : 0.0;
}

// Baseline times per case key (the name without its last part), for the x_<baseline> counters.
std::map<std::string, std::map<std::string, double>> g_base_time;

void bench_case(benchmark::State& st, const std::string& key, const std::string& impl,
                const std::function<std::unique_ptr<Case>()>& make) {
  try {
    Case& c = cached(key + "/" + impl, make);
    if (!c.error.empty()) {
      st.SkipWithError(c.error.c_str());
      return;
    }
    const double sec = run_timed(st, c);
    if (c.flops > 0)
      st.counters["TFLOP/s"] = benchmark::Counter(c.flops * 1e-12, benchmark::Counter::kIsIterationInvariantRate);
    if (c.bytes > 0)
      st.counters["GB/s"] = benchmark::Counter(c.bytes * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
    st.counters["err"] = c.err;
    if (sec > 0) {
      if (impl.rfind("base-", 0) == 0) {
        g_base_time[key][impl] = sec;
      } else if (auto f = g_base_time.find(key); f != g_base_time.end()) {
        for (const auto& [b, t] : f->second) st.counters["x_" + b.substr(5)] = t / sec;
      }
    }
  } catch (const std::exception& e) {
    g_case.reset();
    g_case_id.clear();
    st.SkipWithError(e.what());
  }
}

void reg(const std::string& key, const std::string& impl, std::function<std::unique_ptr<Case>()> make) {
  const std::string name = key + "/" + impl;
  auto fn = [key, impl, make](benchmark::State& st) { bench_case(st, key, impl, make); };
  benchmark::RegisterBenchmark(name.c_str(), fn)
      ->UseManualTime()
      ->Iterations(kIters)
      ->Unit(benchmark::kMicrosecond);
}

// ================================================================ cuBLAS in row-major terms
// Row-major C[M, N] = alpha op(A) op(B) + beta C is column-major C^T = op(B)^T op(A)^T: cuBLAS gets
// the operands swapped. A is [M, K] ([K, M] when ta), B is [K, N] ([N, K] when tb). batch > 1:
// strided batches (strides in elements).
struct RmGemm {
  bool ta = false, tb = false;
  int64_t M = 0, N = 0, K = 0;
  cudaDataType ab = CUDA_R_16BF, c = CUDA_R_16BF;
  cublasComputeType_t compute = CUBLAS_COMPUTE_32F;
  int64_t batch = 1, sA = 0, sB = 0, sC = 0;
  void operator()(cublasHandle_t h, float alpha, const void* A, const void* B, float beta, void* C) const {
    const cublasOperation_t opA = ta ? CUBLAS_OP_T : CUBLAS_OP_N, opB = tb ? CUBLAS_OP_T : CUBLAS_OP_N;
    const int lda = int(ta ? M : K), ldb = int(tb ? K : N), ldc = int(N);
    if (batch == 1) {
      CLIPCU_CUBLAS_CHECK(cublasGemmEx(h, opB, opA, int(N), int(M), int(K), &alpha, B, ab, ldb, A, ab, lda, &beta, C, c,
                                       ldc, compute, CUBLAS_GEMM_DEFAULT));
    } else {
      CLIPCU_CUBLAS_CHECK(cublasGemmStridedBatchedEx(h, opB, opA, int(N), int(M), int(K), &alpha, B, ab, ldb, sB, A, ab,
                                                     lda, sA, &beta, C, c, ldc, sC, int(batch), compute,
                                                     CUBLAS_GEMM_DEFAULT));
    }
  }
};

// cublasLtMatmul with the heuristic's first algorithm for this shape (same operand swap).
struct LtGemm {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t la = nullptr, lb = nullptr, lc = nullptr;
  cublasLtMatmulAlgo_t algo{};
  LtGemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, cudaDataType type, cublasComputeType_t compute) {
    CLIPCU_CUBLAS_CHECK(cublasLtMatmulDescCreate(&op, compute, CUDA_R_32F));
    const cublasOperation_t opA = tb ? CUBLAS_OP_T : CUBLAS_OP_N;  // cuBLASLt's A is our B
    const cublasOperation_t opB = ta ? CUBLAS_OP_T : CUBLAS_OP_N;
    CLIPCU_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &opA, sizeof opA));
    CLIPCU_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &opB, sizeof opB));
    // layouts as stored, column-major: our B is [N, K] (tb: [K, N]), our A is [K, M] (ta: [M, K])
    CLIPCU_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&la, type, tb ? K : N, tb ? N : K, tb ? K : N));
    CLIPCU_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&lb, type, ta ? M : K, ta ? K : M, ta ? M : K));
    CLIPCU_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&lc, type, N, M, N));
    cublasLtMatmulPreference_t pref = nullptr;
    CLIPCU_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    const uint64_t ws = cuda::kCublasLtWorkspaceBytes;
    CLIPCU_CUBLAS_CHECK(
        cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws));
    cublasLtMatmulHeuristicResult_t res{};
    int found = 0;
    const cublasStatus_t s =
        cublasLtMatmulAlgoGetHeuristic(cuda::cublaslt_handle(), op, la, lb, lc, lc, pref, 1, &res, &found);
    cublasLtMatmulPreferenceDestroy(pref);
    if (s != CUBLAS_STATUS_SUCCESS || found == 0) {
      destroy();
      throw std::runtime_error("cuBLASLt heuristic found no algorithm for this shape");
    }
    algo = res.algo;
  }
  void destroy() {
    if (lc) cublasLtMatrixLayoutDestroy(lc);
    if (lb) cublasLtMatrixLayoutDestroy(lb);
    if (la) cublasLtMatrixLayoutDestroy(la);
    if (op) cublasLtMatmulDescDestroy(op);
    op = nullptr, la = lb = lc = nullptr;
  }
  ~LtGemm() { destroy(); }
  LtGemm(const LtGemm&) = delete;
  LtGemm& operator=(const LtGemm&) = delete;
  void operator()(const void* A, const void* B, void* C) const {
    const float alpha = 1.f, beta = 0.f;
    CLIPCU_CUBLAS_CHECK(cublasLtMatmul(cuda::cublaslt_handle(), op, &alpha, B, la, A, lb, &beta, C, lc, C, lc, &algo,
                                       cuda::cublaslt_workspace(), cuda::kCublasLtWorkspaceBytes, cs()));
  }
};

// ================================================================ GEMM
enum class GemmImpl { Ours, BaseCublas, BaseCublasLt, BaseCublasFp32 };

struct GemmSpec {
  std::string name;  // case name, e.g. vitb32_qkv_fwd_NT
  int64_t M, N, K;
  bool ta, tb;
};

// Sampled entries of C = op(A) op(B) against an exact double sum over the hashed inputs.
template <class T>
double gemm_sample_err(const GemmSpec& g, const T* C, uint32_t seed_a, uint32_t seed_b, float sa, float sb) {
  std::vector<std::pair<int64_t, int64_t>> at = {{0, 0}, {g.M - 1, g.N - 1}, {0, g.N - 1}, {g.M - 1, 0}};
  for (uint64_t s = 0; s < 60; ++s) {
    const uint64_t h = uint64_t(hval(s, 77) * 128 + 128) * 1000003ull + s * 7919ull;
    at.push_back({int64_t((h * 2654435761ull) % uint64_t(g.M)), int64_t((h * 40503ull + s) % uint64_t(g.N))});
  }
  std::vector<double> got, ref;
  for (auto [m, n] : at) {
    double r = 0;
    for (int64_t k = 0; k < g.K; ++k) {
      const double a = host_val<T>(uint64_t(g.ta ? k * g.M + m : m * g.K + k), seed_a, sa);
      const double b = host_val<T>(uint64_t(g.tb ? n * g.K + k : k * g.N + n), seed_b, sb);
      r += a * b;
    }
    T v;
    CLIPCU_CUDA_CHECK(cudaMemcpy(&v, C + m * g.N + n, sizeof(T), cudaMemcpyDeviceToHost));
    got.push_back(to_d(v));
    ref.push_back(r);
  }
  return rel_err(got, ref);
}

// fp32: the f32 case's full-precision cuBLAS baseline; otherwise f32 means TF32 tensor cores.
template <class T>
std::unique_ptr<Case> make_gemm(const GemmSpec& g, GemmImpl impl, cuda::GemmBackend backend) {
  auto c = std::make_unique<Case>();
  constexpr bool kBf16 = std::is_same_v<T, bf16>;
  auto& A = c->own(Dev<T>(size_t(g.M * g.K), 1, 1.f));
  auto& B = c->own(Dev<T>(size_t(g.K * g.N), 2, 1.f));
  auto& C = c->own(Dev<T>(size_t(g.M * g.N)));
  const cudaDataType type = kBf16 ? CUDA_R_16BF : CUDA_R_32F;
  const bool tf32 = !kBf16 && impl != GemmImpl::BaseCublasFp32;
  const cublasComputeType_t compute = tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
  switch (impl) {
    case GemmImpl::Ours: {
      auto& p = c->own(cuda::GemmParams<T>{});
      p.trans_a = g.ta, p.trans_b = g.tb, p.M = g.M, p.N = g.N, p.K = g.K;
      p.A = A.p, p.B = B.p, p.C = C.p, p.backend = backend;
      p.lt = cuda::cublaslt_handle(), p.cublas = cuda::cublas_handle();
      p.workspace = cuda::cublaslt_workspace(), p.workspace_bytes = cuda::kCublasLtWorkspaceBytes;
      p.allow_tf32 = true;
      c->run = [&p](int64_t) { cuda::gemm(p, cs()); };
      break;
    }
    case GemmImpl::BaseCublas:
    case GemmImpl::BaseCublasFp32: {
      RmGemm r;
      r.ta = g.ta, r.tb = g.tb, r.M = g.M, r.N = g.N, r.K = g.K, r.ab = type, r.c = type, r.compute = compute;
      c->run = [r, &A, &B, &C](int64_t) { r(cuda::cublas_handle(), 1.f, A.p, B.p, 0.f, C.p); };
      break;
    }
    case GemmImpl::BaseCublasLt: {
      auto lt = std::make_shared<LtGemm>(g.ta, g.tb, g.M, g.N, g.K, type, compute);
      c->keep.push_back(lt);
      LtGemm* l = lt.get();
      c->run = [l, &A, &B, &C](int64_t) { (*l)(A.p, B.p, C.p); };
      break;
    }
  }
  c->flops = 2.0 * double(g.M) * double(g.N) * double(g.K);
  C.zero();
  c->run(0);
  c->err = gemm_sample_err<T>(g, C.p, 1, 2, 1.f, 1.f);
  // bf16: the output's rounding (2^-9) dominates; f32 inputs are exact in TF32, so only the
  // accumulation order differs from the double sum.
  check_tolerance(*c, kBf16 ? 1e-2 : 2e-3, "sampled entries of C");
  return c;
}

void register_gemm() {
  struct Model {
    const char* name;
    int64_t M, W;  // rows (batch 256 x tokens), width
  };
  // ViT-B/32: 50 tokens; ViT-B/16: 197 tokens; text tower: 77 tokens, width 512.
  const Model models[] = {{"vitb32", 256 * 50, 768}, {"vitb16", 256 * 197, 768}, {"text", 256 * 77, 512}};
  std::vector<GemmSpec> bf16_specs;
  for (const Model& m : models) {
    struct Layer {
      const char* name;
      int64_t N, K;
    };
    const Layer layers[] = {{"qkv", 3 * m.W, m.W}, {"proj", m.W, m.W}, {"fc", 4 * m.W, m.W}, {"fc2", m.W, 4 * m.W}};
    for (const Layer& l : layers) {
      const std::string base = std::string(m.name) + "_" + l.name;
      // forward y = x W^T, dX = dY W, dW = dY^T X
      bf16_specs.push_back({base + "_fwd_NT", m.M, l.N, l.K, false, true});
      bf16_specs.push_back({base + "_dX_NN", m.M, l.K, l.N, false, false});
      bf16_specs.push_back({base + "_dW_TN", l.N, l.K, m.M, true, false});
    }
  }
  // RN50's attention pooling: k / v projections over the 7 x 7 + 1 tokens, width 2048
  {
    const int64_t M = 256 * 50, W = 2048;
    bf16_specs.push_back({"rn50_attnpool_kv_fwd_NT", M, W, W, false, true});
    bf16_specs.push_back({"rn50_attnpool_kv_dX_NN", M, W, W, false, false});
    bf16_specs.push_back({"rn50_attnpool_kv_dW_TN", W, W, M, true, false});
  }
  std::vector<GemmSpec> squares;
  for (int64_t n : {1024, 2048, 4096, 8192})
    squares.push_back({"square" + std::to_string(n) + "_NN", n, n, n, false, false});
  for (const GemmSpec& s : squares) bf16_specs.push_back(s);

  auto backends = named_values<cuda::GemmBackend>(cuda::gemm_backend_name);
  // the Hopper kernel only where it can run (every name is listed when there is no GPU to ask)
  if (clipcu::cuda_available() && !cuda::gemm_wgmma_available(0))
    backends.erase(std::remove(backends.begin(), backends.end(), cuda::GemmBackend::Wgmma), backends.end());
  auto add = [&](const GemmSpec& g, bool f32) {
    const std::string key = std::string("gemm/") + (f32 ? "f32" : "bf16") + "/" + g.name;
    auto make = [f32](GemmSpec s, GemmImpl impl, cuda::GemmBackend be) -> std::function<std::unique_ptr<Case>()> {
      if (f32) return [=] { return make_gemm<float>(s, impl, be); };
      return [=] { return make_gemm<bf16>(s, impl, be); };
    };
    reg(key, "base-cublas", make(g, GemmImpl::BaseCublas, cuda::GemmBackend::Cublas));
    reg(key, "base-cublaslt", make(g, GemmImpl::BaseCublasLt, cuda::GemmBackend::Cublas));
    if (f32) reg(key, "base-cublas-fp32", make(g, GemmImpl::BaseCublasFp32, cuda::GemmBackend::Cublas));
    const bool fwd_or_square = g.name.find("_fwd_") != std::string::npos || g.name.rfind("square", 0) == 0;
    for (cuda::GemmBackend be : backends) {
      // the SIMT reference is slow: one point per layer shape is enough
      if (be == cuda::GemmBackend::Simple && !fwd_or_square) continue;
      if (be == cuda::GemmBackend::Wgmma && f32) continue;  // float runs the TensorCore kernel there
      reg(key, cuda::gemm_backend_name(be), make(g, GemmImpl::Ours, be));
    }
  };
  for (const GemmSpec& g : bf16_specs) add(g, false);
  for (const GemmSpec& g : squares) add(g, true);  // f32 storage: TF32 tensor cores (and full FP32)
}

// ================================================================ attention
// The baseline composition's softmax: one warp per row of S ([rows, Tk], float, already scaled),
// keys j > i masked when causal (i = row % Tq); P in bf16 (the next GEMM's input).
__global__ void softmax_rows_kernel(const float* __restrict__ S,  // [R, Tk]
                                    bf16* __restrict__ P,         // [R, Tk]
                                    int64_t R, int Tq, int Tk, bool causal) {
  const int64_t row = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = int(threadIdx.x % 32);
  if (row >= R) return;
  const int lim = causal ? int(row % Tq) + 1 : Tk;
  const float* s = S + row * Tk;
  float m = -INFINITY;
  for (int j = lane; j < lim; j += 32) m = fmaxf(m, s[j]);
  for (int o = 16; o > 0; o /= 2) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
  float sum = 0.f;
  for (int j = lane; j < lim; j += 32) sum += __expf(s[j] - m);
  for (int o = 16; o > 0; o /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, o);
  const float inv = 1.f / sum;
  bf16* p = P + row * Tk;
  for (int j = lane; j < Tk; j += 32) p[j] = __float2bfloat16(j < lim ? __expf(s[j] - m) * inv : 0.f);
}

// dS = P (dP - sum_j P_j dP_j) per row (masked entries have P = 0, so dS = 0 there).
__global__ void softmax_rows_backward_kernel(const bf16* __restrict__ P,    // [R, Tk]
                                             const float* __restrict__ dP,  // [R, Tk]
                                             bf16* __restrict__ dS,         // [R, Tk]
                                             int64_t R, int Tk) {
  const int64_t row = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = int(threadIdx.x % 32);
  if (row >= R) return;
  const bf16* p = P + row * Tk;
  const float* dp = dP + row * Tk;
  float dot = 0.f;
  for (int j = lane; j < Tk; j += 32) dot += __bfloat162float(p[j]) * dp[j];
  for (int o = 16; o > 0; o /= 2) dot += __shfl_xor_sync(0xffffffffu, dot, o);
  bf16* ds = dS + row * Tk;
  for (int j = lane; j < Tk; j += 32) ds[j] = __float2bfloat16(__bfloat162float(p[j]) * (dp[j] - dot));
}

struct AttnSpec {
  std::string name;
  int64_t B, H, T, D;
  bool causal;
};

// impl < 0: the cuBLAS + softmax composition; otherwise our AttentionKernel of that value.
std::unique_ptr<Case> make_attention(const AttnSpec& sp, int impl) {
  auto c = std::make_unique<Case>();
  const int64_t B = sp.B, H = sp.H, T = sp.T, D = sp.D, BH = B * H;
  const size_t n = size_t(BH * T * D);
  auto& q = c->own(Dev<bf16>(n, 11, 1.f));
  auto& k = c->own(Dev<bf16>(n, 12, 1.f));
  auto& v = c->own(Dev<bf16>(n, 13, 1.f));
  auto& dout = c->own(Dev<bf16>(n, 14, 1.f));
  auto& out = c->own(Dev<bf16>(n));
  auto& dq = c->own(Dev<bf16>(n));
  auto& dk = c->own(Dev<bf16>(n));
  auto& dv = c->own(Dev<bf16>(n));
  const float scale = 1.f / std::sqrt(float(D));
  if (impl >= 0) {
    auto& s = c->own(cuda::AttentionShape{});
    s.B = B, s.H = H, s.Tq = s.Tk = T, s.D = D, s.causal = sp.causal, s.kernel = cuda::AttentionKernel(impl);
    auto& lse = c->own(Dev<float>(size_t(BH * T)));
    auto& ws = c->own(Dev<float>(cuda::attention_backward_workspace_floats(s)));
    auto& a = c->own(cuda::AttentionArgs<bf16>{});
    a.q = q.p, a.k = k.p, a.v = v.p, a.out = out.p, a.lse = lse.p, a.dout = dout.p;
    a.dq = dq.p, a.dk = dk.p, a.dv = dv.p, a.workspace = ws.p;
    c->run = [&s, &a](int64_t) {
      cuda::attention_forward(s, a, cs());
      cuda::attention_backward(s, a, cs());  // accumulates into dq, dk, dv (zeroed before validation)
    };
  } else {
    const size_t tt = size_t(BH * T * T);
    auto& S = c->own(Dev<float>(tt));
    auto& P = c->own(Dev<bf16>(tt));
    auto& dP = c->own(Dev<float>(tt));
    auto& dS = c->own(Dev<bf16>(tt));
    auto mk = [&](bool ta, bool tb, int64_t M, int64_t N, int64_t K, cudaDataType cty) {
      RmGemm r;
      r.ta = ta, r.tb = tb, r.M = M, r.N = N, r.K = K, r.ab = CUDA_R_16BF, r.c = cty, r.compute = CUBLAS_COMPUTE_32F;
      r.batch = BH;
      r.sA = (ta ? K * M : M * K), r.sB = (tb ? N * K : K * N), r.sC = M * N;
      return r;
    };
    const RmGemm qk = mk(false, true, T, T, D, CUDA_R_32F);    // S = Q K^T
    const RmGemm pv = mk(false, false, T, D, T, CUDA_R_16BF);  // O = P V
    const RmGemm ptd = mk(true, false, T, D, T, CUDA_R_16BF);  // dV = P^T dO
    const RmGemm dov = mk(false, true, T, T, D, CUDA_R_32F);   // dP = dO V^T
    const RmGemm dsk = mk(false, false, T, D, T, CUDA_R_16BF); // dQ = scale dS K
    const RmGemm dsq = mk(true, false, T, D, T, CUDA_R_16BF);  // dK = scale dS^T Q
    const int64_t R = BH * T;
    const unsigned blocks = unsigned((R * 32 + 255) / 256);
    const bool causal = sp.causal;
    c->run = [=, &q, &k, &v, &dout, &out, &dq, &dk, &dv, &S, &P, &dP, &dS](int64_t) {
      cublasHandle_t h = cuda::cublas_handle();
      qk(h, scale, q.p, k.p, 0.f, S.p);
      softmax_rows_kernel<<<blocks, 256, 0, cs()>>>(S.p, P.p, R, int(T), int(T), causal);
      CLIPCU_CUDA_CHECK_LAUNCH("softmax_rows_kernel");
      pv(h, 1.f, P.p, v.p, 0.f, out.p);
      ptd(h, 1.f, P.p, dout.p, 0.f, dv.p);
      dov(h, 1.f, dout.p, v.p, 0.f, dP.p);
      softmax_rows_backward_kernel<<<blocks, 256, 0, cs()>>>(P.p, dP.p, dS.p, R, int(T));
      CLIPCU_CUDA_CHECK_LAUNCH("softmax_rows_backward_kernel");
      dsk(h, scale, dS.p, k.p, 0.f, dq.p);
      dsq(h, scale, dS.p, q.p, 0.f, dk.p);
    };
  }
  const double fwd = 4.0 * double(BH) * double(T) * double(T) * double(D) * (sp.causal ? 0.5 : 1.0);
  c->flops = 3.5 * fwd;  // backward = 2.5 x forward (five products against two)

  // validation: first and last batch element against the CPU twin in float64
  dq.zero(), dk.zero(), dv.zero();
  c->run(0);
  cpu::AttentionParams p;
  p.B = 1, p.H = H, p.Tq = p.Tk = T, p.D = D, p.causal = sp.causal;
  const size_t slab = size_t(H * T * D);
  double err = 0;
  for (int64_t b : {int64_t(0), B - 1}) {
    std::vector<double> hq(slab), hk(slab), hv(slab), hdo(slab);
    for (size_t i = 0; i < slab; ++i) {
      const uint64_t g = uint64_t(b) * slab + i;
      hq[i] = host_val<bf16>(g, 11, 1.f);
      hk[i] = host_val<bf16>(g, 12, 1.f);
      hv[i] = host_val<bf16>(g, 13, 1.f);
      hdo[i] = host_val<bf16>(g, 14, 1.f);
    }
    std::vector<double> ho(slab), hl(size_t(H * T)), hdq(slab, 0.0), hdk(slab, 0.0), hdv(slab, 0.0);
    cpu::attention_forward<double>(p, hq.data(), hk.data(), hv.data(), ho.data(), hl.data());
    cpu::attention_backward<double>(p, hq.data(), hk.data(), hv.data(), ho.data(), hl.data(), hdo.data(), hdq.data(),
                                    hdk.data(), hdv.data());
    const size_t off = size_t(b) * slab;
    err = std::max({err, rel_err(out.get(off, slab), ho), rel_err(dq.get(off, slab), hdq),
                    rel_err(dk.get(off, slab), hdk), rel_err(dv.get(off, slab), hdv)});
  }
  c->err = err;
  // ours: the project's bf16 tolerance; the composition rounds P and dS to bf16 between its
  // GEMMs (as an unfused bf16 framework path does), which costs a little more.
  check_tolerance(*c, impl >= 0 ? 1e-2 : 3e-2, "out / dq / dk / dv of batch 0 and B-1");
  return c;
}

void register_attention() {
  const AttnSpec specs[] = {{"vitb32_B256_H12_T50_D64", 256, 12, 50, 64, false},
                            {"vitb16_B256_H12_T197_D64", 256, 12, 197, 64, false},
                            {"text_B256_H8_T77_D64_causal", 256, 8, 77, 64, true}};
  const auto kernels = named_values<cuda::AttentionKernel>(cuda::attention_kernel_name);
  for (const AttnSpec& s : specs) {
    const std::string key = "attention_fwd_bwd/bf16/" + s.name;
    reg(key, "base-composition", [s] { return make_attention(s, -1); });
    for (cuda::AttentionKernel k : kernels)
      reg(key, cuda::attention_kernel_name(k), [s, k] { return make_attention(s, int(k)); });
  }
}

// ================================================================ memory-bound ops and their roofline
// The roofline of an op that moves `bytes` (read + written): a device-to-device copy of bytes / 2,
// rotating over enough buffer pairs to defeat L2.
std::unique_ptr<Case> make_copy(double bytes) {
  auto c = std::make_unique<Case>();
  const size_t half = size_t(bytes / 2);
  const int sets = rotation_sets(2 * half);
  auto& src = c->own(std::vector<Dev<uint8_t>>());
  auto& dst = c->own(std::vector<Dev<uint8_t>>());
  for (int i = 0; i < sets; ++i) {
    src.emplace_back(half);
    dst.emplace_back(half);
    src.back().zero();
  }
  c->run = [&src, &dst, half, sets](int64_t it) {
    const size_t i = size_t(it % sets);
    CLIPCU_CUDA_CHECK(cudaMemcpyAsync(dst[i].p, src[i].p, half, cudaMemcpyDeviceToDevice, cs()));
  };
  c->bytes = double(2 * half);
  c->run(0);
  CLIPCU_CUDA_CHECK(cudaStreamSynchronize(cs()));
  return c;
}

// layer norm forward (backward = false) or backward, rows [N, C], our kernel of value impl.
template <class T>
std::unique_ptr<Case> make_layernorm(int64_t N, int64_t C, bool backward, int impl) {
  auto c = std::make_unique<Case>();
  const size_t nc = size_t(N * C);
  const double bytes = double(nc) * sizeof(T) * (backward ? 4.0 : 2.0) + 2.0 * double(N) * 4;  // + mean, rstd
  const int sets = rotation_sets(static_cast<size_t>(bytes));
  const auto kernel = cuda::LayerNormKernel(impl);
  auto& w = c->own(Dev<T>(size_t(C), 3, 1.f));
  auto& bias = c->own(Dev<T>(size_t(C), 4, 1.f));
  auto& dw = c->own(Dev<T>(static_cast<size_t>(C)));
  auto& db = c->own(Dev<T>(static_cast<size_t>(C)));
  auto& ws = c->own(Dev<float>(cuda::layernorm_backward_workspace_floats(N, C)));
  struct Set {
    Dev<T> x, y, dy, dx;
    Dev<float> mean, rstd;
  };
  auto& sets_v = c->own(std::vector<Set>());
  for (int i = 0; i < sets; ++i) {
    Set s;
    s.x = Dev<T>(nc, 5, 1.f);
    s.mean = Dev<float>(static_cast<size_t>(N));
    s.rstd = Dev<float>(static_cast<size_t>(N));
    if (backward) {
      s.dy = Dev<T>(nc, 6, 1.f);
      s.dx = Dev<T>(nc);
      s.dx.zero();
    }
    s.y = Dev<T>(backward ? 0 : nc);
    sets_v.push_back(std::move(s));
  }
  auto fwd_args = [=, &w, &bias](Set& s, int64_t rows) {
    cuda::LayerNormForwardArgs<T> f;
    f.N = rows, f.C = C, f.x = s.x.p, f.weight = w.p, f.bias = bias.p, f.y = backward ? s.dx.p : s.y.p;
    f.mean = s.mean.p, f.rstd = s.rstd.p, f.kernel = kernel;
    return f;
  };
  auto bwd_args = [=, &w, &dw, &db, &ws](Set& s, int64_t rows) {
    cuda::LayerNormBackwardArgs<T> g;
    g.N = rows, g.C = C, g.dy = s.dy.p, g.h = s.x.p, g.weight = w.p, g.mean = s.mean.p, g.rstd = s.rstd.p;
    g.dx = s.dx.p, g.dweight = dw.p, g.dbias = db.p, g.workspace = ws.p, g.kernel = kernel;
    return g;
  };
  if (backward) {
    // mean / rstd of every set (the forward output lands in dx, zeroed afterwards)
    for (Set& s : sets_v) cuda::layernorm_forward(fwd_args(s, N), cs());
    for (Set& s : sets_v) s.dx.zero();
    c->run = [&sets_v, bwd_args, N, sets](int64_t it) {
      cuda::layernorm_backward(bwd_args(sets_v[size_t(it % sets)], N), cs());
    };
  } else {
    c->run = [&sets_v, fwd_args, N, sets](int64_t it) {
      cuda::layernorm_forward(fwd_args(sets_v[size_t(it % sets)], N), cs());
    };
  }
  c->bytes = bytes;

  // validation on the first rows (the same kernels; a prefix keeps the CPU reference cheap)
  const int64_t Nv = std::min<int64_t>(N, 263);
  const size_t nv = size_t(Nv * C);
  std::vector<double> hx(nv), hdy(nv), hw(static_cast<size_t>(C)), hb(static_cast<size_t>(C));
  for (size_t i = 0; i < nv; ++i) {
    hx[i] = host_val<T>(i, 5, 1.f);
    hdy[i] = host_val<T>(i, 6, 1.f);
  }
  for (size_t i = 0; i < size_t(C); ++i) {
    hw[i] = host_val<T>(i, 3, 1.f);
    hb[i] = host_val<T>(i, 4, 1.f);
  }
  std::vector<double> hy(nv), hm(static_cast<size_t>(Nv)), hr(static_cast<size_t>(Nv));
  cpu::layernorm_forward<double>(Nv, C, 1e-5, hx.data(), hw.data(), hb.data(), hy.data(), hm.data(), hr.data());
  Set& s0 = sets_v[0];
  if (backward) {
    cuda::layernorm_forward(fwd_args(s0, Nv), cs());  // mean / rstd of the rows (y lands in dx)
    s0.dx.zero(), dw.zero(), db.zero();
    cuda::layernorm_backward(bwd_args(s0, Nv), cs());
    std::vector<double> hdx(nv, 0.0), hdw(size_t(C), 0.0), hdb(size_t(C), 0.0);
    cpu::layernorm_backward<double>(Nv, C, hdy.data(), hx.data(), hw.data(), hm.data(), hr.data(), hdx.data(),
                                    hdw.data(), hdb.data());
    c->err = std::max({rel_err(s0.dx.get(0, nv), hdx), rel_err(dw.get(), hdw), rel_err(db.get(), hdb)});
  } else {
    cuda::layernorm_forward(fwd_args(s0, Nv), cs());
    c->err = rel_err(s0.y.get(0, nv), hy);
  }
  const bool f32 = std::is_same_v<T, float>;
  check_tolerance(*c, f32 ? (backward ? 1e-4 : 1e-5) : 1e-2, backward ? "dx / dweight / dbias" : "y");
  return c;
}

void register_layernorm() {
  struct Shape {
    const char* name;
    int64_t N, C;
    bool f32;
  };
  const Shape shapes[] = {{"vitb32_12800x768", 12800, 768, true},
                          {"vitb32_12800x768", 12800, 768, false},
                          {"vitb16_50432x768", 50432, 768, false},
                          {"text_19712x512", 19712, 512, false},
                          {"text_19712x512", 19712, 512, true}};
  const auto kernels = named_values<cuda::LayerNormKernel>(cuda::layernorm_kernel_name);
  for (const Shape& s : shapes)
    for (bool bwd : {false, true}) {
      const std::string key = std::string("layernorm/") + (s.f32 ? "f32/" : "bf16/") + s.name + (bwd ? "/bwd" : "/fwd");
      const double elt = s.f32 ? 4.0 : 2.0;
      const double bytes = double(s.N * s.C) * elt * (bwd ? 4.0 : 2.0) + 2.0 * double(s.N) * 4;
      reg(key, "base-copy", [bytes] { return make_copy(bytes); });
      for (cuda::LayerNormKernel k : kernels) {
        if (!bwd && k == cuda::LayerNormKernel::Pipelined) continue;  // its forward is Warp's
        const int64_t N = s.N, C = s.C;
        const int ki = int(k);
        if (s.f32)
          reg(key, cuda::layernorm_kernel_name(k), [=] { return make_layernorm<float>(N, C, bwd, ki); });
        else
          reg(key, cuda::layernorm_kernel_name(k), [=] { return make_layernorm<bf16>(N, C, bwd, ki); });
      }
    }
}

// Token + positional embedding of the text tower (bf16, int32 ids): forward gather, and the
// deterministic scatter-add backward of the table. ids: a hash of the position over [0, V).
std::vector<int32_t> text_ids(int64_t N, int64_t V) {
  std::vector<int32_t> ids(static_cast<size_t>(N));
  for (int64_t i = 0; i < N; ++i) {
    const uint64_t h = uint64_t(hval(uint64_t(i), 31) * 128 + 128) * 389ull + uint64_t(i) * 7919ull;
    ids[size_t(i)] = int32_t(h % uint64_t(V));
  }
  return ids;
}

std::unique_ptr<Case> make_embedding(int64_t B, int64_t Tn, int64_t V, int64_t C, bool backward) {
  auto c = std::make_unique<Case>();
  const int64_t N = B * Tn;
  const size_t nc = size_t(N * C);
  const std::vector<int32_t> ids = text_ids(N, V);
  auto& table = c->own(Dev<bf16>(size_t(V * C), 21, 1.f));
  auto& pos = c->own(Dev<bf16>(size_t(Tn * C), 22, 1.f));
  auto& dids = c->own(Dev<int32_t>(static_cast<size_t>(N)));
  upload(dids.p, ids);
  auto& flag = c->own(Dev<int>(1));
  flag.zero();
  if (!backward) {
    c->bytes = 2.0 * double(nc) * 2 + double(N) * 4;  // table rows read, output written, ids
    const int sets = rotation_sets(size_t(c->bytes));
    auto& outs = c->own(std::vector<Dev<bf16>>());
    for (int i = 0; i < sets; ++i) outs.emplace_back(nc);
    c->run = [=, &table, &pos, &dids, &outs, &flag](int64_t it) {
      bf16* out = outs[size_t(it % sets)].p;
      cuda::embedding_forward<bf16, int32_t>(N, Tn, V, C, table.p, dids.p, pos.p, out, flag.p, cs());
    };
    c->run(0);
    // reference: table[id] + pos[t] on the first 300 positions
    const int64_t Nv = std::min<int64_t>(N, 300);
    std::vector<double> ref(size_t(Nv * C));
    for (int64_t n = 0; n < Nv; ++n)
      for (int64_t ch = 0; ch < C; ++ch) {
        const double t = host_val<bf16>(uint64_t(ids[size_t(n)]) * C + ch, 21, 1.f);
        const double p = host_val<bf16>(uint64_t(n % Tn) * C + ch, 22, 1.f);
        ref[size_t(n * C + ch)] = to_d(__float2bfloat16(float(t + p)));  // the output's rounding
      }
    c->err = rel_err(outs[0].get(0, size_t(Nv * C)), ref);
    check_tolerance(*c, 1e-2, "rows of table[id] + pos");
    return c;
  }
  const cuda::EmbeddingIndex ix = cuda::embedding_build_index<int32_t>(N, V, ids.data());
  const int64_t U = int64_t(ix.rows.size());
  auto& rows = c->own(Dev<int32_t>(ix.rows.size()));
  auto& offsets = c->own(Dev<int32_t>(ix.offsets.size()));
  auto& positions = c->own(Dev<int32_t>(ix.positions.size()));
  upload(rows.p, ix.rows), upload(offsets.p, ix.offsets), upload(positions.p, ix.positions);
  auto& gtable = c->own(Dev<bf16>(size_t(V * C)));
  c->bytes = double(nc) * 2 + 2.0 * double(U * C) * 2 + double(N) * 4;  // grad rows; table rows read + written
  const int sets = rotation_sets(size_t(double(nc) * 2));
  auto& gouts = c->own(std::vector<Dev<bf16>>());
  for (int i = 0; i < sets; ++i) gouts.emplace_back(nc, 23, 1.f);
  c->run = [=, &rows, &offsets, &positions, &gouts, &gtable](int64_t it) {
    cuda::embedding_backward<bf16>(U, C, rows.p, offsets.p, positions.p, gouts[size_t(it % sets)].p, gtable.p, cs());
  };
  gtable.zero();
  c->run(0);
  std::vector<double> gout(nc), ref(size_t(V * C), 0.0);
  for (size_t i = 0; i < nc; ++i) gout[i] = host_val<bf16>(i, 23, 1.f);
  cpu::embedding_backward<double, int32_t>(N, V, C, ids.data(), gout.data(), ref.data());
  c->err = rel_err(gtable.get(), ref);
  check_tolerance(*c, 1e-2, "table gradient");
  return c;
}

// Contrastive loss forward + backward, float32: ours against three cuBLAS FP32 GEMMs of the same
// sizes (the products the math needs; a composition would add the softmax passes on top).
std::unique_ptr<Case> make_clip_loss(int64_t B, int64_t E, bool baseline) {
  auto c = std::make_unique<Case>();
  const size_t be = size_t(B * E);
  auto& img = c->own(Dev<float>(be, 41, 1.f));
  auto& txt = c->own(Dev<float>(be, 42, 1.f));
  c->flops = 6.0 * double(B) * double(B) * double(E);
  if (baseline) {
    auto& L = c->own(Dev<float>(size_t(B * B)));
    auto& gi = c->own(Dev<float>(be));
    auto& gt = c->own(Dev<float>(be));
    RmGemm logits, dimg, dtxt;
    logits.ta = false, logits.tb = true, logits.M = B, logits.N = B, logits.K = E;  // L = I T^T
    dimg.M = B, dimg.N = E, dimg.K = B;                                               // dI = dL T
    dtxt.ta = true, dtxt.M = B, dtxt.N = E, dtxt.K = B;                               // dT = dL^T I
    for (RmGemm* r : {&logits, &dimg, &dtxt}) r->ab = r->c = CUDA_R_32F, r->compute = CUBLAS_COMPUTE_32F;
    c->run = [=, &img, &txt, &L, &gi, &gt](int64_t) {
      cublasHandle_t h = cuda::cublas_handle();
      logits(h, 1.f, img.p, txt.p, 0.f, L.p);
      dimg(h, 1.f, L.p, txt.p, 0.f, gi.p);
      dtxt(h, 1.f, L.p, img.p, 0.f, gt.p);
    };
    c->run(0);
    GemmSpec g{"logits", B, B, E, false, true};
    c->err = gemm_sample_err<float>(g, L.p, 41, 42, 1.f, 1.f);
    check_tolerance(*c, 1e-5, "sampled logits");
    return c;
  }
  auto& ls = c->own(Dev<float>(1));
  const float log_scale = std::log(1.f / 0.07f);
  upload(ls.p, std::vector<float>{log_scale});
  auto& in = c->own(Dev<float>(be));
  auto& tn = c->own(Dev<float>(be));
  auto& inorm = c->own(Dev<float>(static_cast<size_t>(B)));
  auto& tnorm = c->own(Dev<float>(static_cast<size_t>(B)));
  auto& r = c->own(Dev<float>(static_cast<size_t>(B)));
  auto& col = c->own(Dev<float>(static_cast<size_t>(B)));
  auto& loss = c->own(Dev<float>(1));
  auto& scratch = c->own(Dev<float>(static_cast<size_t>(B)));
  auto& gl = c->own(Dev<float>(1));
  upload(gl.p, std::vector<float>{1.f});
  auto& gi = c->own(Dev<float>(be));
  auto& gt = c->own(Dev<float>(be));
  auto& gs = c->own(Dev<float>(1));
  auto args = [&, E](int64_t rows) {
    cuda::ClipLossArgs<float> a;
    a.B = rows, a.E = E, a.image = img.p, a.text = txt.p, a.log_scale = ls.p, a.image_n = in.p, a.text_n = tn.p;
    a.image_norm = inorm.p, a.text_norm = tnorm.p, a.row_lse = r.p, a.col_lse = col.p, a.loss = loss.p;
    a.scratch = scratch.p;
    return a;
  };
  auto& full = c->own(args(B));
  c->run = [&full, &gl, &gi, &gt, &gs](int64_t) {
    cuda::clip_loss_forward(full, cs());
    cuda::clip_loss_backward(full, gl.p, gi.p, gt.p, gs.p, cs());
  };
  // validation on the first Bv rows of both sides (a batch of its own)
  const int64_t Bv = std::min<int64_t>(B, 256);
  const size_t bev = size_t(Bv * E);
  gi.zero(), gt.zero(), gs.zero();
  const cuda::ClipLossArgs<float> small = args(Bv);
  cuda::clip_loss_forward(small, cs());
  cuda::clip_loss_backward(small, gl.p, gi.p, gt.p, gs.p, cs());
  std::vector<double> hi(bev), ht(bev);
  for (size_t i = 0; i < bev; ++i) {
    hi[i] = host_val<float>(i, 41, 1.f);
    ht[i] = host_val<float>(i, 42, 1.f);
  }
  const size_t bv = static_cast<size_t>(Bv);
  std::vector<double> hin(bev), htn(bev), hinorm(bv), htnorm(bv), hL(bv * bv), hr(bv), hc(bv);
  cpu::ClipLossParams<double> p;
  p.B = Bv, p.E = E, p.image = hi.data(), p.text = ht.data(), p.log_scale = double(log_scale);
  p.image_n = hin.data(), p.text_n = htn.data(), p.image_norm = hinorm.data(), p.text_norm = htnorm.data();
  p.logits = hL.data(), p.row_lse = hr.data(), p.col_lse = hc.data();
  const double ref_loss = cpu::clip_loss_forward<double>(p);
  std::vector<double> hgi(bev, 0.0), hgt(bev, 0.0), hgs(1, 0.0);
  cpu::clip_loss_backward<double>(p, 1.0, hgi.data(), hgt.data(), hgs.data());
  c->err = std::max({rel_err(loss.get(), {ref_loss}), rel_err(gi.get(0, bev), hgi), rel_err(gt.get(0, bev), hgt),
                     rel_err(gs.get(), hgs)});
  check_tolerance(*c, 1e-4, "loss and gradients of the first 256 pairs");
  return c;
}

// Parameter sizes of CLIP ViT-B/32 (weights/configs/ViT-B-32.json: 151M): what one AdamW step of
// the training loop sees.
std::vector<int64_t> vitb32_param_sizes() {
  std::vector<int64_t> s;
  auto block = [&](int64_t w) {
    for (int64_t n : {w, w, 3 * w * w, 3 * w, w * w, w, w, w, 4 * w * w, 4 * w, 4 * w * w, w}) s.push_back(n);
  };
  // vision: conv1, class token, positional, ln_pre, 12 blocks, ln_post, proj
  for (int64_t n : {int64_t(768) * 3 * 32 * 32, int64_t(768), int64_t(50) * 768, int64_t(768), int64_t(768)})
    s.push_back(n);
  for (int i = 0; i < 12; ++i) block(768);
  for (int64_t n : {int64_t(768), int64_t(768), int64_t(768) * 512}) s.push_back(n);
  // text: token embedding, positional, 12 blocks, ln_final, projection; logit scale
  for (int64_t n : {int64_t(49408) * 512, int64_t(77) * 512}) s.push_back(n);
  for (int i = 0; i < 12; ++i) block(512);
  for (int64_t n : {int64_t(512), int64_t(512), int64_t(512) * 512, int64_t(1)}) s.push_back(n);
  return s;
}

// Gradient norm + clipping + multi-tensor AdamW (bf16 gradients, float32 master weights with a
// bf16 copy: the fast training mode).
std::unique_ptr<Case> make_adamw() {
  auto c = std::make_unique<Case>();
  const std::vector<int64_t> sizes = vitb32_param_sizes();
  std::vector<size_t> off(sizes.size() + 1, 0);
  for (size_t t = 0; t < sizes.size(); ++t) off[t + 1] = off[t] + size_t(sizes[t]);
  const size_t total = off.back();
  auto& p = c->own(Dev<float>(total, 51, 1.f));
  auto& m = c->own(Dev<float>(total));
  auto& v = c->own(Dev<float>(total));
  auto& g = c->own(Dev<bf16>(total, 52, 1.f / 64));
  auto& low = c->own(Dev<bf16>(total));
  m.zero(), v.zero();
  std::vector<cuda::AdamWTensor> desc(sizes.size());
  std::vector<double> wd(sizes.size());
  for (size_t t = 0; t < sizes.size(); ++t) {
    desc[t].param = p.p + off[t], desc[t].param_bf16 = low.p + off[t], desc[t].grad = g.p + off[t];
    desc[t].exp_avg = m.p + off[t], desc[t].exp_avg_sq = v.p + off[t], desc[t].n = sizes[t];
    wd[t] = sizes[t] >= 4096 ? 0.2 : 0.0;  // matrices decay; gains, biases, scalars do not
    desc[t].weight_decay = float(wd[t]);
  }
  const std::vector<int32_t> start = cuda::adamw_layout(sizes);
  const int64_t chunks = start.back();
  auto& ddesc = c->own(Dev<cuda::AdamWTensor>(desc.size()));
  upload(ddesc.p, desc);
  auto& dstart = c->own(Dev<int32_t>(start.size()));
  upload(dstart.p, start);
  auto& partial = c->own(Dev<double>(static_cast<size_t>(chunks)));
  auto& norm = c->own(Dev<float>(1));
  auto& coef = c->own(Dev<float>(1));
  cuda::AdamWHyper h;
  h.lr = 1e-3, h.beta1 = 0.9, h.beta2 = 0.98, h.eps = 1e-6, h.step = 1;
  const float max_norm = 1.f;
  const int nt = int(sizes.size());
  c->run = [=, &ddesc, &dstart, &partial, &norm, &coef](int64_t) {
    cuda::grad_norm<bf16>(nt, ddesc.p, dstart.p, chunks, partial.p, max_norm, norm.p, coef.p, cs());
    cuda::adamw_step<bf16>(nt, ddesc.p, dstart.p, chunks, h, coef.p, norm.p, cs());
  };
  // grad norm: bf16 read; step: p, m, v, g read, p, m, v and the bf16 copy written
  c->bytes = double(total) * (2.0 + 4 * 3 + 2 + 4 * 3 + 2);
  // validation: one step from the initial state; a small and a big tensor against the CPU
  c->run(0);
  double ss = 0;
  for (size_t i = 0; i < total; ++i) {
    const double x = host_val<bf16>(i, 52, 1.f / 64);
    ss += x * x;
  }
  const double gnorm = std::sqrt(ss);
  const double clip = gnorm > max_norm ? max_norm / (gnorm + 1e-6) : 1.0;
  double err = rel_err(norm.get(), {gnorm});
  for (size_t t : {size_t(0), size_t(1), sizes.size() - 1}) {  // conv1, the class token, the logit scale
    const size_t n = size_t(sizes[t]);
    std::vector<double> hp(n), hg(n), hm(n, 0.0), hv(n, 0.0);
    for (size_t i = 0; i < n; ++i) {
      hp[i] = host_val<float>(off[t] + i, 51, 1.f);
      hg[i] = host_val<bf16>(off[t] + i, 52, 1.f / 64) * clip;
    }
    cpu::AdamWStep st;
    st.lr = h.lr, st.beta1 = h.beta1, st.beta2 = h.beta2, st.eps = h.eps, st.weight_decay = wd[t], st.t = 1;
    cpu::adamw_step<double>(int64_t(n), st, hp.data(), hg.data(), hm.data(), hv.data());
    err = std::max({err, rel_err(p.get(off[t], n), hp), rel_err(m.get(off[t], n), hm), rel_err(v.get(off[t], n), hv)});
  }
  c->err = err;
  check_tolerance(*c, 1e-5, "norm, param, exp_avg, exp_avg_sq");
  return c;
}

void register_memory_bound() {
  reg("copy/u8/1GiB", "base-copy", [] { return make_copy(double(size_t(1) << 30)); });
  register_layernorm();
  {  // text tower token + positional embedding, B 256, T 77, V 49408, C 512
    const int64_t B = 256, Tn = 77, V = 49408, C = 512;
    const double fwd_bytes = 2.0 * double(B * Tn * C) * 2 + double(B * Tn) * 4;
    reg("embedding/bf16/text_B256_T77_C512/fwd", "base-copy", [=] { return make_copy(fwd_bytes); });
    reg("embedding/bf16/text_B256_T77_C512/fwd", "clipcu", [=] { return make_embedding(B, Tn, V, C, false); });
    // grad rows read, the distinct ids' table rows read and written (as the case counts them)
    std::vector<int32_t> ids = text_ids(B * Tn, V);
    std::sort(ids.begin(), ids.end());
    const double U = double(std::unique(ids.begin(), ids.end()) - ids.begin());
    const double bwd_bytes = double(B * Tn * C) * 2 + 2.0 * U * double(C) * 2 + double(B * Tn) * 4;
    reg("embedding/bf16/text_B256_T77_C512/bwd", "base-copy", [=] { return make_copy(bwd_bytes); });
    reg("embedding/bf16/text_B256_T77_C512/bwd", "clipcu", [=] { return make_embedding(B, Tn, V, C, true); });
  }
  for (int64_t B : {256, 4096}) {
    const std::string key = "clip_loss_fwd_bwd/f32/B" + std::to_string(B) + "_E512";
    reg(key, "base-cublas-3gemm-fp32", [B] { return make_clip_loss(B, 512, true); });
    reg(key, "clipcu", [B] { return make_clip_loss(B, 512, false); });
  }
  {
    size_t total = 0;
    for (int64_t n : vitb32_param_sizes()) total += size_t(n);
    const double bytes = double(total) * 30.0;  // as make_adamw counts them
    reg("adamw/bf16grad/vitb32_params", "base-copy", [bytes] { return make_copy(bytes); });
    reg("adamw/bf16grad/vitb32_params", "clipcu", [] { return make_adamw(); });
  }
}

void register_all() {
  if (const char* t = std::getenv("CLIPCU_BENCH_TARGET_MS")) g_target_s = std::max(0.0, std::atof(t)) * 1e-3;
  int l2 = 0;
  if (cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, 0) == cudaSuccess && l2 > 0)
    g_rotate_bytes = std::max(g_rotate_bytes, size_t(4) * size_t(l2));
  (void)cudaGetLastError();
  register_gemm();
  register_attention();
  register_memory_bound();
}

}  // namespace
#endif  // CLIPCU_WITH_CUDA

int main(int argc, char** argv) {
  bool list_only = false;  // --benchmark_list_tests: the names need no GPU
  for (int i = 1; i < argc; ++i) list_only |= std::string(argv[i]).rfind("--benchmark_list_tests", 0) == 0;
  benchmark::Initialize(&argc, argv);
#ifdef CLIPCU_WITH_CUDA
  if (clipcu::cuda_available() || list_only) {
    register_all();
    benchmark::RunSpecifiedBenchmarks();
    g_case.reset();
  } else {
    std::printf("bench_cuda_ops: no GPU answers: nothing to run (SKIPPED)\n");
  }
#else
  (void)list_only;
  std::printf("bench_cuda_ops: this build has no CUDA backend: nothing to run (SKIPPED)\n");
#endif
  benchmark::Shutdown();
  return 0;
}
