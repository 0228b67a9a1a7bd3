// The CUDA convolution, batch norm and pooling kernels (kernels/cuda/conv.cuh, batchnorm.cuh)
// against their CPU twins (kernels/cpu/conv2d.h, batchnorm.h, pool.h) run in float64 on the
// values the GPU holds, and the engine ops (conv2d, batch_norm2d, avg_pool2d on CUDA tensors,
// forward and backward through the tape) against the same ops on the CPU. Norm-wise relative
// errors: float32 1e-5 forward / 1e-4 gradients (the Simple kernel, cuDNN without TF32), TF32
// tensor cores 2e-3, bf16 storage 1e-2. Backward outputs start from random values, so the
// accumulate (+=) contract is checked too. Inputs: random, ones and arange; odd sizes, the
// ResNet stem (3 channels, stride 2), 1x1 and 3x3 layers, the ViT patch embedding (kernel =
// stride), channel counts that are and are not multiples of the tensor-core K step, and a
// backward-filter large enough to be split over K.
//
// Without a GPU the GPU tests are skipped and the last test case exits 77 (ctest: Skipped).
// CLIPCU_TEST_SMALL=1 keeps the smaller shapes (sanitizer runs).
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "tests/cuda_support.h"
#include "tests/support.h"

#ifdef CLIPCU_WITH_CUDA
#include "engine/cuda_runtime.h"
#include "engine/device.h"
#include "engine/dtype.h"
#include "engine/rng.h"
#include "kernels/cpu/batchnorm.h"
#include "kernels/cpu/conv2d.h"
#include "kernels/cpu/pool.h"
#include "kernels/cuda/batchnorm.cuh"
#include "kernels/cuda/conv.cuh"
#include "kernels/cuda/conv_gather.h"

using namespace clipcu;
using cuda::bf16;
using test::WorstError;
using namespace test::gpu;

namespace {

enum class Fill { Random, Ones, Arange };
const char* fill_name(Fill f) { return f == Fill::Random ? "random" : f == Fill::Ones ? "ones" : "arange"; }
// Values of one kind, scaled by `scale`; arange wraps into [-1, 1) so sums stay modest.
std::vector<double> values(size_t n, Fill f, Rng& rng, double scale = 1.0) {
  std::vector<double> v(n);
  for (size_t i = 0; i < n; ++i) {
    switch (f) {
      case Fill::Random: v[i] = scale * rng.normal(); break;
      case Fill::Ones: v[i] = scale; break;
      case Fill::Arange: v[i] = scale * (double(i % 97) / 48.5 - 1.0); break;
    }
  }
  return v;
}

// For outputs the kernels ADD into (dx, dw, dbias start from random values): the error is measured
// against the larger of the result and the added contribution. A bf16 accumulation rounds the
// contribution and then the sum, so when the start value nearly cancels the contribution (one
// element of dw, say) the error is a few bf16 steps of the contribution, not of the small sum.
void expect_close_accumulated(const std::vector<double>& got, const std::vector<double>& ref,
                              const std::vector<double>& start, double tol, const std::string& label, WorstError& worst,
                              int64_t cols = 0) {
  REQUIRE_MESSAGE(got.size() == ref.size(), label << ": " << got.size() << " values vs " << ref.size());
  double num = 0, den_sum = 0, den_added = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    num += (got[i] - ref[i]) * (got[i] - ref[i]);
    den_sum += ref[i] * ref[i];
    den_added += (ref[i] - start[i]) * (ref[i] - start[i]);
  }
  const double den = std::max(den_sum, den_added);
  const double e = std::isnan(num) ? INFINITY : den > 0 ? std::sqrt(num / den) : std::sqrt(num);
  worst.add(label, e);
  CHECK_MESSAGE(e <= tol, label << ": rel err " << e << " > tol " << tol
                                << (e <= tol ? "" : mismatch_report(got, ref, tol, cols)));
}

// ================================================================ conv2d kernels
struct ConvCase {
  int64_t N, Cin, H, W, Cout, K, stride, pad;
  const char* what;
};

// every kernel this build and GPU run (Wgmma on Hopper with sm_90a code, Cudnn with cuDNN)
std::vector<cuda::ConvKernel> conv_kernels() { return cuda::conv_kernels(0); }

// forward tolerance, gradient tolerance
std::pair<double, double> conv_tol(cuda::ConvKernel k, bool is_bf16) {
  if (is_bf16) return {kBf16, kBf16};
  if (k == cuda::ConvKernel::TensorCore || k == cuda::ConvKernel::Wgmma) return {kTf32, kTf32};  // float: TF32
  return {kF32Fwd, kF32Grad};  // Simple, and cuDNN with allow_tf32 = false
}

// only: run that kernel alone (default: every kernel of conv_kernels())
template <class T>
void conv_case(const ConvCase& c, Fill fill, bool with_bias, uint64_t seed, WorstError& wf, WorstError& wd,
               WorstError& ww, std::optional<cuda::ConvKernel> only = std::nullopt) {
  const cpu::Conv2dDims d = cpu::conv2d_dims(c.N, c.Cin, c.H, c.W, c.Cout, c.K, c.K, c.stride, c.pad);
  const size_t nx = size_t(d.N * d.Cin * d.H * d.W), nw = size_t(d.Cout * d.Cin * d.KH * d.KW);
  const size_t ny = size_t(d.N * d.Cout * d.OH * d.OW), nb = size_t(d.Cout);
  Rng rng(seed);
  // weights scaled like a fan-in initialization so outputs stay O(1) (bf16 rounding is relative)
  const double wscale = 1.0 / std::sqrt(double(d.Cin * d.KH * d.KW));
  const std::vector<double> x = stored<T>(values(nx, fill, rng)), w = stored<T>(values(nw, fill, rng, wscale));
  const std::vector<double> b = stored<T>(values(nb, Fill::Random, rng)), dy = stored<T>(values(ny, fill, rng));
  const std::vector<double> dx0 = stored<T>(values(nx, Fill::Random, rng)), dw0 = stored<T>(values(nw, Fill::Random, rng));
  const std::vector<double> db0 = stored<T>(values(nb, Fill::Random, rng));

  std::vector<double> y_ref(ny), dx_ref = dx0, dw_ref = dw0, db_ref = db0;
  cpu::conv2d_forward<double>(d, x.data(), w.data(), with_bias ? b.data() : nullptr, y_ref.data(),
                              cpu::ConvVariant::Direct);
  cpu::conv2d_backward_data<double>(d, dy.data(), w.data(), dx_ref.data(), cpu::ConvVariant::Direct);
  cpu::conv2d_backward_weight<double>(d, x.data(), dy.data(), dw_ref.data(), with_bias ? db_ref.data() : nullptr,
                                      cpu::ConvVariant::Direct);

  // offset 1 for the 1x1 cases: the weight pointer loses its 16-byte alignment (scalar A loads)
  const size_t off = (c.K == 1 && (seed & 1)) ? 1 : 0;
  DevBuf<T> gx(nx), gw(nw + off), gw_aligned(nw), gb(nb), gy(ny), gdy(ny), gdx(nx), gdw(nw), gdb(nb);
  write(gx.get(), x);
  write(gw.get() + off, w);
  write(gw_aligned.get(), w);  // cuDNN gets aligned pointers (its kernels may assume them)
  write(gb.get(), b);
  write(gdy.get(), dy);
  for (cuda::ConvKernel k : only ? std::vector<cuda::ConvKernel>{*only} : conv_kernels()) {
    cuda::ConvShape s = cuda::conv_shape(c.N, c.Cin, c.H, c.W, c.Cout, c.K, c.K, c.stride, c.pad, k);
#ifdef CLIPCU_WITH_CUDNN
    if (k == cuda::ConvKernel::Cudnn) {
      s.cudnn = cuda::cudnn_handle();
      s.allow_tf32 = false;  // float32 accuracy for the float comparison
    }
#endif
    const std::string label = std::string(cuda::conv_kernel_name(k)) + " " + type_name<T>() + " " + c.what + " N" +
                              std::to_string(c.N) + " Cin" + std::to_string(c.Cin) + " " + std::to_string(c.H) + "x" +
                              std::to_string(c.W) + " Cout" + std::to_string(c.Cout) + " k" + std::to_string(c.K) +
                              " s" + std::to_string(c.stride) + " p" + std::to_string(c.pad) + " " + fill_name(fill) +
                              (with_bias ? " bias" : "") + (off && k != cuda::ConvKernel::Cudnn ? " misaligned-w" : "");
    INFO(label);
    const auto [tol_f, tol_g] = conv_tol(k, std::is_same_v<T, bf16>);
    size_t ws_bytes = 0;
    try {
      for (cuda::ConvPass p : {cuda::ConvPass::Forward, cuda::ConvPass::BackwardData, cuda::ConvPass::BackwardFilter})
        ws_bytes = std::max(ws_bytes, cuda::conv2d_workspace_bytes<T>(s, p));
    } catch (const clipcu::Error& e) {
      // cuDNN declining a configuration is not our kernels' failure: say so loudly, go on
      if (k != cuda::ConvKernel::Cudnn) throw;
      WARN_MESSAGE(false, label << ": cuDNN chose no algorithm, cuDNN comparison skipped: " << e.what());
      continue;
    }
    DevBuf<unsigned char> ws(ws_bytes);
    cuda::ConvArgs<T> a;
    a.x = gx.get(), a.w = k == cuda::ConvKernel::Cudnn ? gw_aligned.get() : gw.get() + off;
    a.bias = with_bias ? gb.get() : nullptr, a.y = gy.get();
    a.dy = gdy.get(), a.dx = gdx.get(), a.dw = gdw.get(), a.dbias = with_bias ? gdb.get() : nullptr;
    a.workspace = ws_bytes ? ws.get() : nullptr, a.workspace_bytes = ws_bytes;
    cuda::conv2d_forward<T>(s, a, cuda::current_stream());
    expect_close(read(gy.get(), ny), y_ref, tol_f, label + " y", wf, d.OH * d.OW);
    write(gdx.get(), dx0);
    cuda::conv2d_backward_data<T>(s, a, cuda::current_stream());
    expect_close_accumulated(read(gdx.get(), nx), dx_ref, dx0, tol_g, label + " dx", wd, d.H * d.W);
    write(gdw.get(), dw0);
    write(gdb.get(), db0);
    cuda::conv2d_backward_filter<T>(s, a, cuda::current_stream());
    expect_close_accumulated(read(gdw.get(), nw), dw_ref, dw0, tol_g, label + " dw", ww, d.Cin * d.KH * d.KW);
    if (with_bias) expect_close_accumulated(read(gdb.get(), nb), db_ref, db0, tol_g, label + " dbias", ww);
  }
}

std::vector<ConvCase> conv_cases() {
  std::vector<ConvCase> all = {
      {1, 1, 1, 1, 1, 1, 1, 0, "1x1-tiny"},
      {2, 3, 11, 9, 5, 3, 2, 1, "stem-s2"},
      {2, 5, 12, 12, 7, 4, 4, 0, "patch"},
      {3, 32, 7, 7, 32, 3, 1, 1, "3x3-fast"},
      {2, 40, 6, 5, 33, 3, 1, 1, "3x3-odd-C"},
      {2, 64, 9, 9, 48, 1, 1, 0, "1x1"},
      {2, 16, 10, 10, 130, 3, 1, 1, "Cout>128"},
      {1, 3, 32, 32, 16, 8, 8, 0, "vit-patch"},
      {4, 64, 14, 14, 64, 3, 1, 1, "3x3-64"},
      {2, 128, 5, 5, 256, 1, 1, 0, "1x1-128-256"},
      {8, 32, 16, 16, 32, 3, 1, 1, "wgrad-split"},
      {2, 7, 13, 11, 3, 5, 2, 2, "5x5-s2"},
      // the wgmma kernel's paths: 1x1 with H W % 8 == 0 (NCHW read in place; two M tiles, K not a
      // multiple of the 64-wide stage), a stride-2 3x3 through the NHWC copies (backward-data
      // skips the pixels the stride does not reach)
      {3, 128, 4, 6, 136, 1, 1, 0, "1x1-direct"},
      {2, 16, 9, 9, 24, 3, 2, 1, "3x3-s2"},
      {2, 64, 8, 8, 48, 1, 1, 0, "1x1-direct-64"},  // M <= 64: the 64 x 256 tile on the direct path
      {2, 72, 8, 8, 80, 1, 2, 0, "1x1-s2"},  // RN50's downsample shortcut (NHWC path, 128 x 128 tiles)
  };
  if (small_run()) all.resize(6);
  return all;
}

// ================================================================ batch norm
template <class T, class P>
void bn_case(int64_t N, int64_t C, int64_t H, int64_t W, bool training, bool relu, bool affine, bool running, Fill fill,
             uint64_t seed, WorstError& wf, WorstError& wb) {
  const int64_t HW = H * W;
  const size_t n = size_t(N * C * HW), nc = size_t(C);
  Rng rng(seed);
  std::vector<double> x = stored<T>(values(n, fill, rng));
  if (fill == Fill::Random)  // a channel offset of up to 3.5 std: the variance pass must not cancel
    for (size_t i = 0; i < n; ++i) x[i] = stored<T>(x[i] + 0.5 * double((i / size_t(HW)) % nc % 8));
  const std::vector<double> w = stored<P>(values(nc, Fill::Random, rng, 0.5)), b = stored<P>(values(nc, Fill::Random, rng));
  std::vector<double> rm = stored<P>(values(nc, Fill::Random, rng)), rv = values(nc, Fill::Random, rng);
  for (double& v : rv) v = stored<P>(std::abs(v) + 0.5);
  const std::vector<double> dy = stored<T>(values(n, Fill::Random, rng)), dx0 = stored<T>(values(n, Fill::Random, rng));
  const std::vector<double> dw0 = stored<P>(values(nc, Fill::Random, rng)), db0 = stored<P>(values(nc, Fill::Random, rng));
  const double momentum = 0.1, eps = 1e-5;

  std::vector<double> y_ref(n), mean_ref(nc), rstd_ref(nc), rm_ref = rm, rv_ref = rv;
  const double* wp = affine ? w.data() : nullptr;
  const double* bp = affine ? b.data() : nullptr;
  if (training) {
    cpu::batchnorm2d_forward_train<double>(N, C, HW, x.data(), wp, bp, momentum, eps, y_ref.data(), mean_ref.data(),
                                           rstd_ref.data(), running ? rm_ref.data() : nullptr,
                                           running ? rv_ref.data() : nullptr);
  } else {
    cpu::batchnorm2d_forward_eval<double>(N, C, HW, x.data(), wp, bp, rm.data(), rv.data(), eps, y_ref.data(),
                                          mean_ref.data(), rstd_ref.data());
  }
  if (relu)
    for (double& v : y_ref) v = v > 0 ? v : 0;

  DevBuf<T> gx(n), gy(n), gdy(n), gdx(n);
  DevBuf<P> gw(nc), gb(nc), grm(nc), grv(nc), gdw(nc), gdb(nc);
  DevBuf<float> gmean(nc), grstd(nc);
  DevBuf<unsigned char> ws(cuda::batchnorm2d_workspace_bytes(N, C));
  write(gx.get(), x), write(gw.get(), w), write(gb.get(), b), write(grm.get(), rm), write(grv.get(), rv);
  write(gdy.get(), dy), write(gdx.get(), dx0), write(gdw.get(), dw0), write(gdb.get(), db0);
  cuda::BatchNormArgs<T, P> a;
  a.N = N, a.C = C, a.HW = HW, a.training = training, a.relu = relu, a.eps = float(eps), a.momentum = float(momentum);
  a.x = gx.get(), a.weight = affine ? gw.get() : nullptr, a.bias = affine ? gb.get() : nullptr;
  a.running_mean = running ? grm.get() : nullptr, a.running_var = running ? grv.get() : nullptr;
  a.y = gy.get(), a.mean = gmean.get(), a.rstd = grstd.get();
  a.dy = gdy.get(), a.dx = gdx.get(), a.dweight = affine ? gdw.get() : nullptr, a.dbias = affine ? gdb.get() : nullptr;
  a.workspace = ws.get();

  const bool lowp = std::is_same_v<T, bf16> || std::is_same_v<P, bf16>;
  const double tol_f = lowp ? kBf16 : kF32Fwd, tol_g = lowp ? kBf16 : kF32Grad;
  const std::string label = std::string(type_name<T>()) + "/" + type_name<P>() + " N" + std::to_string(N) + " C" +
                            std::to_string(C) + " " + std::to_string(H) + "x" + std::to_string(W) +
                            (training ? " train" : " eval") + (relu ? " relu" : "") + (affine ? "" : " no-affine") +
                            (running ? "" : " no-running") + " " + fill_name(fill);
  INFO(label);
  cuda::batchnorm2d_forward<T, P>(a, cuda::current_stream());
  const std::vector<double> y_gpu = read(gy.get(), n);
  expect_close(y_gpu, y_ref, tol_f, label + " y", wf);
  // the saved statistics are float on the GPU whatever the storage: float32 accuracy
  expect_close(read(gmean.get(), nc), mean_ref, kF32Fwd, label + " mean", wf);
  expect_close(read(grstd.get(), nc), rstd_ref, kF32Fwd, label + " rstd", wf);
  if (running && training) {
    expect_close(read(grm.get(), nc), rm_ref, tol_f, label + " running_mean", wf);
    expect_close(read(grv.get(), nc), rv_ref, tol_f, label + " running_var", wf);
  }

  // backward: under ReLU the CPU twin gets dy masked by the GPU's own y > 0 (forward checked above)
  std::vector<double> g = dy;
  if (relu)
    for (size_t i = 0; i < n; ++i) g[i] = y_gpu[i] > 0 ? g[i] : 0.0;
  std::vector<double> dx_ref = dx0, dw_ref = dw0, db_ref = db0;
  cpu::batchnorm2d_backward<double>(N, C, HW, training, x.data(), wp, mean_ref.data(), rstd_ref.data(), g.data(),
                                    dx_ref.data(), affine ? dw_ref.data() : nullptr, affine ? db_ref.data() : nullptr);
  cuda::batchnorm2d_backward<T, P>(a, cuda::current_stream());
  expect_close(read(gdx.get(), n), dx_ref, tol_g, label + " dx", wb);
  if (affine) {
    expect_close(read(gdw.get(), nc), dw_ref, tol_g, label + " dweight", wb);
    expect_close(read(gdb.get(), nc), db_ref, tol_g, label + " dbias", wb);
  }
}

struct BnShape {
  int64_t N, C, H, W;
};
std::vector<BnShape> bn_shapes() {
  if (small_run()) return {{1, 1, 1, 2}, {2, 3, 5, 7}, {3, 130, 3, 5}};
  return {{1, 1, 1, 2}, {2, 3, 5, 7}, {4, 16, 7, 7}, {3, 130, 3, 5}, {1, 7, 2, 1}, {8, 64, 14, 14}};
}

template <class T, class P>
void bn_all(WorstError& wf, WorstError& wb) {
  uint64_t seed = 100;
  const std::vector<Fill> fills =
      small_run() ? std::vector<Fill>{Fill::Random} : std::vector<Fill>{Fill::Random, Fill::Ones, Fill::Arange};
  for (const BnShape& s : bn_shapes())
    for (Fill f : fills) {
      bn_case<T, P>(s.N, s.C, s.H, s.W, true, false, true, true, f, ++seed, wf, wb);
      bn_case<T, P>(s.N, s.C, s.H, s.W, true, true, true, true, f, ++seed, wf, wb);
      bn_case<T, P>(s.N, s.C, s.H, s.W, false, false, true, true, f, ++seed, wf, wb);
    }
  bn_case<T, P>(2, 3, 5, 7, true, false, false, false, Fill::Random, ++seed, wf, wb);
  bn_case<T, P>(2, 3, 5, 7, false, true, false, true, Fill::Random, ++seed, wf, wb);
  bn_case<T, P>(1, 5, 1, 1, false, false, true, true, Fill::Random, ++seed, wf, wb);  // one value per channel: eval only
}

// ================================================================ average pooling
template <class T>
void pool_case(int64_t N, int64_t C, int64_t H, int64_t W, int64_t k, Fill fill, uint64_t seed, WorstError& worst) {
  const int64_t NC = N * C, OH = H / k, OW = W / k;
  const size_t nx = size_t(NC * H * W), ny = size_t(NC * OH * OW);
  Rng rng(seed);
  const std::vector<double> x = stored<T>(values(nx, fill, rng)), dy = stored<T>(values(ny, fill, rng));
  const std::vector<double> dx0 = stored<T>(values(nx, Fill::Random, rng));
  std::vector<double> y_ref(ny), dx_ref = dx0;
  cpu::avgpool2d_forward<double>(NC, H, W, k, x.data(), y_ref.data());
  cpu::avgpool2d_backward<double>(NC, H, W, k, dy.data(), dx_ref.data());
  DevBuf<T> gx(nx), gy(ny), gdy(ny), gdx(nx);
  write(gx.get(), x), write(gdy.get(), dy), write(gdx.get(), dx0);
  const std::string label = std::string(type_name<T>()) + " N" + std::to_string(N) + " C" + std::to_string(C) + " " +
                            std::to_string(H) + "x" + std::to_string(W) + " k" + std::to_string(k) + " " +
                            fill_name(fill);
  INFO(label);
  const bool lowp = std::is_same_v<T, bf16>;
  cuda::avgpool2d_forward<T>(NC, H, W, k, gx.get(), gy.get(), cuda::current_stream());
  expect_close(read(gy.get(), ny), y_ref, lowp ? kBf16 : kF32Fwd, label + " y", worst);
  cuda::avgpool2d_backward<T>(NC, H, W, k, gdy.get(), gdx.get(), cuda::current_stream());
  expect_close(read(gdx.get(), nx), dx_ref, lowp ? kBf16 : kF32Grad, label + " dx", worst);
}

// ================================================================ engine ops, GPU vs CPU
// A float64 CPU tensor with values of one kind, rounded to `dt` (what the GPU copy holds).
Tensor host_input(const Shape& shape, Fill fill, Rng& rng, DType dt, double scale = 1.0) {
  const std::vector<double> v = values(size_t(shape_numel(shape)), fill, rng, scale);
  return Tensor::from_vector(v, shape, DType::F64).to(dt).to(DType::F64);
}
Tensor to_gpu(const Tensor& host, DType dt, bool requires_grad) {
  Tensor t = host.to(dt).to(Device::cuda(0));
  if (requires_grad) t.set_requires_grad(true);
  return t;
}
std::vector<double> host_values(const Tensor& t) { return t.to(Device::cpu()).to(DType::F64).to_f64_vector(); }

// Sets an environment variable for one scope.
struct ScopedEnv {
  std::string name;
  ScopedEnv(const char* n, const char* v) : name(n) { ::setenv(n, v, 1); }
  ~ScopedEnv() { ::unsetenv(name.c_str()); }
};

// conv2d -> batch_norm2d (training, running stats) -> avg_pool2d, backward with a random seed,
// on the GPU (dtype dt) and the CPU (float64), compared output and every gradient. `rounds`
// forward/backward passes without zeroing: the gradients accumulate (2 rounds = twice the grads).
// The convolution has no bias, as in the ResNet: in front of a training batch norm its gradient
// is exactly zero, and a relative error against zero means nothing (the kernel tests cover it).
void engine_chain(DType dt, const char* conv_kernel, double tol_f, double tol_g, int rounds, WorstError& worst,
                  bool bn_relu = false) {
  const int64_t N = 2, Cin = 5, H = 9, W = 8, Cout = 6, K = 3;
  Rng rng(7);
  const Tensor x = host_input({N, Cin, H, W}, Fill::Random, rng, dt);
  const Tensor w = host_input({Cout, Cin, K, K}, Fill::Random, rng, dt, 0.2);
  const Tensor bw = host_input({Cout}, Fill::Random, rng, dt, 0.5), bb = host_input({Cout}, Fill::Random, rng, dt);
  const Tensor rm = host_input({Cout}, Fill::Random, rng, dt), rv = host_input({Cout}, Fill::Ones, rng, dt);
  const Tensor seed = host_input({N, Cout, 4, 4}, Fill::Random, rng, dt);
  const std::string label = std::string("engine chain ") + std::string(dtype_name(dt)) + " conv " + conv_kernel +
                            " rounds " + std::to_string(rounds) + (bn_relu ? " bn+relu" : "");
  INFO(label);

  auto run = [&](bool gpu, std::vector<Tensor>& grads, Tensor& out, Tensor& run_mean, Tensor& run_var) {
    const DType t = gpu ? dt : DType::F64;
    Tensor gx = gpu ? to_gpu(x, t, true) : x.clone().set_requires_grad(true);
    Tensor gw = gpu ? to_gpu(w, t, true) : w.clone().set_requires_grad(true);
    Tensor gbw = gpu ? to_gpu(bw, t, true) : bw.clone().set_requires_grad(true);
    Tensor gbb = gpu ? to_gpu(bb, t, true) : bb.clone().set_requires_grad(true);
    run_mean = gpu ? to_gpu(rm, t, false) : rm.clone();
    run_var = gpu ? to_gpu(rv, t, false) : rv.clone();
    const Tensor s = gpu ? to_gpu(seed, t, false) : seed;
    for (int r = 0; r < rounds; ++r) {
      Tensor y = ops::conv2d(gx, gw, Tensor(), 1, 1);
      y = bn_relu ? ops::batch_norm2d_relu(y, gbw, gbb, run_mean, run_var, true)
                  : ops::batch_norm2d(y, gbw, gbb, run_mean, run_var, true);
      out = ops::avg_pool2d(y, 2);
      backward(out, s);
    }
    grads = {gx.grad(), gw.grad(), gbw.grad(), gbb.grad()};
  };
  std::vector<Tensor> g_gpu, g_cpu;
  Tensor out_gpu, out_cpu, rm_gpu, rv_gpu, rm_cpu, rv_cpu;
  run(false, g_cpu, out_cpu, rm_cpu, rv_cpu);
  {
    ScopedEnv env("CLIPCU_CONV_KERNEL", conv_kernel);
    run(true, g_gpu, out_gpu, rm_gpu, rv_gpu);
  }
  REQUIRE(out_gpu.device().is_cuda());
  expect_close(host_values(out_gpu), host_values(out_cpu), tol_f, label + " y", worst);
  expect_close(host_values(rm_gpu), host_values(rm_cpu), tol_f, label + " running_mean", worst);
  expect_close(host_values(rv_gpu), host_values(rv_cpu), tol_f, label + " running_var", worst);
  const char* names[] = {"dx", "dconv_w", "dbn_w", "dbn_b"};
  for (size_t i = 0; i < g_gpu.size(); ++i) {
    REQUIRE_MESSAGE(g_gpu[i].defined(), label << " " << names[i] << " missing on the GPU");
    CHECK(g_gpu[i].device().is_cuda());
    CHECK(g_gpu[i].dtype() == dt);
    expect_close(host_values(g_gpu[i]), host_values(g_cpu[i]), tol_g, label + " " + names[i], worst);
  }
}

}  // namespace

CLIPCU_GPU_TEST("cuda conv2d: wgmma smoke test, each path and pass against the CPU") {
  if (!cuda::conv_wgmma_available(0)) {
    WARN_MESSAGE(false, "the wgmma convolution is not available here (it needs a Hopper GPU, sm_90a device code "
                        "and CLIPCU_WGMMA / CLIPCU_CONV_WGMMA not 0): smoke test not run");
    return;
  }
  WorstError wf{"conv2d wgmma smoke forward bf16", 0.0, {}}, wd{"conv2d wgmma smoke backward-data bf16", 0.0, {}};
  WorstError ww{"conv2d wgmma smoke backward-filter bf16", 0.0, {}};
  // the NHWC path (3x3, padding; backward-filter reading dy in place at 8x8 and from a copy at
  // the stem's 6x5; the stem's 3 and 5 channels padded to 8; a 1x1 stride 2 with more than 64
  // channels on both sides: forward and backward-data on the 128 x 128 tile) and the direct path
  // (1x1, H W % 8 == 0), on both tiles (M <= 64: 64 x 256; else 128 x 128)
  conv_case<bf16>({3, 32, 8, 8, 32, 3, 1, 1, "3x3-8x8"}, Fill::Random, true, 77, wf, wd, ww, cuda::ConvKernel::Wgmma);
  conv_case<bf16>({2, 3, 11, 9, 5, 3, 2, 1, "stem-s2"}, Fill::Random, true, 79, wf, wd, ww, cuda::ConvKernel::Wgmma);
  conv_case<bf16>({3, 128, 4, 6, 136, 1, 1, 0, "1x1-direct"}, Fill::Random, true, 78, wf, wd, ww,
                  cuda::ConvKernel::Wgmma);
  conv_case<bf16>({2, 64, 8, 8, 48, 1, 1, 0, "1x1-direct-64"}, Fill::Random, true, 80, wf, wd, ww,
                  cuda::ConvKernel::Wgmma);
  conv_case<bf16>({2, 72, 8, 8, 80, 1, 2, 0, "1x1-s2"}, Fill::Random, true, 81, wf, wd, ww, cuda::ConvKernel::Wgmma);
}

CLIPCU_GPU_TEST("cuda conv2d: simple, tensor-core, cuDNN and wgmma kernels against the CPU twin, forward and both backwards") {
  WorstError wf32{"conv2d forward f32 (simple, cudnn: 1e-5; tensorcore tf32: 2e-3)", 0.0, {}};
  WorstError wd32{"conv2d backward-data f32 (simple, cudnn: 1e-4; tensorcore: 2e-3)", 0.0, {}};
  WorstError ww32{"conv2d backward-filter f32 (simple, cudnn: 1e-4; tensorcore: 2e-3)", 0.0, {}};
  WorstError wfb{"conv2d forward bf16", 0.0, {}};
  WorstError wdb{"conv2d backward-data bf16", 0.0, {}};
  WorstError wwb{"conv2d backward-filter bf16", 0.0, {}};
  uint64_t seed = 1;
  for (const ConvCase& c : conv_cases()) {
    conv_case<float>(c, Fill::Random, true, ++seed, wf32, wd32, ww32);
    conv_case<bf16>(c, Fill::Random, true, ++seed, wfb, wdb, wwb);
    if (small_run()) continue;  // the sanitizers: one variant per shape
    conv_case<float>(c, Fill::Random, false, ++seed, wf32, wd32, ww32);
    conv_case<bf16>(c, Fill::Random, false, ++seed, wfb, wdb, wwb);
  }
  if (small_run()) return;
  // ones and arange on a stem-like, a fast 3x3 and a 1x1 shape
  for (const ConvCase& c : {ConvCase{2, 3, 11, 9, 5, 3, 2, 1, "stem-s2"}, ConvCase{3, 32, 7, 7, 32, 3, 1, 1, "3x3-fast"},
                            ConvCase{2, 64, 9, 9, 48, 1, 1, 0, "1x1"}})
    for (Fill f : {Fill::Ones, Fill::Arange}) {
      conv_case<float>(c, f, true, ++seed, wf32, wd32, ww32);
      conv_case<bf16>(c, f, true, ++seed, wfb, wdb, wwb);
    }
}

CLIPCU_GPU_TEST("cuda conv2d: the kernels repeat bit for bit (deterministic split-K backward-filter)") {
  // K = N*OH*OW spans several K tiles, so backward-filter is split (also in the small run)
  const ConvCase c = small_run() ? ConvCase{2, 32, 8, 8, 32, 3, 1, 1, "wgrad-split-small"}
                                 : ConvCase{8, 32, 16, 16, 32, 3, 1, 1, "wgrad-split"};
  std::vector<cuda::ConvKernel> kernels = {cuda::ConvKernel::Simple, cuda::ConvKernel::TensorCore};
  if (cuda::conv_wgmma_available(0)) kernels.push_back(cuda::ConvKernel::Wgmma);
  for (cuda::ConvKernel k : kernels) {
    const cuda::ConvShape s = cuda::conv_shape(c.N, c.Cin, c.H, c.W, c.Cout, c.K, c.K, c.stride, c.pad, k);
    const size_t nx = size_t(c.N * c.Cin * c.H * c.W), nw = size_t(c.Cout * c.Cin * c.K * c.K);
    const size_t ny = size_t(c.N * c.Cout * s.OH * s.OW);
    Rng rng(3);
    DevBuf<bf16> gx(nx), gdy(ny), gdw(nw);
    write(gx.get(), values(nx, Fill::Random, rng));
    write(gdy.get(), values(ny, Fill::Random, rng));
    const size_t ws_bytes = cuda::conv2d_workspace_bytes<bf16>(s, cuda::ConvPass::BackwardFilter);
    DevBuf<unsigned char> ws(ws_bytes);
    cuda::ConvArgs<bf16> a;
    a.x = gx.get(), a.dy = gdy.get(), a.dw = gdw.get(), a.workspace = ws.get(), a.workspace_bytes = ws_bytes;
    std::vector<double> first;
    for (int rep = 0; rep < 3; ++rep) {
      write(gdw.get(), std::vector<double>(nw, 0.0));
      cuda::conv2d_backward_filter<bf16>(s, a, cuda::current_stream());
      const std::vector<double> got = read(gdw.get(), nw);
      if (rep == 0) {
        first = got;
      } else {
        CHECK_MESSAGE(got == first, cuda::conv_kernel_name(k) << ": backward-filter differs on repetition " << rep);
      }
    }
  }
}

CLIPCU_GPU_TEST("cuda batchnorm2d: training, inference and fused ReLU against the CPU twin") {
  WorstError wf{"batchnorm2d forward f32", 0.0, {}}, wb{"batchnorm2d backward f32", 0.0, {}};
  WorstError wfb{"batchnorm2d forward bf16 (bf16 and f32 params)", 0.0, {}};
  WorstError wbb{"batchnorm2d backward bf16 (bf16 and f32 params)", 0.0, {}};
  bn_all<float, float>(wf, wb);
  bn_all<bf16, bf16>(wfb, wbb);
  bn_all<bf16, float>(wfb, wbb);
}

CLIPCU_GPU_TEST("cuda avgpool2d: forward and backward against the CPU twin") {
  WorstError w32{"avgpool2d f32", 0.0, {}}, wb{"avgpool2d bf16", 0.0, {}};
  uint64_t seed = 500;
  struct S {
    int64_t N, C, H, W, k;
  };
  for (const S& s : {S{1, 1, 1, 1, 1}, S{2, 3, 7, 7, 2}, S{2, 5, 9, 8, 3}, S{3, 64, 14, 14, 2}, S{1, 2, 5, 11, 5}})
    for (Fill f : {Fill::Random, Fill::Ones, Fill::Arange}) {
      pool_case<float>(s.N, s.C, s.H, s.W, s.k, f, ++seed, w32);
      pool_case<bf16>(s.N, s.C, s.H, s.W, s.k, f, ++seed, wb);
    }
}

CLIPCU_GPU_TEST("cuda engine ops: conv2d, batch_norm2d, avg_pool2d on CUDA tensors match the CPU ops, gradients included") {
  WorstError worst{"engine conv/bn/pool GPU vs CPU", 0.0, {}};
  engine_chain(DType::F32, "simple", kF32Fwd, kF32Grad, 1, worst);
  engine_chain(DType::F32, "simple", kF32Fwd, kF32Grad, 2, worst);  // accumulation over two backwards
  engine_chain(DType::F32, "tensorcore", kTf32, kTf32, 1, worst);
  engine_chain(DType::BF16, "tensorcore", kBf16, kBf16, 1, worst);
  engine_chain(DType::BF16, "simple", kBf16, kBf16, 2, worst);
  if (cuda::conv_wgmma_available(0)) {
    engine_chain(DType::BF16, "wgmma", kBf16, kBf16, 1, worst);  // Cin 5: the NHWC path, padded to 8
    engine_chain(DType::F32, "wgmma", kTf32, kTf32, 1, worst);   // float: TF32 on TensorCore
  }
  // the fused BN + ReLU op, in float32 only: at bf16 / TF32 accuracy a few outputs near 0 take the
  // other side of the ReLU than in float64 and their whole gradient flips (the kernel test masks
  // with the GPU's own output instead)
  engine_chain(DType::F32, "simple", kF32Fwd, kF32Grad, 1, worst, true);
  if (cuda::conv_cudnn_built()) {
#ifdef CLIPCU_WITH_CUDNN
    // the chain's convolution (N 2, Cin 5, 9x8, Cout 6, 3x3, padding 1): does cuDNN take it?
    cuda::ConvShape s = cuda::conv_shape(2, 5, 9, 8, 6, 3, 3, 1, 1, cuda::ConvKernel::Cudnn);
    s.cudnn = cuda::cudnn_handle();
    auto supported = [&](auto tag) {
      using T = decltype(tag);
      const bool has = cuda::conv_cudnn_has_algorithms<T>(s);
      WARN_MESSAGE(has, "cuDNN has no deterministic algorithm for the engine chain in " << type_name<T>()
                                                                                    << ": cudnn path skipped");
      return has;
    };
    if (supported(bf16{})) engine_chain(DType::BF16, "cudnn", kBf16, kBf16, 1, worst);
    if (supported(float{})) {
      engine_chain(DType::F32, "cudnn", kF32Fwd, kF32Grad, 1, worst);  // full float32 math by default
      ScopedEnv tf32("CLIPCU_TF32", "1");
      engine_chain(DType::F32, "cudnn", kTf32, kTf32, 1, worst);
    }
#endif
  } else {
    WARN_MESSAGE(false, "this build has no cuDNN: the engine's cudnn conv path is not tested");
  }
}

CLIPCU_GPU_TEST("cuda engine ops: argument checks on CUDA tensors") {
  Tensor x = Tensor::zeros({2, 3, 8, 8}, DType::F32, Device::cuda(0));
  Tensor w_cpu = Tensor::zeros({4, 3, 3, 3}, DType::F32);
  CHECK_THROWS_WITH_AS(ops::conv2d(x, w_cpu, Tensor(), 1, 1), doctest::Contains("one device per op"), clipcu::Error);
  Tensor w_bf = Tensor::zeros({4, 3, 3, 3}, DType::BF16, Device::cuda(0));
  CHECK_THROWS_WITH_AS(ops::conv2d(x, w_bf, Tensor(), 1, 1), doctest::Contains("one floating type"), clipcu::Error);
  Tensor x64 = Tensor::zeros({2, 3, 8, 8}, DType::F64, Device::cuda(0));
  CHECK_THROWS_WITH_AS(ops::avg_pool2d(x64, 2), doctest::Contains("F32 or BF16"), clipcu::Error);
  Tensor xb = Tensor::zeros({2, 3, 8, 8}, DType::BF16, Device::cuda(0));
  Tensor p64 = Tensor::ones({3}, DType::F64, Device::cuda(0));
  CHECK_THROWS_AS(ops::batch_norm2d(xb, p64, Tensor(), Tensor(), Tensor(), true), clipcu::Error);
  ScopedEnv env("CLIPCU_CONV_KERNEL", "winograd");
  Tensor w = Tensor::zeros({4, 3, 3, 3}, DType::F32, Device::cuda(0));
  CHECK_THROWS_WITH_AS(ops::conv2d(x, w, Tensor(), 1, 1),
                       doctest::Contains("CLIPCU_CONV_KERNEL='winograd': expected one of simple"),
                       clipcu::Error);
}

// ================================================================ the wgmma gathers, on the CPU
// Each pass of the Hopper convolution (kernels/cuda/conv_wgmma.cu) as the GEMM the kernel
// computes, every operand element fetched the way its loader fetches it: 16-byte chunks at the
// offsets of kernels/cuda/conv_gather.h (the same code the device runs), in chunk steps over the
// whole K range rounded up to the 64-wide stage (chunks past the end must be zeros). The GEMM's
// other operand and the output use the layouts conv_wgmma.cu documents (weights in (kh, kw, c)
// order; dW columns (kh, kw, ci)). Compared with the CPU convolution in float64.
namespace cg = cuda::conv_gather;

struct GatherCase {
  int64_t N, Cin, H, W, Cout, KH, KW, stride, pad;
};

// [N][C][HW] -> [N][HW][Cp], channels C .. Cp - 1 zero
std::vector<double> to_nhwc(const std::vector<double>& v, int64_t N, int64_t C, int64_t HW, int64_t Cp) {
  std::vector<double> t(size_t(N * HW * Cp), 0.0);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t q = 0; q < HW; ++q) t[size_t((n * HW + q) * Cp + c)] = v[size_t((n * C + c) * HW + q)];
  return t;
}
int64_t pad8(int64_t c) { return (c + 7) / 8 * 8; }

// The 8 values of the chunk at `off` in `src` (zeros for -1).
std::array<double, 8> chunk_at(const std::vector<double>& src, int64_t off) {
  std::array<double, 8> r{};
  if (off < 0) return r;
  REQUIRE_MESSAGE(off + 8 <= int64_t(src.size()), "chunk at " << off << " past the end " << src.size());
  for (int e = 0; e < 8; ++e) r[size_t(e)] = src[size_t(off + e)];
  return r;
}
constexpr int64_t kStageK = 64;
int64_t stage_round(int64_t k) { return (k + kStageK - 1) / kStageK * kStageK; }

void gather_case(const GatherCase& c, bool direct, WorstError& worst) {
  const cpu::Conv2dDims d = cpu::conv2d_dims(c.N, c.Cin, c.H, c.W, c.Cout, c.KH, c.KW, c.stride, c.pad);
  const int64_t KHW = c.KH * c.KW, HW = c.H * c.W, OHW = d.OH * d.OW;
  Rng rng(uint64_t(c.N * 1000 + c.Cin * 10 + c.KH));
  const std::vector<double> x = values(size_t(c.N * c.Cin * HW), Fill::Random, rng);
  const std::vector<double> w = values(size_t(c.Cout * c.Cin * KHW), Fill::Random, rng);
  const std::vector<double> dy = values(size_t(c.N * c.Cout * OHW), Fill::Random, rng);
  std::vector<double> y_ref(dy.size()), dx_ref(x.size(), 0.0), dw_ref(w.size(), 0.0);
  cpu::conv2d_forward<double>(d, x.data(), w.data(), nullptr, y_ref.data(), cpu::ConvVariant::Direct);
  cpu::conv2d_backward_data<double>(d, dy.data(), w.data(), dx_ref.data(), cpu::ConvVariant::Direct);
  cpu::conv2d_backward_weight<double>(d, x.data(), dy.data(), dw_ref.data(), nullptr, cpu::ConvVariant::Direct);
  const std::string label = std::string(direct ? "direct" : "nhwc") + " N" + std::to_string(c.N) + " Cin" +
                            std::to_string(c.Cin) + " " + std::to_string(c.H) + "x" + std::to_string(c.W) + " Cout" +
                            std::to_string(c.Cout) + " k" + std::to_string(c.KH) + "x" + std::to_string(c.KW) + " s" +
                            std::to_string(c.stride) + " p" + std::to_string(c.pad);
  INFO(label);
  std::vector<double> y(dy.size()), dx(x.size()), dw(w.size());
  const int64_t P = c.N * OHW, Pin = c.N * HW;
  // the NCHW element of GEMM column p (a pixel over all images) of channel row m
  auto nchw = [](int64_t C, int64_t plane, int64_t m, int64_t p) { return size_t(((p / plane) * C + m) * plane + p % plane); };
  if (!direct) {
    // the NHWC copies and the K order pad the channels to multiples of 8 (zeros)
    const int64_t Cinp = pad8(c.Cin), Coutp = pad8(c.Cout);
    const std::vector<double> xt = to_nhwc(x, c.N, c.Cin, HW, Cinp), dyt = to_nhwc(dy, c.N, c.Cout, OHW, Coutp);
    const cg::ImgGeom gf = cg::img_geom(Cinp, c.H, c.W, d.OH, d.OW, c.KW, c.stride, c.pad);
    const cg::ImgGeom gd = cg::img_geom(Coutp, d.OH, d.OW, c.H, c.W, c.KW, c.stride, c.pad);
    // forward: y[co][p] = sum_k Wt[co][k] B[k][p], Wt[co][(kh kw) Cinp + ci] = w[co][ci][kh][kw]
    // (0 for ci >= Cin), B gathered from xt; backward-data: dx[ci][p] = sum_k Wd[ci][k] B[k][p],
    // Wd[ci][(kh kw) Coutp + co] = w[co][ci][kh][kw], B gathered from dyt
    auto data_pass = [&](auto dgrad_tag) {
      constexpr bool kDgrad = decltype(dgrad_tag)::value;
      const cg::ImgGeom& g = kDgrad ? gd : gf;
      const std::vector<double>& src = kDgrad ? dyt : xt;
      const int64_t M = kDgrad ? c.Cin : c.Cout, C = kDgrad ? c.Cout : c.Cin, Cp = kDgrad ? Coutp : Cinp;
      const int64_t rows = kDgrad ? Pin : P, plane = kDgrad ? HW : OHW, K = KHW * Cp;
      std::vector<double>& out = kDgrad ? dx : y;
      const char* what = kDgrad ? "backward-data" : "forward";
      for (int64_t p = 0; p < rows; ++p) {
        const cg::ImgRow row = cg::img_row<kDgrad>(g, p, rows);
        std::vector<double> acc(size_t(M), 0.0);
        for (int64_t k0 = 0; k0 < stage_round(K); k0 += 8) {
          const int64_t off = cg::img_offset<kDgrad>(g, row, cg::img_chunk(g, k0, K));
          if (k0 >= K) {
            REQUIRE_MESSAGE(off == -1, label << ": " << what << " chunk past K at " << k0 << " not zero");
            continue;
          }
          const std::array<double, 8> b = chunk_at(src, off);
          for (int e = 0; e < 8; ++e) {
            const int64_t k = k0 + e, khw = k / Cp, ch = k % Cp;
            if (ch >= C) {  // a padding channel: the copy holds zero there
              REQUIRE_MESSAGE(b[size_t(e)] == 0.0, label << ": " << what << " padding channel " << ch << " not zero");
              continue;
            }
            for (int64_t m = 0; m < M; ++m) {
              const int64_t co = kDgrad ? ch : m, ci = kDgrad ? m : ch;
              acc[size_t(m)] += w[size_t((co * c.Cin + ci) * KHW + khw)] * b[size_t(e)];
            }
          }
        }
        for (int64_t m = 0; m < M; ++m) out[nchw(M, plane, m, p)] = acc[size_t(m)];
      }
    };
    data_pass(std::false_type{});
    data_pass(std::true_type{});
    // backward-filter: C[co][n] = sum_p A[co][p] B[p][n], n = (kh kw) Cinp + ci, rows p in steps
    // of one, past the last pixel zeros; dw[co][ci][khw] = C[co][khw Cinp + ci] for ci < Cin.
    // A = dy: in place (chunks of 8 pixels of a channel) when OH OW % 8 == 0, else dyt[p][co]
    const int64_t Ng = KHW * Cinp;
    const cg::NchwGeom gy = cg::nchw_geom(c.N, c.Cout, OHW);
    auto dy_at = [&](int64_t co, int64_t p) {
      if (OHW % 8 != 0) return dyt[size_t(p * Coutp + co)];
      return chunk_at(dy, cg::nchw_offset(gy, p / 8 * 8, co))[size_t(p % 8)];
    };
    for (int64_t n0 = 0; n0 < Ng; n0 += 8) {
      const cg::ImgChunk ch = cg::img_chunk(gf, n0, Ng);
      for (int64_t p = 0; p < stage_round(P); ++p) {
        const int64_t off = cg::img_offset<false>(gf, cg::img_row<false>(gf, p, P), ch);
        if (p >= P) {
          REQUIRE_MESSAGE(off == -1, label << ": backward-filter row past the pixels at " << p << " not zero");
          continue;
        }
        const std::array<double, 8> b = chunk_at(xt, off);
        for (int e = 0; e < 8; ++e) {
          const int64_t n = n0 + e, khw = n / Cinp, ci = n % Cinp;
          if (ci >= c.Cin) continue;  // a padding column of C: the reduction skips it
          for (int64_t co = 0; co < c.Cout; ++co) dw[size_t((co * c.Cin + ci) * KHW + khw)] += dy_at(co, p) * b[size_t(e)];
        }
      }
    }
  } else {
    const cg::NchwGeom gx = cg::nchw_geom(c.N, c.Cin, HW), gy = cg::nchw_geom(c.N, c.Cout, OHW);
    REQUIRE(HW % 8 == 0);
    // GEMM columns (forward, backward-data) or K (backward-filter) in chunks of 8 pixels
    for (int64_t p0 = 0; p0 < stage_round(P); p0 += 8) {
      // forward: y[co][p] = sum_ci w[co][ci] x[ci][p], K = Cin rows of the B tile (the loader
      // adds c H W to the chunk's channel-0 offset: the same number)
      for (int64_t ci = 0; ci < stage_round(c.Cin); ++ci) {
        const int64_t off = cg::nchw_offset(gx, p0, ci);
        if (p0 < P && ci < c.Cin) REQUIRE(off == cg::nchw_offset(gx, p0, 0) + ci * HW);
        if (p0 >= P || ci >= c.Cin) {
          REQUIRE_MESSAGE(off == -1, label << ": x chunk (" << p0 << ", " << ci << ") not zero");
          continue;
        }
        const std::array<double, 8> b = chunk_at(x, off);
        for (int64_t co = 0; co < c.Cout; ++co)
          for (int e = 0; e < 8; ++e) y[nchw(c.Cout, OHW, co, p0 + e)] += w[size_t(co * c.Cin + ci)] * b[size_t(e)];
      }
      // backward-data: dx[ci][p] = sum_co w[co][ci] dy[co][p]
      for (int64_t co = 0; co < stage_round(c.Cout); ++co) {
        const int64_t off = cg::nchw_offset(gy, p0, co);
        if (p0 >= P || co >= c.Cout) {
          REQUIRE_MESSAGE(off == -1, label << ": dy chunk (" << p0 << ", " << co << ") not zero");
          continue;
        }
        const std::array<double, 8> b = chunk_at(dy, off);
        for (int64_t ci = 0; ci < c.Cin; ++ci)
          for (int e = 0; e < 8; ++e) dx[nchw(c.Cin, HW, ci, p0 + e)] += w[size_t(co * c.Cin + ci)] * b[size_t(e)];
      }
      // backward-filter: dw[co][ci] = sum_p dy[co][p] x[ci][p], both K-major rows of channels
      if (p0 >= P) continue;
      for (int64_t co = 0; co < c.Cout; ++co) {
        const std::array<double, 8> a = chunk_at(dy, cg::nchw_offset(gy, p0, co));
        for (int64_t ci = 0; ci < c.Cin; ++ci) {
          const std::array<double, 8> b = chunk_at(x, cg::nchw_offset(gx, p0, ci));
          for (int e = 0; e < 8; ++e) dw[size_t(co * c.Cin + ci)] += a[size_t(e)] * b[size_t(e)];
        }
      }
    }
  }
  expect_close(y, y_ref, 1e-12, label + " y", worst);
  expect_close(dx, dx_ref, 1e-12, label + " dx", worst);
  expect_close(dw, dw_ref, 1e-12, label + " dw", worst);
}

// Every (row, chunk) of a stage tile exactly once over the 256 loader threads.
template <class Roles>
void check_roles(int rows, int chunks, const char* what) {
  std::vector<int> seen(size_t(rows * chunks), 0);
  for (int tid = 0; tid < cg::kLoaderThreads; ++tid)
    for (int i = 0; i < Roles::kPer; ++i) {
      const int r = Roles::row(tid, i), c = Roles::ct(tid);
      const bool inside = r >= 0 && r < rows && c >= 0 && c < chunks;
      REQUIRE_MESSAGE(inside, what << ": thread " << tid << " copies (" << r << ", " << c << ") outside the tile");
      ++seen[size_t(r * chunks + c)];
    }
  for (int r = 0; r < rows; ++r)
    for (int c = 0; c < chunks; ++c)
      CHECK_MESSAGE(seen[size_t(r * chunks + c)] == 1,
                    what << ": chunk (" << r << ", " << c << ") copied " << seen[size_t(r * chunks + c)] << " times");
}

TEST_CASE("cuda conv host: the wgmma loaders' threads cover every chunk of a stage tile once") {
  check_roles<cg::KMajorRoles<64>>(64, 8, "K-major 64 rows");
  check_roles<cg::KMajorRoles<128>>(128, 8, "K-major 128 rows");
  check_roles<cg::KMajorRoles<256>>(256, 8, "K-major 256 rows");
  check_roles<cg::MnMajorRoles<64>>(cg::kStageK, 8, "MN-major 64 columns");
  check_roles<cg::MnMajorRoles<128>>(cg::kStageK, 16, "MN-major 128 columns");
  check_roles<cg::MnMajorRoles<256>>(cg::kStageK, 32, "MN-major 256 columns");
}

TEST_CASE("cuda conv host: FastDiv divides exactly (the wgmma gathers' 32-bit division)") {
  Rng rng(11);
  std::vector<uint32_t> divisors = {1, 2, 3, 5, 7, 8, 9, 49, 56, 196, 784, 3136, 12544, 50176, 65535, 65536, 100000007u,
                                    (1u << 30) + 1, (1u << 31) - 1, 1u << 30};
  for (int i = 0; i < 200; ++i) divisors.push_back(1 + uint32_t(rng.uniform() * double((1u << 31) - 2)));
  int64_t checked = 0;
  for (uint32_t d : divisors) {
    const cg::FastDiv f(d);
    std::vector<uint32_t> ns = {0, 1, d - 1, d, (1u << 31) - 1, (1u << 31) - 2};
    for (uint32_t q : {1u, 2u, 7u, 1000u, 65537u})
      if (uint64_t(q) * d + 1 < (uint64_t(1) << 31)) ns.insert(ns.end(), {q * d - 1, q * d, q * d + 1});
    for (int i = 0; i < 2000; ++i) ns.push_back(uint32_t(rng.uniform() * double((1u << 31) - 1)));
    for (uint32_t n : ns) {
      if (n >= (1u << 31)) continue;
      ++checked;
      if (f.div(n) != n / d) FAIL("FastDiv(" << d << ").div(" << n << ") = " << f.div(n) << ", not " << n / d);
    }
  }
  CHECK(checked > 400000);
}

TEST_CASE("cuda conv host: the wgmma convolution's gathers compute the convolution (all passes, both paths)") {
  WorstError worst{"wgmma gathers on the CPU (float64)", 0.0, {}};
  // NHWC: 3x3 stride 1 and 2 with padding, 5x5 s2 p2, kernel = stride, 1x1 stride 1 and 2, channel counts that
  // are multiples of 8 but not of the 64-wide stage, and that are not (padded to 8: the stem's 3,
  // odd counts on both sides), odd image sizes
  for (const GatherCase& c : {GatherCase{2, 8, 7, 5, 16, 3, 3, 1, 1}, GatherCase{3, 16, 9, 8, 8, 3, 3, 2, 1},
                              GatherCase{1, 24, 11, 9, 8, 5, 5, 2, 2}, GatherCase{2, 8, 8, 8, 24, 4, 4, 4, 0},
                              GatherCase{2, 72, 5, 3, 16, 1, 1, 1, 0}, GatherCase{1, 8, 6, 6, 8, 3, 1, 1, 0},
                              GatherCase{2, 3, 11, 9, 5, 3, 3, 2, 1}, GatherCase{1, 13, 7, 6, 70, 3, 3, 1, 1},
                              GatherCase{2, 5, 6, 7, 3, 2, 2, 2, 0}, GatherCase{2, 16, 8, 6, 24, 3, 3, 1, 1},
                              GatherCase{2, 72, 8, 8, 80, 1, 1, 2, 0}})
    gather_case(c, false, worst);
  // direct 1x1: H W % 8 == 0, the pixel count past and at a 64 boundary
  for (const GatherCase& c : {GatherCase{3, 16, 4, 6, 24, 1, 1, 1, 0}, GatherCase{2, 72, 4, 8, 8, 1, 1, 1, 0}})
    gather_case(c, true, worst);
}

TEST_CASE("cuda conv host: shape and argument checks throw clipcu::Error before touching the device") {
  CHECK_THROWS_WITH_AS(cuda::conv_shape(1, 3, 4, 4, 8, 7, 7, 1, 0), doctest::Contains("larger than the padded input"),
                       clipcu::Error);
  CHECK_THROWS_AS(cuda::conv_shape(1, 0, 4, 4, 8, 3, 3, 1, 1), clipcu::Error);
  CHECK_THROWS_AS(cuda::conv_shape(1, 3, 4, 4, 8, 3, 3, 0, 1), clipcu::Error);
  const cuda::ConvShape s = cuda::conv_shape(2, 3, 11, 9, 5, 3, 3, 2, 1);
  CHECK(s.OH == 6);
  CHECK(s.OW == 5);
  // the tensor-core forward of a 3x3 kernel needs its weight copy: no workspace is an error
  CHECK(cuda::conv2d_workspace_bytes<float>(s, cuda::ConvPass::Forward) > 0);
  cuda::ConvArgs<float> a;
  CHECK_THROWS_WITH_AS(cuda::conv2d_forward<float>(s, a, nullptr), doctest::Contains("workspace"), clipcu::Error);
  cuda::ConvShape bad = s;
  bad.OH = 7;
  CHECK_THROWS_WITH_AS(cuda::conv2d_forward<float>(bad, a, nullptr), doctest::Contains("do not follow"), clipcu::Error);
  cuda::BatchNormArgs<float, float> bn;
  bn.N = 2, bn.C = 0, bn.HW = 4;
  CHECK_THROWS_AS(cuda::batchnorm2d_forward(bn, nullptr), clipcu::Error);
  CHECK_THROWS_AS(cuda::avgpool2d_forward<float>(1, 2, 2, 3, nullptr, nullptr, nullptr), clipcu::Error);
}

#endif  // CLIPCU_WITH_CUDA

// The fused op's CPU path (every build): relu(batch_norm2d) exactly, and finite differences.
TEST_CASE("batch_norm2d_relu on the CPU: equals relu(batch_norm2d), gradients pass gradcheck") {
  using namespace clipcu;
  for (bool training : {true, false}) {
    Tensor x = test::make_input({2, 3, 4, 5}, test::Fill::Random, 11);
    Tensor w = test::make_input({3}, test::Fill::Random, 12);
    Tensor b = test::make_input({3}, test::Fill::Random, 13);
    Tensor rm = test::make_input({3}, test::Fill::Random, 14, false);
    Tensor rv = test::make_input({3}, test::Fill::Ones, 15, false);
    const Tensor fused = ops::batch_norm2d_relu(x, w, b, rm.clone(), rv.clone(), training);
    const Tensor plain = ops::relu(ops::batch_norm2d(x, w, b, rm.clone(), rv.clone(), training));
    tape().clear();
    test::check_close(fused, plain, 0.0, std::string("bn+relu vs relu(bn) ") + (training ? "train" : "eval"));
    test::gradcheck(
        [&](const std::vector<Tensor>& in) {
          return ops::batch_norm2d_relu(in[0], in[1], in[2], rm.clone(), rv.clone(), training);
        },
        {x, w, b}, std::string("batch_norm2d_relu ") + (training ? "train" : "eval"), 1e-6, 1e-6);
  }
}

// Last in the file: without a GPU every CLIPCU_GPU_TEST above was skipped; exit 77 = Skipped.
TEST_CASE("cuda conv: a GPU answers (otherwise the GPU tests are SKIPPED)") {
  clipcu::test::exit_77_without_gpu("test_cuda_conv");
  CHECK(clipcu::cuda_available());
}
