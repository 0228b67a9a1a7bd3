// The CUDA kernels (kernels/cuda/) against their CPU twins (kernels/cpu/), run in float64 on the
// values the GPU holds (inputs rounded to the storage type first), so the only differences are
// the GPU's float arithmetic and its output rounding. Tolerances are norm-wise relative errors:
// float32 1e-5 forward and 1e-4 gradients (the golden README's), TF32 tensor cores 2e-3, bf16
// storage 1e-2. Also: the GEMM backends against each other on ViT-B/32 shapes, determinism, the
// runtime (caching allocator, pinned staging).
//
// Without a GPU the GPU tests are skipped: doctest skips them (and leaves them out of ctest's
// list), and the last test case exits 77, which ctest reports as "Skipped", so a CPU-only run
// shows the skip instead of passing silently. The host-side parts of the CUDA library (argument
// checks, the embedding index, the AdamW layout, size classes) are tested everywhere the CUDA
// backend is built.
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "tests/cuda_support.h"
#include "tests/support.h"

#ifdef CLIPCU_WITH_CUDA
#include "engine/cuda_runtime.h"
#include "engine/device.h"
#include "engine/dtype.h"
#include "engine/rng.h"
#include "engine/variants.h"
#include "kernels/cpu/activation.h"
#include "kernels/cpu/adamw.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/clip_loss.h"
#include "kernels/cpu/elementwise.h"
#include "kernels/cpu/embedding.h"
#include "kernels/cpu/layernorm.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/shape.h"
#include "kernels/cuda/adamw.cuh"
#include "kernels/cuda/attention.cuh"
#include "kernels/cuda/clip_loss.cuh"
#include "kernels/cuda/embedding.cuh"
#include "kernels/cuda/gemm.cuh"
#include "kernels/cuda/gemm_wgmma_layout.h"
#include "kernels/cuda/layernorm.cuh"

using namespace clipcu;
using cuda::bf16;
using test::WorstError;
using namespace test::gpu;

namespace {

cpu::Activation cpu_act(cuda::Act a) {
  switch (a) {
    case cuda::Act::ReLU: return cpu::Activation::ReLU;
    case cuda::Act::QuickGELU: return cpu::Activation::QuickGELU;
    case cuda::Act::GELU: return cpu::Activation::GELUErf;
    case cuda::Act::GELUTanh: return cpu::Activation::GELUTanh;
    case cuda::Act::None: break;
  }
  FAIL("no CPU activation for Act::None");
  return cpu::Activation::ReLU;
}

double act_ref(cuda::Act a, double x) {
  if (a == cuda::Act::None) return x;
  double y = 0;
  cpu::activation_forward<double>(cpu_act(a), 1, &x, &y);
  return y;
}
double act_grad_ref(cuda::Act a, double x) {
  if (a == cuda::Act::None) return 1.0;
  double dx = 0, dy = 1;
  cpu::activation_backward<double>(cpu_act(a), 1, &x, nullptr, &dy, &dx);
  return dx;
}

// ================================================================ GEMM
struct Epilogue {
  const char* name;
  float alpha, beta;
  bool bias;
  cuda::Act act;
  bool pre_act;
  bool residual;
  bool residual_is_c;
};
const Epilogue kEpilogues[] = {
    {"plain", 1.f, 0.f, false, cuda::Act::None, false, false, false},
    {"alpha0.5+beta1", 0.5f, 1.f, false, cuda::Act::None, false, false, false},
    {"bias", 1.f, 0.f, true, cuda::Act::None, false, false, false},
    {"bias+gelu+pre_act", 1.f, 0.f, true, cuda::Act::GELU, true, false, false},
    {"bias+quick_gelu+residual", 1.f, 0.f, true, cuda::Act::QuickGELU, false, true, false},
    {"gelu_tanh+beta1+pre_act", 1.f, 1.f, false, cuda::Act::GELUTanh, true, false, false},
    {"residual==C", 1.f, 0.f, true, cuda::Act::None, false, true, true},
};

struct GemmShape {
  int64_t M, N, K;
};

double gemm_tol(cuda::GemmBackend b, bool is_bf16) {
  if (is_bf16) return kBf16;
  return cuda::gemm_backend_uses_tf32(b) ? kTf32 : kF32Fwd;
}

template <class T>
cuda::GemmParams<T> base_params(cuda::GemmBackend backend) {
  cuda::GemmParams<T> p;
  p.backend = backend;
  // every backend gets the workspace (the TensorCore backend splits K into it when the output
  // has few tiles)
  p.workspace = cuda::cublaslt_workspace();
  p.workspace_bytes = cuda::kCublasLtWorkspaceBytes;
  if (backend == cuda::GemmBackend::Cublas) {
    p.lt = cuda::cublaslt_handle();
    p.cublas = cuda::cublas_handle();
    p.allow_tf32 = false;  // float32 accuracy for the float comparison
  }
  return p;
}

bool is_tensorcore_backend(cuda::GemmBackend b) {
  return b == cuda::GemmBackend::TensorCore || b == cuda::GemmBackend::Wgmma;
}

// One product and epilogue on every backend against the CPU; `offset` shifts A and B by one
// element to force the element-wise (non-cp.async) loads. all_plans: the tensor-core backends
// (TensorCore, and Wgmma on Hopper) also run with both block tiles, each with all tiles whole,
// all split along K, and half and half (independent of the plan they pick on this GPU).
// expect_split: their own plan must split K. only: run that backend alone (the smoke test).
template <class T>
void gemm_case(bool ta, bool tb, GemmShape s, const Epilogue& epi, int offset, uint64_t seed, WorstError& worst,
               bool all_plans = false, bool expect_split = false, std::optional<cuda::GemmBackend> only = {}) {
  const int64_t M = s.M, N = s.N, K = s.K;
  Rng rng(seed);
  const std::vector<double> A = stored<T>(randn(size_t(M * K), rng)), B = stored<T>(randn(size_t(K * N), rng));
  const std::vector<double> C0 = stored<T>(randn(size_t(M * N), rng)), bias = stored<T>(randn(size_t(N), rng));
  const std::vector<double> R = epi.residual_is_c ? C0 : stored<T>(randn(size_t(M * N), rng));
  std::vector<double> prod(size_t(M * N), 0.0);
  cpu::gemm<double>(ta, tb, M, N, K, 1.0, A.data(), B.data(), 0.0, prod.data(), cpu::GemmVariant::Naive);
  std::vector<double> ref(prod.size()), ref_pre(prod.size());
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      const size_t i = size_t(m * N + n);
      double v = double(epi.alpha) * prod[i];
      if (epi.beta != 0.f) v += double(epi.beta) * C0[i];
      if (epi.bias) v += bias[size_t(n)];
      ref_pre[i] = v;
      v = act_ref(epi.act, v);
      if (epi.residual) v += R[i];
      ref[i] = v;
    }

  DevBuf<T> dA(size_t(M * K + offset)), dB(size_t(K * N + offset)), dC(size_t(M * N)), dbias(static_cast<size_t>(N));
  DevBuf<T> dR(size_t(M * N)), dpre(size_t(M * N));
  write(dA.get() + offset, A);
  write(dB.get() + offset, B);
  write(dbias.get(), bias);
  write(dR.get(), R);
  struct Run {
    cuda::GemmBackend be;
    bool forced;
    cuda::GemmTensorCorePlan plan;
  };
  std::vector<Run> runs;
  std::vector<cuda::GemmBackend> backends = cuda::gemm_backends();
  if (only) backends = {*only};
  for (cuda::GemmBackend be : backends) runs.push_back({be, false, {}});
  if (all_plans)
    for (cuda::GemmBackend be : backends) {
      if (!is_tensorcore_backend(be)) continue;
      for (int bn : {256, 128}) {
        const int64_t tiles = ((M + 127) / 128) * ((N + bn - 1) / bn);
        for (auto [whole, splits] : {std::pair<int64_t, int>{tiles, 1}, {0, 3}, {tiles / 2, 2}}) {
          cuda::GemmTensorCorePlan plan;
          plan.block_m = 128, plan.block_n = bn, plan.whole_tiles = whole, plan.splits = splits;
          runs.push_back({be, true, plan});
        }
      }
    }
  for (const Run& run : runs) {
    const cuda::GemmBackend be = run.be;
    std::string label = std::string(cuda::gemm_backend_name(be)) + " " + type_name<T>() + (ta ? " T" : " N") +
                        (tb ? "T" : "N") + " " + std::to_string(M) + "x" + std::to_string(N) + "x" +
                        std::to_string(K) + " " + epi.name + (offset ? " misaligned" : "");
    if (run.forced)
      label += " [plan 128x" + std::to_string(run.plan.block_n) + ", " + std::to_string(run.plan.whole_tiles) +
               " whole, rest in " + std::to_string(run.plan.splits) + " K splits]";
    INFO(label);
    write(dC.get(), C0);
    cuda::GemmParams<T> p = base_params<T>(be);
    p.trans_a = ta;
    p.trans_b = tb;
    p.M = M, p.N = N, p.K = K;
    p.A = dA.get() + offset;
    p.B = dB.get() + offset;
    p.C = dC.get();
    p.alpha = epi.alpha;
    p.beta = epi.beta;
    p.bias = epi.bias ? dbias.get() : nullptr;
    p.act = epi.act;
    p.pre_act = epi.pre_act ? dpre.get() : nullptr;
    p.residual = epi.residual ? (epi.residual_is_c ? dC.get() : dR.get()) : nullptr;
    if (is_tensorcore_backend(be) && expect_split && !run.forced) {
      // the case is there for the split-K path of the backend's own plan: make sure it runs
      const cuda::GemmTensorCorePlan plan = cuda::gemm_tensorcore_plan(p);
      CHECK_MESSAGE(plan.splits > 1, label << ": " << plan.split_tiles << " tiles split in " << plan.splits);
    }
    if (run.forced) {
      cuda::gemm_tensorcore_with_plan(p, run.plan, cuda::current_stream());
    } else {
      cuda::gemm(p, cuda::current_stream());
    }
    const double tol = gemm_tol(be, std::is_same_v<T, bf16>);
    expect_close(read(dC), ref, tol, label, worst, N);
    if (epi.pre_act) expect_close(read(dpre), ref_pre, tol, label + " pre_act", worst, N);
  }
}

}  // namespace

// The device check runs this first, alone, with a short time limit: if the Hopper kernel faults
// (which would poison the CUDA context of the whole test program), it hides the backend with
// CLIPCU_WGMMA=0 for the rest of its run and reports the failure.
CLIPCU_GPU_TEST("cuda gemm: wgmma smoke test, one product per transpose form against the CPU") {
  if (!cuda::gemm_wgmma_available(0)) {
    WARN_MESSAGE(false, "the wgmma backend is not available here (it needs a Hopper GPU, sm_90a device code and "
                        "CLIPCU_WGMMA not 0): smoke test not run");
    return;
  }
  WorstError worst{"gemm wgmma smoke bf16", 0.0, {}};
  uint64_t seed = 9000;
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      // partial tiles in M, N and K; then two whole 128 x 256 tiles with a 4-step pipeline
      gemm_case<bf16>(ta, tb, {200, 136, 96}, kEpilogues[0], 0, seed++, worst, false, false, cuda::GemmBackend::Wgmma);
      gemm_case<bf16>(ta, tb, {256, 256, 512}, kEpilogues[0], 0, seed++, worst, false, false, cuda::GemmBackend::Wgmma);
    }
}

CLIPCU_GPU_TEST("cuda gemm: every backend, transpose form and epilogue against the CPU") {
  // the shapes with epilogues are 3 and 4 (small runs keep 0-3 and use 3 twice)
  const std::vector<GemmShape> shapes =
      maybe_small<GemmShape>(
          {{1, 1, 1}, {7, 13, 5}, {64, 64, 64}, {129, 77, 40}, {200, 136, 96}, {33, 250, 257}, {300, 520, 200}}, 4);
  const GemmShape epi_shapes[] = {shapes[3], shapes[small_run() ? 3 : 4]};
  WorstError worst_f{"gemm f32 (simple, cublas: 1e-5; tensorcore tf32: 2e-3)", 0.0, {}};
  WorstError worst_b{"gemm bf16", 0.0, {}};
  uint64_t seed = 1;
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      for (const GemmShape& s : shapes) {
        // the larger shapes also through every TensorCore plan (tile shape, whole / split K)
        const bool all_plans = s.M * s.N > 1000;
        gemm_case<float>(ta, tb, s, kEpilogues[0], 0, seed++, worst_f, all_plans);
        gemm_case<bf16>(ta, tb, s, kEpilogues[0], 0, seed++, worst_b, all_plans);
      }
      for (const Epilogue& e : kEpilogues)
        for (const GemmShape& s : epi_shapes) {
          gemm_case<float>(ta, tb, s, e, 0, seed++, worst_f, !small_run());
          gemm_case<bf16>(ta, tb, s, e, 0, seed++, worst_b, !small_run());
        }
      // aligned sizes with misaligned bases: the element-wise load path of the tensor-core kernels
      gemm_case<float>(ta, tb, {128, 128, 64}, kEpilogues[2], 1, seed++, worst_f, true);
      gemm_case<bf16>(ta, tb, {128, 128, 64}, kEpilogues[2], 1, seed++, worst_b, true);
    }
}

CLIPCU_GPU_TEST("cuda gemm: split-K (few output tiles, long K) with epilogues against the CPU") {
  // M x N of one or two tiles and a long K: the TensorCore backend splits K into the workspace
  // (checked), every split writes float partial sums and the reduce pass applies the epilogue.
  // N = 130 takes the element-wise partial and epilogue paths, N = 96 the 4-wide ones.
  WorstError worst_f{"gemm split-K f32 (simple, cublas: 1e-5; tensor cores tf32: 2e-3)", 0.0, {}};
  WorstError worst_b{"gemm split-K bf16", 0.0, {}};
  const GemmShape wide{136, 96, 2048}, odd{70, 130, 1500};
  const std::vector<int> wide_epilogues = small_run() ? std::vector<int>{1, 6} : std::vector<int>{0, 1, 3, 6};
  uint64_t seed = 5000;
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      if (small_run() && ta == tb) continue;  // the sanitizer runs: two transpose forms
      for (int e : wide_epilogues) {
        gemm_case<float>(ta, tb, wide, kEpilogues[e], 0, seed++, worst_f, true, true);
        gemm_case<bf16>(ta, tb, wide, kEpilogues[e], 0, seed++, worst_b, true, true);
      }
      for (int e : {2, 5}) {
        gemm_case<float>(ta, tb, odd, kEpilogues[e], 0, seed++, worst_f, true, true);
        gemm_case<bf16>(ta, tb, odd, kEpilogues[e], 0, seed++, worst_b, true, true);
      }
      // misaligned bases: element-wise loads into the split-K path
      gemm_case<float>(ta, tb, wide, kEpilogues[2], 1, seed++, worst_f, true, true);
      gemm_case<bf16>(ta, tb, wide, kEpilogues[2], 1, seed++, worst_b, true, true);
    }
}

namespace {
template <class T>
void gemm_backends_agree(int64_t M, int64_t N, int64_t K, bool ta, bool tb, cuda::GemmBackend a, cuda::GemmBackend b,
                         double tol, WorstError& worst) {
  Rng rng(uint64_t(M * 31 + N * 7 + K));
  DevBuf<T> dA = upload<T>(randn(size_t(M * K), rng, 0.5)), dB = upload<T>(randn(size_t(K * N), rng, 0.5));
  DevBuf<T> dbias = upload<T>(randn(size_t(N), rng));
  DevBuf<T> c1(size_t(M * N)), c2(size_t(M * N));
  auto run = [&](cuda::GemmBackend be, T* C) {
    cuda::GemmParams<T> p = base_params<T>(be);
    p.trans_a = ta, p.trans_b = tb;
    p.M = M, p.N = N, p.K = K;
    p.A = dA.get(), p.B = dB.get(), p.C = C, p.bias = dbias.get();
    cuda::gemm(p, cuda::current_stream());
  };
  run(a, c1.get());
  run(b, c2.get());
  const std::string label = std::string(type_name<T>()) + " " + cuda::gemm_backend_name(a) + " vs " +
                            cuda::gemm_backend_name(b) + " " + std::to_string(M) + "x" + std::to_string(N) + "x" +
                            std::to_string(K) + (ta ? " T" : " N") + (tb ? "T" : "N");
  INFO(label);
  const std::vector<double> r1 = read(c1);
  expect_close(r1, read(c2), tol, label, worst);
  run(a, c2.get());  // the same backend twice: the same bits (no atomics, fixed order)
  const std::vector<double> again = read(c2);
  CHECK_MESSAGE(std::memcmp(r1.data(), again.data(), r1.size() * sizeof(double)) == 0, label << ": not deterministic");
}
}  // namespace

CLIPCU_GPU_TEST("cuda gemm: tensor-core and simple kernels agree with cuBLAS on ViT-B/32 shapes") {
  WorstError worst{"gemm backends against each other", 0.0, {}};
  const int64_t M = 256 * 50;
  std::vector<cuda::GemmBackend> ours = {cuda::GemmBackend::TensorCore};
  if (cuda::gemm_wgmma_available(0)) {
    ours.push_back(cuda::GemmBackend::Wgmma);
  } else {
    MESSAGE("the wgmma backend is not available here (it needs a Hopper GPU and sm_90a device code): not compared");
  }
  // forward x W^T (NT), backward dX = dY W (NN) and dW = dY^T X (TN) for qkv, fc and fc2
  for (cuda::GemmBackend be : ours)
    for (auto [N, K] : {std::pair<int64_t, int64_t>{2304, 768}, {3072, 768}, {768, 3072}}) {
      gemm_backends_agree<bf16>(M, N, K, false, true, be, cuda::GemmBackend::Cublas, kBf16, worst);
      gemm_backends_agree<bf16>(M, K, N, false, false, be, cuda::GemmBackend::Cublas, kBf16, worst);
      gemm_backends_agree<bf16>(N, K, M, true, false, be, cuda::GemmBackend::Cublas, kBf16, worst);
    }
  gemm_backends_agree<float>(1000, 768, 768, false, true, cuda::GemmBackend::Simple, cuda::GemmBackend::Cublas, kF32Fwd,
                             worst);
  gemm_backends_agree<float>(1000, 768, 768, false, true, cuda::GemmBackend::TensorCore, cuda::GemmBackend::Cublas,
                             kTf32, worst);
  // a dW-like float product (TN, long K: split-K with the workspace)
  gemm_backends_agree<float>(768, 768, 4096, true, false, cuda::GemmBackend::TensorCore, cuda::GemmBackend::Cublas,
                             kTf32, worst);
}

// ================================================================ attention
namespace {
struct AttnCase {
  int64_t B, H, Tq, Tk, D;
  bool causal;
};

template <class T>
void attention_case(const AttnCase& c, cuda::AttentionKernel kernel, uint64_t seed, WorstError& wf, WorstError& wb) {
  const bool is_bf16 = std::is_same_v<T, bf16>;
  const double tol_f = is_bf16 ? kBf16 : kF32Fwd, tol_b = is_bf16 ? kBf16 : kF32Grad;
  const size_t nq = size_t(c.B * c.H * c.Tq * c.D), nk = size_t(c.B * c.H * c.Tk * c.D), nl = size_t(c.B * c.H * c.Tq);
  Rng rng(seed);
  const std::vector<double> q = stored<T>(randn(nq, rng)), k = stored<T>(randn(nk, rng)), v = stored<T>(randn(nk, rng));
  const std::vector<double> dout = stored<T>(randn(nq, rng));
  const std::vector<double> dq0 = stored<T>(randn(nq, rng, 0.5)), dk0 = stored<T>(randn(nk, rng, 0.5)),
                            dv0 = stored<T>(randn(nk, rng, 0.5));
  cpu::AttentionParams cp;
  cp.B = c.B, cp.H = c.H, cp.Tq = c.Tq, cp.Tk = c.Tk, cp.D = c.D, cp.causal = c.causal;
  cp.variant = cpu::AttentionVariant::Rowwise;
  std::vector<double> out(nq), lse(nl), dq = dq0, dk = dk0, dv = dv0;
  cpu::attention_forward<double>(cp, q.data(), k.data(), v.data(), out.data(), lse.data());
  cpu::attention_backward<double>(cp, q.data(), k.data(), v.data(), out.data(), lse.data(), dout.data(), dq.data(),
                                  dk.data(), dv.data());

  cuda::AttentionShape s;
  s.B = c.B, s.H = c.H, s.Tq = c.Tq, s.Tk = c.Tk, s.D = c.D, s.causal = c.causal, s.kernel = kernel;
  DevBuf<T> gq = upload<T>(q), gk = upload<T>(k), gv = upload<T>(v), gdo = upload<T>(dout);
  DevBuf<T> gout(nq), gdq = upload<T>(dq0), gdk = upload<T>(dk0), gdv = upload<T>(dv0);
  DevBuf<float> glse(nl), ws(cuda::attention_backward_workspace_floats(s));
  cuda::AttentionArgs<T> a;
  a.q = gq.get(), a.k = gk.get(), a.v = gv.get(), a.out = gout.get(), a.lse = glse.get();
  a.dout = gdo.get(), a.dq = gdq.get(), a.dk = gdk.get(), a.dv = gdv.get(), a.workspace = ws.get();
  cuda::attention_forward(s, a, cuda::current_stream());
  cuda::attention_backward(s, a, cuda::current_stream());
  const std::string label = std::string(cuda::attention_kernel_name(kernel)) + " " + type_name<T>() + " B" +
                            std::to_string(c.B) + " H" + std::to_string(c.H) + " Tq" + std::to_string(c.Tq) + " Tk" +
                            std::to_string(c.Tk) + " D" + std::to_string(c.D) + (c.causal ? " causal" : "");
  INFO(label);
  expect_close(read(gout), out, tol_f, label + " out", wf);
  expect_close(read(glse), lse, is_bf16 ? kBf16 : kF32Fwd, label + " lse", wf);
  expect_close(read(gdq), dq, tol_b, label + " dq", wb);
  expect_close(read(gdk), dk, tol_b, label + " dk", wb);
  expect_close(read(gdv), dv, tol_b, label + " dv", wb);
}
}  // namespace

CLIPCU_GPU_TEST("cuda attention: every kernel, forward and backward against the CPU") {
  // small runs: the first 6 (every tile width, causal and Tq != Tk still covered). TensorCore:
  // Tk <= 128 is the fused one-kernel backward, Tk > 128 (130, 257, 300) the key-block kernel +
  // the dQ kernel; D 5 and 7 take the unaligned (scalar) loads, D 80 / 96 / 48 zero-padded tiles.
  const std::vector<AttnCase> cases = maybe_small<AttnCase>(
      {
          {1, 1, 1, 1, 8, false},   {2, 3, 7, 7, 16, true},   {1, 2, 33, 65, 128, false}, {2, 1, 1, 50, 64, false},
          {2, 2, 31, 5, 80, false}, {1, 2, 40, 40, 64, true}, {2, 2, 50, 50, 64, false},  {1, 2, 77, 77, 64, true},
          {1, 1, 300, 300, 32, true}, {3, 2, 17, 17, 48, false}, {1, 1, 64, 64, 96, true}, {1, 1, 257, 257, 64, true},
          {1, 2, 200, 130, 64, false}, {2, 1, 7, 7, 5, true},   {1, 1, 129, 129, 128, false}, {1, 1, 77, 77, 128, true},
          {1, 1, 1, 1, 64, true},   {1, 1, 130, 7, 32, false}, {1, 1, 50, 50, 7, false},
      },
      6);
  WorstError wf{"attention forward", 0.0, {}}, wb{"attention backward", 0.0, {}};
  uint64_t seed = 100;
  for (const AttnCase& c : cases)
    for (cuda::AttentionKernel k :
         {cuda::AttentionKernel::Simple, cuda::AttentionKernel::Tiled, cuda::AttentionKernel::TensorCore}) {
      // TensorCore with float storage runs Tiled: tested once, as Tiled
      if (k != cuda::AttentionKernel::TensorCore) attention_case<float>(c, k, seed++, wf, wb);
      attention_case<bf16>(c, k, seed++, wf, wb);
    }
}

// The tensor-core backward's single-owner paths: dQ alone, dK alone, bitwise repeats, and dq, dk,
// dv all in one buffer (self-attention on one tensor), for a fused head (T 50) and a split one
// (T 150: key blocks + the dQ kernel).
CLIPCU_GPU_TEST("cuda attention: tensor-core backward skips null gradients, repeats bit for bit, allows aliasing") {
  WorstError wb{"attention backward (tensorcore paths)", 0.0, {}};
  for (const int64_t T : {50, 150}) {
    cuda::AttentionShape s;
    s.B = 2, s.H = 3, s.Tq = T, s.Tk = T, s.D = 64, s.causal = T == 150, s.kernel = cuda::AttentionKernel::TensorCore;
    const size_t n = size_t(s.B * s.H * s.Tq * s.D), nl = size_t(s.B * s.H * s.Tq);
    Rng rng(uint64_t(11 + T));
    const std::vector<double> q = stored<bf16>(randn(n, rng)), k = stored<bf16>(randn(n, rng)),
                              v = stored<bf16>(randn(n, rng)), dout = stored<bf16>(randn(n, rng)),
                              g0 = stored<bf16>(randn(n, rng, 0.5));
    cpu::AttentionParams cp;
    cp.B = s.B, cp.H = s.H, cp.Tq = s.Tq, cp.Tk = s.Tk, cp.D = s.D, cp.causal = s.causal;
    cp.variant = cpu::AttentionVariant::Rowwise;
    std::vector<double> out(n), lse(nl), dq(n, 0.0), dk(n, 0.0), all = g0;
    cpu::attention_forward<double>(cp, q.data(), k.data(), v.data(), out.data(), lse.data());
    cpu::attention_backward<double>(cp, q.data(), k.data(), v.data(), out.data(), lse.data(), dout.data(), dq.data(),
                                    nullptr, nullptr);
    cpu::attention_backward<double>(cp, q.data(), k.data(), v.data(), out.data(), lse.data(), dout.data(), nullptr,
                                    dk.data(), nullptr);
    cpu::attention_backward<double>(cp, q.data(), k.data(), v.data(), out.data(), lse.data(), dout.data(), all.data(),
                                    all.data(), all.data());

    DevBuf<bf16> gq = upload<bf16>(q), gk = upload<bf16>(k), gv = upload<bf16>(v), gdo = upload<bf16>(dout), gout(n);
    DevBuf<float> glse(nl), ws(cuda::attention_backward_workspace_floats(s));
    const std::vector<double> zeros(n, 0.0);
    DevBuf<bf16> dq1 = upload<bf16>(zeros), dq2 = upload<bf16>(zeros), dk1 = upload<bf16>(zeros),
                 dk2 = upload<bf16>(zeros), gall = upload<bf16>(g0);
    cuda::AttentionArgs<bf16> a;
    a.q = gq.get(), a.k = gk.get(), a.v = gv.get(), a.out = gout.get(), a.lse = glse.get(), a.dout = gdo.get();
    a.workspace = ws.get();
    cuda::attention_forward(s, a, cuda::current_stream());
    const std::string label = "tensorcore bf16 T" + std::to_string(T) + (s.causal ? " causal" : "");
    INFO(label);
    a.dq = dq1.get();  // dq only
    cuda::attention_backward(s, a, cuda::current_stream());
    a.dq = dq2.get();
    cuda::attention_backward(s, a, cuda::current_stream());
    const std::vector<double> r1 = read(dq1), r2 = read(dq2);
    CHECK(std::memcmp(r1.data(), r2.data(), n * sizeof(double)) == 0);
    expect_close(r1, dq, kBf16, label + " dq alone", wb);
    a.dq = nullptr, a.dk = dk1.get();  // dk only (dv null)
    cuda::attention_backward(s, a, cuda::current_stream());
    a.dk = dk2.get();
    cuda::attention_backward(s, a, cuda::current_stream());
    const std::vector<double> k1 = read(dk1), k2 = read(dk2);
    CHECK(std::memcmp(k1.data(), k2.data(), n * sizeof(double)) == 0);
    expect_close(k1, dk, kBf16, label + " dk alone", wb);
    CHECK(rel_err(read(dq1), r1) == 0);  // dq was left alone
    a.dq = a.dk = a.dv = gall.get();     // one buffer for all three
    cuda::attention_backward(s, a, cuda::current_stream());
    expect_close(read(gall), all, kBf16, label + " dq = dk = dv", wb);
  }
}

CLIPCU_GPU_TEST("cuda attention: backward skips null gradients and is deterministic") {
  cuda::AttentionShape s;
  s.B = 2, s.H = 3, s.Tq = 45, s.Tk = 45, s.D = 64, s.causal = true;
  const size_t n = size_t(s.B * s.H * s.Tq * s.D);
  Rng rng(7);
  DevBuf<float> q = upload<float>(randn(n, rng)), k = upload<float>(randn(n, rng)), v = upload<float>(randn(n, rng));
  DevBuf<float> dout = upload<float>(randn(n, rng)), out(n), lse(size_t(s.B * s.H * s.Tq));
  DevBuf<float> ws(cuda::attention_backward_workspace_floats(s));
  const std::vector<double> zeros(n, 0.0);
  DevBuf<float> dq1 = upload<float>(zeros), dq2 = upload<float>(zeros), dk = upload<float>(zeros);
  cuda::AttentionArgs<float> a;
  a.q = q.get(), a.k = k.get(), a.v = v.get(), a.out = out.get(), a.lse = lse.get(), a.dout = dout.get();
  a.workspace = ws.get();
  cuda::attention_forward(s, a, cuda::current_stream());
  a.dq = dq1.get();  // dk, dv null: only the dQ kernel runs
  cuda::attention_backward(s, a, cuda::current_stream());
  a.dq = dq2.get();
  cuda::attention_backward(s, a, cuda::current_stream());
  const std::vector<double> r1 = read(dq1), r2 = read(dq2);
  CHECK(std::memcmp(r1.data(), r2.data(), n * sizeof(double)) == 0);
  a.dq = nullptr, a.dk = dk.get();  // dK only (dV null)
  cuda::attention_backward(s, a, cuda::current_stream());
  CHECK(rel_err(read(dk), zeros) > 0);  // something was written
  CHECK(rel_err(read(dq1), r1) == 0);   // and dq was left alone
}

// ================================================================ layer norm, bias + activation
namespace {
// Which gradients a layer norm case asks for.
struct LnMode {
  bool residual, affine, dx, dresidual, dbias;  // dbias: with affine (a layer norm without a bias: false)
  const char* name;
};
constexpr LnMode kLnModes[] = {{false, true, true, false, true, "dx"},
                               {true, true, true, true, true, "+residual dx dresidual"},
                               {true, false, true, true, false, "+residual no-affine dx dresidual"},
                               {true, true, false, true, true, "+residual dresidual only"},
                               {false, true, false, false, true, "dweight dbias only"},
                               {false, true, true, false, false, "dx dweight (no dbias)"}};

// The variant layernorm_backward must run for a case (the launcher's fallback rules, restated):
// Pipelined needs C % (16 / sizeof(T)) == 0, C <= 1024 and 16-byte aligned rows; Warp C % 4 == 0,
// C <= 1024 and 4-element aligned rows. The allocations themselves are 256-byte aligned.
template <class T>
cuda::LayerNormKernel expected_ln_backward(int64_t C, size_t offset, cuda::LayerNormKernel requested) {
  const int64_t w16 = 16 / int64_t(sizeof(T));
  if (requested == cuda::LayerNormKernel::Pipelined && C % w16 == 0 && C <= 1024 && int64_t(offset) % w16 == 0)
    return cuda::LayerNormKernel::Pipelined;
  if (requested != cuda::LayerNormKernel::Simple && C % 4 == 0 && C <= 1024 && offset % 4 == 0)
    return cuda::LayerNormKernel::Warp;
  return cuda::LayerNormKernel::Simple;
}

// offset: the [N, C] buffers start that many elements past an allocation (16-byte alignment and
// beyond), so a misaligned pointer takes the fallbacks. The backward runs twice from the same
// starting gradients and must repeat bit for bit (the workspace filled with NaN before each run, so
// a partial that is never written cannot pass); with dx and dresidual both asked for, a third run
// starts them from the same values and they must end bit for bit equal (the same dh added).
template <class T>
void layernorm_case(int64_t N, int64_t C, const LnMode& m, cuda::LayerNormKernel kernel, uint64_t seed,
                    WorstError& wf, WorstError& wb, size_t offset = 0) {
  const bool is_bf16 = std::is_same_v<T, bf16>;
  const double tol_f = is_bf16 ? kBf16 : kF32Fwd, tol_b = is_bf16 ? kBf16 : kF32Grad;
  const size_t nc = size_t(N * C);
  Rng rng(seed);
  std::vector<double> x = randn(nc, rng, 2.0), r = stored<T>(randn(nc, rng));
  for (double& e : x) e = stored<T>(e + 0.5);  // a nonzero mean; rounded after the shift, as the GPU holds it
  const std::vector<double> w = stored<T>(randn(size_t(C), rng)), b = stored<T>(randn(size_t(C), rng));
  const std::vector<double> dy = stored<T>(randn(nc, rng));
  const std::vector<double> dx0 = stored<T>(randn(nc, rng)), dr0 = stored<T>(randn(nc, rng));
  const std::vector<double> dw0 = stored<T>(randn(size_t(C), rng)), db0 = stored<T>(randn(size_t(C), rng));
  std::vector<double> h(nc);
  for (size_t i = 0; i < nc; ++i) h[i] = m.residual ? stored<T>(double(float(x[i]) + float(r[i]))) : x[i];
  std::vector<double> y(nc), mean(static_cast<size_t>(N)), rstd(static_cast<size_t>(N));
  cpu::layernorm_forward<double>(N, C, 1e-5, h.data(), m.affine ? w.data() : nullptr, m.affine ? b.data() : nullptr,
                                 y.data(), mean.data(), rstd.data());
  std::vector<double> dh(nc, 0.0), dw = dw0, db = db0;
  cpu::layernorm_backward<double>(N, C, dy.data(), h.data(), m.affine ? w.data() : nullptr, mean.data(), rstd.data(),
                                  dh.data(), m.affine ? dw.data() : nullptr, m.dbias ? db.data() : nullptr);
  std::vector<double> dx = dx0, dr = dr0;
  for (size_t i = 0; i < nc; ++i) {
    if (m.dx) dx[i] += dh[i];
    if (m.residual && m.dresidual) dr[i] += dh[i];
  }

  // [N, C] buffers at `offset` elements into their allocation
  auto up = [offset](const std::vector<double>& v) {
    std::vector<double> padded(offset, 0.0);
    padded.insert(padded.end(), v.begin(), v.end());
    return upload<T>(padded);
  };
  auto down = [offset, nc](const DevBuf<T>& d) { return read(d.get() + offset, nc); };
  const std::vector<double> zeros(nc, 0.0);  // the outputs start as zeros, not as the expected values
  DevBuf<T> gx = up(x), gr = up(r), gw = upload<T>(w), gb = upload<T>(b), gy = up(zeros), gh = up(zeros);
  DevBuf<float> gmean(static_cast<size_t>(N)), grstd(static_cast<size_t>(N));
  cuda::LayerNormForwardArgs<T> f;
  f.N = N, f.C = C, f.eps = 1e-5f, f.x = gx.get() + offset, f.residual = m.residual ? gr.get() + offset : nullptr;
  f.h_out = m.residual ? gh.get() + offset : nullptr;
  f.weight = m.affine ? gw.get() : nullptr, f.bias = m.affine ? gb.get() : nullptr;
  f.y = gy.get() + offset, f.mean = gmean.get(), f.rstd = grstd.get(), f.kernel = kernel;
  cuda::layernorm_forward(f, cuda::current_stream());

  const std::string label = std::string(cuda::layernorm_kernel_name(kernel)) + " " + type_name<T>() + " N" +
                            std::to_string(N) + " C" + std::to_string(C) + " " + m.name +
                            (offset ? " offset " + std::to_string(offset) : "");
  INFO(label);
  expect_close(down(gy), y, tol_f, label + " y", wf);
  expect_close(read(gmean), mean, tol_f, label + " mean", wf);
  expect_close(read(grstd), rstd, tol_f, label + " rstd", wf);
  if (m.residual) expect_close(down(gh), h, 0.0, label + " h", wf);  // the same rounding of the same sum

  DevBuf<T> gdy = up(dy);
  const std::vector<double> nan_ws(cuda::layernorm_backward_workspace_floats(N, C), std::nan(""));
  const bool both = m.dx && m.dresidual;
  std::vector<double> got[3][4];  // [run][dx, dresidual, dweight, dbias]
  for (int run = 0; run < (both ? 3 : 2); ++run) {
    DevBuf<float> ws = upload<float>(nan_ws);
    DevBuf<T> gdx = up(dx0), gdr = up(run == 2 ? dx0 : dr0), gdw = upload<T>(dw0), gdb = upload<T>(db0);
    cuda::LayerNormBackwardArgs<T> bw;
    bw.N = N, bw.C = C, bw.dy = gdy.get() + offset, bw.h = m.residual ? gh.get() + offset : gx.get() + offset;
    bw.weight = f.weight, bw.mean = gmean.get(), bw.rstd = grstd.get();
    bw.dx = m.dx ? gdx.get() + offset : nullptr, bw.dresidual = m.dresidual ? gdr.get() + offset : nullptr;
    bw.dweight = m.affine ? gdw.get() : nullptr, bw.dbias = m.dbias ? gdb.get() : nullptr;
    bw.workspace = ws.get(), bw.kernel = kernel;
    // the variant asked for runs where it fits (a wrong fallback would hide it from these tests)
    CHECK_MESSAGE(cuda::layernorm_backward_kernel(bw) == expected_ln_backward<T>(C, offset, kernel),
                  label << ": runs " << cuda::layernorm_kernel_name(cuda::layernorm_backward_kernel(bw)));
    cuda::layernorm_backward(bw, cuda::current_stream());
    got[run][0] = down(gdx), got[run][1] = down(gdr), got[run][2] = read(gdw), got[run][3] = read(gdb);
  }
  // a gradient that is not asked for stays as it was (exactly)
  expect_close(got[0][0], dx, m.dx ? tol_b : 0.0, label + " dx", wb);
  expect_close(got[0][1], dr, m.dresidual ? tol_b : 0.0, label + " dresidual", wb);
  expect_close(got[0][2], dw, m.affine ? tol_b : 0.0, label + " dweight", wb);
  expect_close(got[0][3], db, m.dbias ? tol_b : 0.0, label + " dbias", wb);
  for (int g = 0; g < 4; ++g)
    CHECK_MESSAGE(std::memcmp(got[0][g].data(), got[1][g].data(), got[0][g].size() * sizeof(double)) == 0,
                  label << ": gradient " << g << " (dx, dresidual, dweight, dbias) differs between two runs");
  if (both)
    CHECK_MESSAGE(std::memcmp(got[2][0].data(), got[2][1].data(), nc * sizeof(double)) == 0,
                  label << ": dx and dresidual from the same start differ (not the same dh added)");
}
}  // namespace

CLIPCU_GPU_TEST("cuda layernorm: fused residual add, forward and backward against the CPU") {
  WorstError wf{"layernorm forward", 0.0, {}}, wb{"layernorm backward", 0.0, {}};
  uint64_t seed = 300;
  // C: 1 and 5 (odd: Simple even when Warp / Pipelined are asked), 4 and 12, 100, 1020 (C % 4 == 0 but
  // C % 8 != 0: bf16 Pipelined falls back to Warp), 8, 64, 96, 200, 384, 512, 520, 640, 768, 1024
  // (Warp / Pipelined widths, some with idle lanes), 1030, 1536, 2048 (above their backward limit).
  // N: 1, 2, 3, 7 (fewer rows than a block's warps hold), 33 and 45 (a second, short chunk), 1000
  // (32 chunks, the last of 8 rows; Pipelined's groups of 2-3 rows end past a chunk's end), 16411
  // (33 rows per chunk, 498 chunks, the last of 10 rows), 1057 and 2100 (34 and 66 chunks: the
  // Pipelined pass 2 over several column blocks with more chunks than its warps).
  // The first ten are the CLIPCU_TEST_SMALL (sanitizer) set: between them every Pipelined vector
  // width (f32 1, 2, 3, 4, 6, 8; bf16 1, 2, 3, 4) and so every row-group size (1-3 rows).
  const std::vector<std::pair<int64_t, int64_t>> shapes = maybe_small<std::pair<int64_t, int64_t>>(
      {{1, 1}, {7, 5}, {3, 520}, {7, 1020}, {45, 768}, {33, 1024}, {3, 200}, {50, 384}, {33, 512}, {1, 8},
       {2, 12}, {7, 4}, {2, 100}, {9, 1030}, {5, 2048}, {64, 64}, {300, 768}, {1000, 96}, {17, 640}, {4, 1536},
       {1000, 512}, {16411, 8}, {1057, 136}, {2100, 768}},
      10);
  // every variant the header declares, so a new one is tested too
  const std::vector<cuda::LayerNormKernel> kernels = named_values(cuda::layernorm_kernel_name);
  REQUIRE(kernels.size() >= 3);
  for (auto [N, C] : shapes)
    for (cuda::LayerNormKernel k : kernels)
      for (const LnMode& m : kLnModes) {
        // the large shapes (the CPU reference's time) only with dx, and with dx + dresidual
        if (N * C > 100000 && &m != &kLnModes[0] && &m != &kLnModes[1]) continue;
        layernorm_case<float>(N, C, m, k, seed++, wf, wb);
        layernorm_case<bf16>(N, C, m, k, seed++, wf, wb);
      }
  // misaligned rows: 1 element (Simple), 4 bf16 = 8 bytes (Warp's 8-byte vectors still fit, the
  // 16-byte ones of Pipelined do not), 2 floats; and aligned to 16 bytes but not to the
  // allocation's 256 (8 bf16, 4 floats: every variant runs as asked)
  for (cuda::LayerNormKernel k : kernels) {
    layernorm_case<bf16>(33, 512, kLnModes[1], k, seed++, wf, wb, 1);
    layernorm_case<bf16>(33, 512, kLnModes[1], k, seed++, wf, wb, 4);
    layernorm_case<float>(33, 512, kLnModes[1], k, seed++, wf, wb, 2);
    layernorm_case<bf16>(33, 512, kLnModes[1], k, seed++, wf, wb, 8);
    layernorm_case<float>(33, 512, kLnModes[1], k, seed++, wf, wb, 4);
  }
}

namespace {
template <class T>
void bias_act_case(int64_t N, int64_t C, cuda::Act act, bool with_bias, uint64_t seed, WorstError& wf, WorstError& wb) {
  const bool is_bf16 = std::is_same_v<T, bf16>;
  const size_t nc = size_t(N * C);
  Rng rng(seed);
  const std::vector<double> x = stored<T>(randn(nc, rng, 2.0)), b = stored<T>(randn(size_t(C), rng));
  const std::vector<double> dy = stored<T>(randn(nc, rng)), dx0 = stored<T>(randn(nc, rng));
  const std::vector<double> db0 = stored<T>(randn(size_t(C), rng));
  std::vector<double> y(nc), dx = dx0, dz(nc), db = db0;
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c) {
      const size_t i = size_t(n * C + c);
      const double z = x[i] + (with_bias ? b[size_t(c)] : 0.0);
      y[i] = act_ref(act, z);
      dz[i] = dy[i] * act_grad_ref(act, z);
      dx[i] += dz[i];
    }
  cpu::sum_rows<double>(N, C, dz.data(), db.data());
  DevBuf<T> gx = upload<T>(x), gb = upload<T>(b), gy(nc), gdy = upload<T>(dy), gdx = upload<T>(dx0),
            gdb = upload<T>(db0);
  DevBuf<float> ws(cuda::column_sum_workspace_floats(N, C));
  cuda::bias_act_forward<T>(N, C, act, gx.get(), with_bias ? gb.get() : nullptr, gy.get(), cuda::current_stream());
  cuda::bias_act_backward<T>(N, C, act, gx.get(), with_bias ? gb.get() : nullptr, gdy.get(), gdx.get(),
                             with_bias ? gdb.get() : nullptr, ws.get(), cuda::current_stream());
  const std::string label = std::string(type_name<T>()) + " act " + std::to_string(int(act)) + " N" + std::to_string(N) +
                            " C" + std::to_string(C) + (with_bias ? " bias" : "");
  INFO(label);
  expect_close(read(gy), y, is_bf16 ? kBf16 : kF32Fwd, label + " y", wf);
  expect_close(read(gdx), dx, is_bf16 ? kBf16 : kF32Grad, label + " dx", wb);
  if (with_bias) expect_close(read(gdb), db, is_bf16 ? kBf16 : kF32Grad, label + " dbias", wb);
}
}  // namespace

CLIPCU_GPU_TEST("cuda bias + activation and column sums against the CPU") {
  WorstError wf{"bias_act forward", 0.0, {}}, wb{"bias_act backward", 0.0, {}};
  uint64_t seed = 500;
  for (cuda::Act act : {cuda::Act::None, cuda::Act::ReLU, cuda::Act::QuickGELU, cuda::Act::GELU, cuda::Act::GELUTanh})
    for (auto [N, C] : {std::pair<int64_t, int64_t>{1, 1}, {17, 33}, {600, 130}, {5000, 7}}) {
      bias_act_case<float>(N, C, act, true, seed++, wf, wb);
      bias_act_case<bf16>(N, C, act, true, seed++, wf, wb);
      bias_act_case<float>(N, C, act, false, seed++, wf, wb);
    }
  // column_sum: a linear layer's bias gradient
  WorstError wc{"column_sum", 0.0, {}};
  for (auto [R, C] : {std::pair<int64_t, int64_t>{1, 3}, {100, 1}, {12800, 768}, {31, 513}}) {
    Rng rng(uint64_t(R + C));
    const std::vector<double> x = randn(size_t(R * C), rng), o0 = randn(size_t(C), rng);
    std::vector<double> o = o0;
    cpu::sum_rows<double>(R, C, x.data(), o.data());
    DevBuf<float> gx = upload<float>(x), go = upload<float>(o0), ws(cuda::column_sum_workspace_floats(R, C));
    cuda::column_sum<float>(R, C, gx.get(), go.get(), ws.get(), cuda::current_stream());
    expect_close(read(go), o, kF32Grad, "column_sum R" + std::to_string(R) + " C" + std::to_string(C), wc);
  }
}

// ================================================================ embeddings
namespace {
template <class T, class I>
void embedding_case(int64_t B, int64_t Tn, int64_t V, int64_t C, bool with_pos, uint64_t seed, WorstError& w) {
  const double tol = std::is_same_v<T, bf16> ? kBf16 : kF32Fwd;
  const int64_t N = B * Tn;
  Rng rng(seed);
  const std::vector<double> table = stored<T>(randn(size_t(V * C), rng)), pos = stored<T>(randn(size_t(Tn * C), rng));
  std::vector<I> ids(static_cast<size_t>(N));
  for (auto& id : ids) id = I(rng.below(uint64_t(std::min<int64_t>(V, 5))));  // many repeats
  if (N > 2) ids[size_t(N - 1)] = I(V - 1);
  const std::vector<double> gout = stored<T>(randn(size_t(N * C), rng));
  const std::vector<double> gt0 = stored<T>(randn(size_t(V * C), rng)), gp0 = stored<T>(randn(size_t(Tn * C), rng));
  // CPU: embedding then the broadcast add of pos; backward: scatter-add, and the add's sum over B
  std::vector<double> out(size_t(N * C)), gt = gt0, gp = gp0;
  cpu::embedding_forward<double, I>(N, V, C, table.data(), ids.data(), out.data());
  if (with_pos) cpu::add_forward<double>(B, Tn * C, out.data(), pos.data(), out.data());
  cpu::embedding_backward<double, I>(N, V, C, ids.data(), gout.data(), gt.data());
  if (with_pos) cpu::add_backward<double>(B, Tn * C, gout.data(), nullptr, gp.data());

  DevBuf<T> gtable = upload<T>(table), gpos = upload<T>(pos), gy(size_t(N * C));
  DevBuf<I> gids(static_cast<size_t>(N));
  device_copy(gids.get(), Device::cuda(0), ids.data(), Device::cpu(), ids.size() * sizeof(I));
  DevBuf<int> flag(1);
  write<int>(flag.get(), {0.0});
  cuda::embedding_forward<T, I>(N, Tn, V, C, gtable.get(), gids.get(), with_pos ? gpos.get() : nullptr, gy.get(),
                                flag.get(), cuda::current_stream());
  const cuda::EmbeddingIndex ix = cuda::embedding_build_index<I>(N, V, ids.data());
  auto up32 = [](const std::vector<int32_t>& v) {
    DevBuf<int32_t> b(v.size());
    if (!v.empty()) device_copy(b.get(), Device::cuda(0), v.data(), Device::cpu(), v.size() * sizeof(int32_t));
    return b;
  };
  DevBuf<int32_t> rows = up32(ix.rows), offsets = up32(ix.offsets), positions = up32(ix.positions);
  DevBuf<T> ggout = upload<T>(gout), ggt = upload<T>(gt0), ggp = upload<T>(gp0);
  cuda::embedding_backward<T>(int64_t(ix.rows.size()), C, rows.get(), offsets.get(), positions.get(), ggout.get(),
                              ggt.get(), cuda::current_stream());
  if (with_pos) cuda::positional_backward<T>(B, Tn, C, ggout.get(), ggp.get(), cuda::current_stream());
  const std::string label = std::string(type_name<T>()) + (sizeof(I) == 4 ? " i32" : " i64") + " B" +
                            std::to_string(B) + " T" + std::to_string(Tn) + " V" + std::to_string(V) + " C" +
                            std::to_string(C);
  INFO(label);
  expect_close(read(gy), out, tol, label + " out", w);
  expect_close(read(ggt), gt, tol, label + " grad_table", w);
  if (with_pos) expect_close(read(ggp), gp, tol, label + " grad_pos", w);
  CHECK(read(flag)[0] == 0);
}
}  // namespace

CLIPCU_GPU_TEST("cuda embedding: token + positional forward and deterministic scatter-add backward") {
  WorstError w{"embedding", 0.0, {}};
  uint64_t seed = 700;
  for (auto [B, Tn, V, C] : {std::array<int64_t, 4>{1, 1, 1, 1}, {2, 7, 11, 13}, {4, 77, 300, 64}, {3, 5, 49408, 32}}) {
    embedding_case<float, int64_t>(B, Tn, V, C, true, seed++, w);
    embedding_case<bf16, int32_t>(B, Tn, V, C, true, seed++, w);
    embedding_case<float, int32_t>(B, Tn, V, C, false, seed++, w);
  }
  // an id outside the table: a zero row and the error flag, no out-of-bounds read
  const std::vector<int32_t> bad = {0, 5, 1};
  DevBuf<int32_t> ids(3);
  device_copy(ids.get(), Device::cuda(0), bad.data(), Device::cpu(), 3 * sizeof(int32_t));
  DevBuf<float> table = upload<float>(std::vector<double>(4 * 2, 1.0)), out(3 * 2);
  DevBuf<int> flag(1);
  write<int>(flag.get(), {0.0});
  cuda::embedding_forward<float, int32_t>(3, 3, 4, 2, table.get(), ids.get(), nullptr, out.get(), flag.get(),
                                          cuda::current_stream());
  CHECK(read(flag)[0] == 1);
  CHECK(read(out) == std::vector<double>{1, 1, 0, 0, 1, 1});
}

CLIPCU_GPU_TEST("cuda class token and end-token gather against the CPU") {
  WorstError w{"class token, gather", 0.0, {}};
  for (auto [B, P, C] : {std::array<int64_t, 3>{1, 0, 1}, {2, 49, 64}, {5, 7, 3}}) {
    Rng rng(uint64_t(B * 100 + P * 10 + C));
    const std::vector<double> x = randn(size_t(B * P * C), rng), cls = randn(size_t(C), rng);
    const std::vector<double> pos = randn(size_t((P + 1) * C), rng), dout = randn(size_t(B * (P + 1) * C), rng);
    const std::vector<double> dx0 = randn(size_t(B * P * C), rng), dcls0 = randn(size_t(C), rng),
                              dpos0 = randn(size_t((P + 1) * C), rng);
    // CPU: concat([cls broadcast to [B, 1, C], x], dim 1) + pos, and the backwards of both
    std::vector<double> clsb(size_t(B * C));
    for (int64_t b = 0; b < B; ++b) std::copy(cls.begin(), cls.end(), clsb.begin() + b * C);
    std::vector<double> out(size_t(B * (P + 1) * C)), dx = dx0, dcls = dcls0, dpos = dpos0, dclsb(size_t(B * C), 0.0);
    cpu::concat_forward_part<double>(B, P + 1, C, 0, 1, clsb.data(), out.data());
    if (P > 0) cpu::concat_forward_part<double>(B, P + 1, C, 1, P, x.data(), out.data());
    cpu::add_forward<double>(B, (P + 1) * C, out.data(), pos.data(), out.data());
    cpu::add_backward<double>(B, (P + 1) * C, dout.data(), nullptr, dpos.data());
    cpu::concat_backward_part<double>(B, P + 1, C, 0, 1, dout.data(), dclsb.data());
    if (P > 0) cpu::concat_backward_part<double>(B, P + 1, C, 1, P, dout.data(), dx.data());
    cpu::sum_rows<double>(B, C, dclsb.data(), dcls.data());

    DevBuf<float> gx = upload<float>(x), gcls = upload<float>(cls), gpos = upload<float>(pos);
    DevBuf<float> gout(out.size()), gdout = upload<float>(dout), gdx = upload<float>(dx0), gdcls = upload<float>(dcls0),
                                    gdpos = upload<float>(dpos0);
    cuda::class_token_forward<float>(B, P, C, gx.get(), gcls.get(), gpos.get(), gout.get(), cuda::current_stream());
    cuda::class_token_backward<float>(B, P, C, gdout.get(), gdx.get(), gdcls.get(), gdpos.get(), cuda::current_stream());
    const std::string label = "class token B" + std::to_string(B) + " P" + std::to_string(P) + " C" + std::to_string(C);
    expect_close(read(gout), out, kF32Fwd, label + " out", w);
    if (P > 0) expect_close(read(gdx), dx, kF32Grad, label + " dx", w);
    expect_close(read(gdcls), dcls, kF32Grad, label + " dcls", w);
    expect_close(read(gdpos), dpos, kF32Grad, label + " dpos", w);

    // end-token gather over the P + 1 tokens
    const int64_t Tn = P + 1;
    std::vector<int64_t> index(static_cast<size_t>(B));
    for (int64_t b = 0; b < B; ++b) index[size_t(b)] = int64_t(rng.below(uint64_t(Tn)));
    const std::vector<double> gyv = randn(size_t(B * C), rng);
    std::vector<double> y(size_t(B * C)), gxr = dout;
    cpu::gather_rows_forward<double, int64_t>(B, Tn, C, out.data(), index.data(), y.data());
    cpu::gather_rows_backward<double, int64_t>(B, Tn, C, index.data(), gyv.data(), gxr.data());
    DevBuf<int64_t> gidx(static_cast<size_t>(B));
    device_copy(gidx.get(), Device::cuda(0), index.data(), Device::cpu(), index.size() * sizeof(int64_t));
    DevBuf<float> gy(size_t(B * C)), ggx = upload<float>(dout), ggy = upload<float>(gyv);
    DevBuf<int> flag(1);
    write<int>(flag.get(), {0.0});
    cuda::gather_rows_forward<float, int64_t>(B, Tn, C, gout.get(), gidx.get(), gy.get(), flag.get(),
                                              cuda::current_stream());
    cuda::gather_rows_backward<float, int64_t>(B, Tn, C, gidx.get(), ggy.get(), ggx.get(), flag.get(),
                                               cuda::current_stream());
    expect_close(read(gy), y, kF32Fwd, label + " gather", w);
    expect_close(read(ggx), gxr, kF32Grad, label + " gather backward", w);
    CHECK(read(flag)[0] == 0);
  }
}

// ================================================================ contrastive loss
namespace {
template <class T>
void clip_loss_case(int64_t B, int64_t E, double log_scale, uint64_t seed, WorstError& wf, WorstError& wb) {
  const bool is_bf16 = std::is_same_v<T, bf16>;
  Rng rng(seed);
  const std::vector<double> img = stored<T>(randn(size_t(B * E), rng)), txt = stored<T>(randn(size_t(B * E), rng));
  const double s = stored<T>(log_scale);
  const std::vector<double> gi0 = stored<T>(randn(size_t(B * E), rng, 0.1)),
                            gt0 = stored<T>(randn(size_t(B * E), rng, 0.1));
  const double gs0 = stored<T>(0.25), grad_loss = 1.5;
  // CPU
  std::vector<double> in(size_t(B * E)), tn(size_t(B * E)), inorm(static_cast<size_t>(B)), tnorm(static_cast<size_t>(B)), L(size_t(B * B)),
      r(static_cast<size_t>(B)), c(static_cast<size_t>(B));
  cpu::ClipLossParams<double> p;
  p.B = B, p.E = E, p.image = img.data(), p.text = txt.data(), p.log_scale = s;
  p.image_n = in.data(), p.text_n = tn.data(), p.image_norm = inorm.data(), p.text_norm = tnorm.data();
  p.logits = L.data(), p.row_lse = r.data(), p.col_lse = c.data();
  const double loss = cpu::clip_loss_forward<double>(p);
  std::vector<double> gi = gi0, gt = gt0, gs = {gs0};
  cpu::clip_loss_backward<double>(p, grad_loss, gi.data(), gt.data(), gs.data());
  // GPU
  DevBuf<T> gimg = upload<T>(img), gtxt = upload<T>(txt), gls = upload<T>({s}), glogits(size_t(B * B));
  DevBuf<float> ws_in(size_t(B * E)), ws_tn(size_t(B * E)), ws_inorm(static_cast<size_t>(B)), ws_tnorm(static_cast<size_t>(B)), ws_r(static_cast<size_t>(B)),
      ws_c(static_cast<size_t>(B)), ws_loss(1), ws_scratch(static_cast<size_t>(B)), ggl = upload<float>({grad_loss});
  cuda::ClipLossArgs<T> a;
  a.B = B, a.E = E, a.image = gimg.get(), a.text = gtxt.get(), a.log_scale = gls.get();
  a.image_n = ws_in.get(), a.text_n = ws_tn.get(), a.image_norm = ws_inorm.get(), a.text_norm = ws_tnorm.get();
  a.row_lse = ws_r.get(), a.col_lse = ws_c.get(), a.loss = ws_loss.get(), a.logits = glogits.get();
  a.scratch = ws_scratch.get();
  DevBuf<T> ggi = upload<T>(gi0), ggt = upload<T>(gt0), ggs = upload<T>({gs0});
  cuda::clip_loss_forward(a, cuda::current_stream());
  cuda::clip_loss_backward(a, ggl.get(), ggi.get(), ggt.get(), ggs.get(), cuda::current_stream());
  const std::string label = std::string(type_name<T>()) + " B" + std::to_string(B) + " E" + std::to_string(E) +
                            " s" + std::to_string(log_scale);
  INFO(label);
  const double tol_f = is_bf16 ? kBf16 : kF32Fwd, tol_b = is_bf16 ? kBf16 : kF32Grad;
  // the saved state and the loss are float whatever T is: float tolerances
  expect_close(read(ws_loss), {loss}, kF32Fwd, label + " loss", wf);
  expect_close(read(ws_r), r, kF32Fwd, label + " row lse", wf);
  expect_close(read(ws_c), c, kF32Fwd, label + " col lse", wf);
  expect_close(read(ws_in), in, kF32Fwd, label + " image_n", wf);
  expect_close(read(ws_inorm), inorm, kF32Fwd, label + " image_norm", wf);
  expect_close(read(glogits), L, tol_f, label + " logits", wf);
  expect_close(read(ggi), gi, tol_b, label + " grad image", wb);
  expect_close(read(ggt), gt, tol_b, label + " grad text", wb);
  expect_close(read(ggs), gs, tol_b, label + " grad log_scale", wb);
}
}  // namespace

CLIPCU_GPU_TEST("cuda clip loss: fused forward and backward against the CPU") {
  WorstError wf{"clip loss forward", 0.0, {}}, wb{"clip loss backward", 0.0, {}};
  uint64_t seed = 900;
  for (auto [B, E] : maybe_small<std::pair<int64_t, int64_t>>({{1, 1}, {2, 8}, {33, 64}, {40, 1024}, {100, 77}, {257, 512}}, 4))
    for (double s : {0.0, std::log(1 / 0.07)}) {
      clip_loss_case<float>(B, E, s, seed++, wf, wb);
      clip_loss_case<bf16>(B, E, s, seed++, wf, wb);
    }
}

// ================================================================ AdamW
namespace {
template <class G>
void adamw_case(bool with_bf16_copy, float max_norm, WorstError& w) {
  const std::vector<int64_t> sizes = {1, 100, 0, cuda::kAdamWChunk + 7, 3, 200003};
  const double wd[] = {0.0, 0.2, 0.2, 0.1, 0.0, 0.2};
  Rng rng(42);
  struct Host {
    std::vector<double> p, g, m, v;
  };
  std::vector<Host> host(sizes.size());
  std::vector<DevBuf<float>> dp, dm, dv;
  std::vector<DevBuf<G>> dg;
  std::vector<DevBuf<bf16>> dlow;
  std::vector<cuda::AdamWTensor> desc(sizes.size());
  for (size_t t = 0; t < sizes.size(); ++t) {
    const size_t n = size_t(sizes[t]);
    host[t].p = stored<float>(randn(n, rng));
    host[t].g = stored<G>(randn(n, rng, 0.1));
    host[t].m = stored<float>(randn(n, rng, 0.01));
    host[t].v = randn(n, rng, 0.01);
    for (double& x : host[t].v) x = stored<float>(x * x);
    dp.push_back(upload<float>(host[t].p));
    dm.push_back(upload<float>(host[t].m));
    dv.push_back(upload<float>(host[t].v));
    dg.push_back(upload<G>(host[t].g));
    dlow.emplace_back(n);
    desc[t].param = dp.back().get();
    desc[t].param_bf16 = with_bf16_copy ? dlow.back().get() : nullptr;
    desc[t].grad = dg.back().get();
    desc[t].exp_avg = dm.back().get();
    desc[t].exp_avg_sq = dv.back().get();
    desc[t].n = sizes[t];
    desc[t].weight_decay = float(wd[t]);
  }
  const std::vector<int32_t> start = cuda::adamw_layout(sizes);
  const int64_t chunks = start.back();
  DevBuf<cuda::AdamWTensor> ddesc(desc.size());
  device_copy(ddesc.get(), Device::cuda(0), desc.data(), Device::cpu(), desc.size() * sizeof(cuda::AdamWTensor));
  DevBuf<int32_t> dstart(start.size());
  device_copy(dstart.get(), Device::cuda(0), start.data(), Device::cpu(), start.size() * sizeof(int32_t));
  DevBuf<double> partial(static_cast<size_t>(chunks));
  DevBuf<float> norm(1), coef(1);

  cuda::AdamWHyper h;
  h.lr = 1e-3, h.beta1 = 0.9, h.beta2 = 0.98, h.eps = 1e-6;
  for (int64_t step = 1; step <= 2; ++step) {
    h.step = step;
    cuda::grad_norm<G>(int(sizes.size()), ddesc.get(), dstart.get(), chunks, partial.get(), max_norm, norm.get(),
                       coef.get(), cuda::current_stream());
    cuda::adamw_step<G>(int(sizes.size()), ddesc.get(), dstart.get(), chunks, h, coef.get(), norm.get(),
                        cuda::current_stream());
    // CPU: clip_grad_norm's rule, then torch's AdamW per tensor
    double ss = 0;
    for (const Host& x : host) ss += cpu::sum_squares<double>(int64_t(x.g.size()), x.g.data());
    const double ref_norm = std::sqrt(ss);
    const double c = (max_norm >= 0 && ref_norm > max_norm) ? max_norm / (ref_norm + 1e-6) : 1.0;
    const std::string label = std::string(type_name<G>()) + " grads, step " + std::to_string(step) +
                              (max_norm >= 0 ? " clipped" : "");
    expect_close(read(norm), {ref_norm}, 1e-6, label + " norm", w);
    for (size_t t = 0; t < sizes.size(); ++t) {
      std::vector<double> g = host[t].g;
      cpu::scale_inplace<double>(int64_t(g.size()), g.data(), c);
      cpu::AdamWStep st;
      st.lr = h.lr, st.beta1 = h.beta1, st.beta2 = h.beta2, st.eps = h.eps, st.weight_decay = wd[t], st.t = step;
      cpu::adamw_step<double>(int64_t(g.size()), st, host[t].p.data(), g.data(), host[t].m.data(), host[t].v.data());
      const std::string lt = label + " tensor " + std::to_string(t);
      expect_close(read(dp[t]), host[t].p, kF32Fwd, lt + " param", w);
      expect_close(read(dm[t]), host[t].m, kF32Fwd, lt + " exp_avg", w);
      expect_close(read(dv[t]), host[t].v, kF32Fwd, lt + " exp_avg_sq", w);
      if (with_bf16_copy) expect_close(read(dlow[t]), host[t].p, kBf16, lt + " bf16 copy", w);
    }
  }
  // a NaN gradient: the norm is NaN and the step leaves every parameter as it was
  write(dg[1].get(), std::vector<double>(1, NAN));
  const std::vector<double> before = read(dp[3]);
  cuda::grad_norm<G>(int(sizes.size()), ddesc.get(), dstart.get(), chunks, partial.get(), max_norm, norm.get(),
                     coef.get(), cuda::current_stream());
  cuda::adamw_step<G>(int(sizes.size()), ddesc.get(), dstart.get(), chunks, h, coef.get(), norm.get(),
                      cuda::current_stream());
  CHECK(std::isnan(read(norm)[0]));
  CHECK(read(dp[3]) == before);
}
}  // namespace

CLIPCU_GPU_TEST("cuda adamw: multi-tensor step, global norm and clipping against the CPU") {
  WorstError w{"adamw", 0.0, {}};
  adamw_case<float>(false, -1.f, w);   // no clipping
  adamw_case<float>(false, 0.5f, w);   // clipped (the norm is about 0.1 sqrt(n) > 0.5)
  adamw_case<bf16>(true, 1.0f, w);     // bf16 gradients, float32 master weights, bf16 copy
}

// ================================================================ runtime
CLIPCU_GPU_TEST("cuda runtime: the caching allocator stops calling cudaMalloc after warm-up") {
  cuda::CachingAllocator& alloc = cuda::allocator(0);
  const std::vector<size_t> step_sizes = {1000, 1 << 20, 3 << 20, 123457, 512, 77 * 512 * 4};
  auto one_step = [&] {
    std::vector<void*> ptrs;
    for (size_t s : step_sizes) ptrs.push_back(alloc.allocate(s));
    for (void* p : ptrs) alloc.free(p);
  };
  one_step();  // warm-up
  const cuda::AllocatorStats warm = alloc.stats();
  for (int i = 0; i < 10; ++i) one_step();
  const cuda::AllocatorStats after = alloc.stats();
  CHECK(after.device_mallocs == warm.device_mallocs);
  CHECK(after.cache_hits - warm.cache_hits == 10 * step_sizes.size());
  CHECK(after.in_use_bytes == warm.in_use_bytes);
  MESSAGE("allocator: " << after.device_mallocs << " cudaMalloc, " << after.cache_hits << " cache hits, peak "
                        << after.peak_in_use_bytes << " bytes");
}

CLIPCU_GPU_TEST("cuda runtime: pinned staging uploads in stream order") {
  const size_t n = 1 << 16;
  DevBuf<float> a(n), b(n);
  std::vector<float> h(n);
  for (int round = 0; round < 3; ++round) {
    for (size_t i = 0; i < n; ++i) h[i] = float(i) + 0.5f * float(round);
    cuda::staging().upload(a.get(), h.data(), n * sizeof(float));
    for (size_t i = 0; i < n; ++i) h[i] = -float(i) - float(round);  // the host buffer is free at once
    cuda::staging().upload(b.get(), h.data(), n * sizeof(float));
    const std::vector<double> ra = read(a), rb = read(b);
    bool ok = true;
    for (size_t i = 0; i < n; ++i)
      ok = ok && ra[i] == double(float(i) + 0.5f * float(round)) && rb[i] == double(-float(i) - float(round));
    CHECK_MESSAGE(ok, "round " << round);
  }
}

// ================================================================ host side (no GPU needed)
namespace {
// PTX's canonical 128-byte-swizzled layouts (PTX ISA, "Shared Memory Matrix Layout"), written
// out independently of the kernel: the byte address the tensor cores read for element (mn, k)
// of a k16 slice (bf16, 8 elements per 16 bytes), given the descriptor's fields. K-major:
// ((8, m), (8, 2)) : ((128 B, SBO), (2 B, 16 B)); MN-major: ((8, 8, m), (8, 2)) : ((2 B, 16 B,
// LBO), (128 B, SBO)); then bits 4-6 of the address are XORed with bits 7-9.
uint32_t canonical_address(uint64_t desc, bool mn_major, int mn, int k) {
  const uint32_t start = uint32_t(desc & 0x3FFF) << 4, lbo = uint32_t((desc >> 16) & 0x3FFF) << 4;
  const uint32_t sbo = uint32_t((desc >> 32) & 0x3FFF) << 4;
  uint32_t a;
  if (mn_major) {
    a = start + (mn % 8) * 2 + ((mn / 8) % 8) * 16 + (mn / 64) * lbo + (k % 8) * 128 + (k / 8) * sbo;
  } else {
    a = start + (mn % 8) * 128 + (mn / 8) * sbo + (k / 8) * 16 + (k % 8) * 2;
  }
  return a ^ (((a >> 7) & 7) << 4);
}
}  // namespace

TEST_CASE("cuda host: the Hopper GEMM's shared-memory tiles and descriptors agree with PTX's canonical layouts") {
  namespace L = cuda::wgmma_layout;
  constexpr uint32_t kTile = 7 * 1024;  // a 1024-byte aligned tile in shared memory
  const uint64_t d = L::make_desc(kTile + 96, 8192, 1024);
  CHECK((d & 0x3FFF) == (kTile + 96) >> 4);
  CHECK(((d >> 16) & 0x3FFF) == 8192 >> 4);
  CHECK(((d >> 32) & 0x3FFF) == 1024 >> 4);
  CHECK((d >> 62) == 1);  // 128-byte swizzle
  int64_t checked = 0, wrong = 0;
  // every element of every k16 slice the kernel reads: A (64 rows per warpgroup, 2 warpgroups)
  // and B (128 columns per wgmma, up to 2 per k step), both majors; the loader put element
  // (row r, element e) of the global block at tile offset offset(r, e)
  for (bool mn_major : {false, true})
    for (int mn0 : {0, 64, 128}) {
      const int width = mn0 == 64 ? 64 : 128;  // A's second warpgroup; B's wgmmas
      for (int ks = 0; ks < L::kBK / 16; ++ks) {
        const L::SliceDesc s = mn_major ? L::slice0<true>(mn0) : L::slice0<false>(mn0);
        const uint32_t step = mn_major ? L::kSliceStep<true> : L::kSliceStep<false>;
        const uint64_t desc = L::make_desc(kTile + s.start + uint32_t(ks) * step, s.lead, s.stride);
        for (int mn = 0; mn < width; ++mn)
          for (int k = 0; k < 16; ++k) {
            const int row_m = mn0 + mn, kk = 16 * ks + k;
            const int off = mn_major ? L::MnMajorTile::offset(kk, row_m) : L::KMajorTile::offset(row_m, kk);
            ++checked;
            if (canonical_address(desc, mn_major, mn, k) != kTile + 2 * uint32_t(off)) ++wrong;
          }
      }
    }
  MESSAGE("wgmma layouts: " << checked << " element addresses checked, " << wrong << " differ");
  CHECK(wrong == 0);
  // the tiles are permutations of their memory (the loader's chunks land on distinct addresses)
  for (int rows : {128, 256}) {
    std::vector<int> seen(size_t(rows) * 64, 0);
    for (int r = 0; r < rows; ++r)
      for (int e = 0; e < 64; ++e) ++seen[size_t(L::KMajorTile::offset(r, e))];
    CHECK(std::all_of(seen.begin(), seen.end(), [](int c) { return c == 1; }));
    std::vector<int> seen_mn(size_t(rows) * 64, 0);
    for (int k = 0; k < 64; ++k)
      for (int e = 0; e < rows; ++e) ++seen_mn[size_t(L::MnMajorTile::offset(k, e))];
    CHECK(std::all_of(seen_mn.begin(), seen_mn.end(), [](int c) { return c == 1; }));
  }
}

TEST_CASE("cuda host: a failed GPU comparison says which rows and columns are off") {
  // a 10 x 200 matrix with row 3's columns 128-135 wrong and one NaN at (7, 5)
  std::vector<double> ref(2000), got;
  for (size_t i = 0; i < ref.size(); ++i) ref[i] = std::sin(double(i));
  got = ref;
  for (size_t c = 128; c < 136; ++c) got[3 * 200 + c] += 1.0;
  got[7 * 200 + 5] = std::nan("");
  got[9 * 200 + 199] += 1e-6;  // within the tolerance: not counted
  const std::string m = mismatch_report(got, ref, 1e-3, 200);
  INFO(m);
  CHECK(m.find("9 of 2000 elements off") != std::string::npos);
  CHECK(m.find("1 NaN") != std::string::npos);
  CHECK(m.find("(3, 128)") != std::string::npos);
  CHECK(m.find("rows hit 2 of 10, columns hit 9 of 200") != std::string::npos);
  CHECK(m.find("row % 64 hit: 3,7;") != std::string::npos);
  CHECK(m.find("column % 128 hit: 0-7") != std::string::npos);  // 128-135 -> 0-7, and 5
  CHECK(index_ranges({true, true, false, true, false, false, true, true, true}) == "0-1,3,6-8");
  CHECK(mismatch_report(ref, ref, 1e-3, 0).find("0 of 2000 elements off") != std::string::npos);
}

TEST_CASE("cuda host: allocator size classes round up by at most 25% in 512-byte steps") {
  size_t prev = 0;
  for (size_t bytes : {size_t(0), size_t(1), size_t(512), size_t(513), size_t(1) << 20, (size_t(1) << 20) + 1,
                       size_t(3) << 20, size_t(123456789), size_t(1) << 34}) {
    const size_t c = cuda::CachingAllocator::size_class(bytes);
    CHECK(c >= bytes);
    CHECK(c % 512 == 0);
    CHECK(c >= prev);
    if (bytes > 512) CHECK(double(c) <= 1.25 * double(bytes) + 512);
    prev = c;
  }
  CHECK(cuda::CachingAllocator::size_class((size_t(1) << 20) + 1) == (size_t(5) << 18));
}

TEST_CASE("cuda host: the embedding index buckets positions by id, in order, and rejects bad ids") {
  const std::vector<int64_t> ids = {3, 1, 3, 0, 3, 1};
  const cuda::EmbeddingIndex ix = cuda::embedding_build_index<int64_t>(6, 5, ids.data());
  CHECK(ix.rows == std::vector<int32_t>{0, 1, 3});
  CHECK(ix.offsets == std::vector<int32_t>{0, 1, 3, 6});
  CHECK(ix.positions == std::vector<int32_t>{3, 1, 5, 0, 2, 4});
  const std::vector<int32_t> bad = {0, 5};
  CHECK_THROWS_WITH_AS(cuda::embedding_build_index<int32_t>(2, 5, bad.data()),
                       doctest::Contains("id 5 at position 1 is outside [0, 5)"), clipcu::Error);
}

TEST_CASE("cuda host: AdamW chunk layout over tensors, empty ones included") {
  const std::vector<int32_t> s = cuda::adamw_layout({0, cuda::kAdamWChunk * 2, 0, 1, cuda::kAdamWChunk + 1});
  CHECK(s == std::vector<int32_t>{0, 0, 2, 2, 3, 5});
  CHECK_THROWS_AS(cuda::adamw_layout({-1}), clipcu::Error);
}

TEST_CASE("cuda host: launchers reject bad arguments with clipcu::Error before touching the device") {
  cuda::GemmParams<float> g;
  g.M = -1, g.N = 2, g.K = 3;
  CHECK_THROWS_WITH_AS(cuda::gemm(g, nullptr), doctest::Contains("negative size"), clipcu::Error);
  cuda::AttentionShape s;
  s.B = 1, s.H = 1, s.Tq = 4, s.Tk = 4, s.D = 200;
  cuda::AttentionArgs<float> a;
  CHECK_THROWS_WITH_AS(cuda::attention_forward(s, a, nullptr), doctest::Contains("head dim D 200"), clipcu::Error);
  s.D = 64, s.Tk = 5, s.causal = true;
  CHECK_THROWS_WITH_AS(cuda::attention_forward(s, a, nullptr), doctest::Contains("causal needs Tq == Tk"),
                       clipcu::Error);
  cuda::LayerNormForwardArgs<bf16> ln;
  ln.N = 3, ln.C = 0;
  CHECK_THROWS_AS(cuda::layernorm_forward(ln, nullptr), clipcu::Error);
  cuda::ClipLossArgs<float> cl;
  cl.B = 4, cl.E = 4096;
  CHECK_THROWS_WITH_AS(cuda::clip_loss_forward(cl, nullptr), doctest::Contains("E 4096"), clipcu::Error);
}

#endif  // CLIPCU_WITH_CUDA

// Last in the file: without a GPU every CLIPCU_GPU_TEST above was skipped; exit 77 = Skipped.
TEST_CASE("cuda ops: a GPU answers (otherwise the GPU tests are SKIPPED)") {
  clipcu::test::exit_77_without_gpu("test_cuda_ops");
  CHECK(clipcu::cuda_available());
}
