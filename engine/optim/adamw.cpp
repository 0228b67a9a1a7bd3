// AdamW over named parameters and global gradient-norm clipping. The arithmetic lives in
// kernels/cpu/adamw.h (per parameter, in its own type) and kernels/cuda/adamw.cuh (all
// parameters in one launch, float32 moments and masters); this file validates, keeps the state
// and dispatches by device and element type.
#include "engine/optim/adamw.h"

#include <cmath>
#include <cstring>

#include "engine/ops_common.h"
#include "kernels/cpu/adamw.h"

#ifdef CLIPCU_WITH_CUDA
#include "engine/cuda_runtime.h"
#include "kernels/cuda/adamw.cuh"
#include "kernels/cuda/common/check.h"
#endif

namespace clipcu::optim {

using ops::detail::with_float;

namespace {

void check_param(const char* where, const std::string& name, const Tensor& p) {
  CLIPCU_CHECK(p.defined(), where << ": parameter '" << name << "' is undefined");
  if (p.device().is_cuda()) {
    CLIPCU_CHECK(p.dtype() == DType::F32 || p.dtype() == DType::BF16,
                 where << ": parameter '" << name << "' is " << p.str() << ", expected F32 or BF16 on a GPU");
    return;
  }
  CLIPCU_CHECK(p.dtype() == DType::F32 || p.dtype() == DType::F64,
               where << ": parameter '" << name << "' is " << p.str() << ", expected F32 or F64 (master weights)");
}

bool contains(const std::string& s, const char* part) { return s.find(part) != std::string::npos; }

void check_moment(const Tensor& mom, const NamedParam& np, DType want) {
  CLIPCU_CHECK(mom.defined() && mom.shape() == np.param.shape() && mom.dtype() == want &&
                   mom.device() == np.param.device(),
               "AdamW: moment " << (mom.defined() ? mom.str() : std::string("(undefined)"))
                                << " does not match parameter '" << np.name << "' " << np.param.str());
}

#ifdef CLIPCU_WITH_CUDA
// The device tensor list + chunk layout for the kernels, packed in one buffer (one upload).
struct PackedList {
  std::vector<char> bytes;
  size_t chunk_offset = 0;  // where chunk_start begins (aligned)
  int tensors = 0;
  int64_t chunks = 0;
};

PackedList pack(const std::vector<cuda::AdamWTensor>& list) {
  PackedList p;
  std::vector<int64_t> sizes;
  for (const auto& t : list) sizes.push_back(t.n);
  const std::vector<int32_t> start = cuda::adamw_layout(sizes);
  p.tensors = int(list.size());
  p.chunks = start.back();
  p.chunk_offset = (list.size() * sizeof(cuda::AdamWTensor) + 15) / 16 * 16;
  p.bytes.resize(p.chunk_offset + start.size() * sizeof(int32_t));
  if (!list.empty()) std::memcpy(p.bytes.data(), list.data(), list.size() * sizeof(cuda::AdamWTensor));
  std::memcpy(p.bytes.data() + p.chunk_offset, start.data(), start.size() * sizeof(int32_t));
  return p;
}

// The bytes the packed list of `n` tensors of these sizes can take at most (all parameters).
size_t packed_capacity(size_t n) { return (n * sizeof(cuda::AdamWTensor) + 15) / 16 * 16 + (n + 1) * sizeof(int32_t); }

int64_t total_chunks(const std::vector<int64_t>& sizes) {
  int64_t c = 0;
  for (int64_t n : sizes) c += (n + cuda::kAdamWChunk - 1) / cuda::kAdamWChunk;
  return c;
}

// Sum of squares of gradients on one device through the kernels; returns the norm and leaves
// (norm, coefficient) in norm_buf. Gradients are all F32 or all BF16.
double launch_grad_norm(Device dev, DType gtype, const PackedList& list, Tensor& list_buf, Tensor& partial,
                        Tensor& norm_buf, double max_norm, bool upload) {
  const int d = dev.index;
  if (upload && !list.bytes.empty()) cuda::staging(d).upload(list_buf.raw(), list.bytes.data(), list.bytes.size());
  const auto* tensors = static_cast<const cuda::AdamWTensor*>(list_buf.raw());
  const auto* chunk_start = reinterpret_cast<const int32_t*>(static_cast<const char*>(list_buf.raw()) + list.chunk_offset);
  float* out = norm_buf.data<float>();
  const float mx = max_norm >= 0 ? float(max_norm) : -1.f;
  if (gtype == DType::BF16) {
    cuda::grad_norm<cuda::bf16>(list.tensors, tensors, chunk_start, list.chunks, partial.data<double>(), mx, out,
                                out + 1, cuda::current_stream(d));
  } else {
    cuda::grad_norm<float>(list.tensors, tensors, chunk_start, list.chunks, partial.data<double>(), mx, out, out + 1,
                           cuda::current_stream(d));
  }
  return double(norm_buf.rows(0, 1).item());  // waits for the kernels (a blocking copy)
}
#endif

// The gradients of `params` that exist, checked: one device for all, and on a GPU one type.
std::vector<Tensor> present_grads(const std::vector<Tensor>& params, const char* where) {
  std::vector<Tensor> g;
  for (const Tensor& p : params) {
    if (!p.defined() || !p.has_grad()) continue;
    g.push_back(p.grad());
    const Tensor& x = g.back();
    CLIPCU_CHECK(x.device() == g.front().device(),
                 where << ": gradients on two devices (" << g.front().str() << ", " << x.str() << ")");
    if (x.device().is_cuda()) {
      CLIPCU_CHECK(x.dtype() == g.front().dtype() && (x.dtype() == DType::F32 || x.dtype() == DType::BF16),
                   where << ": gradient " << x.str() << ", expected one type (F32 or BF16) for all on a GPU");
    } else {
      CLIPCU_CHECK(x.dtype() == DType::F32 || x.dtype() == DType::F64,
                   where << ": gradient " << x.str() << ", expected F32 or F64");
    }
  }
  return g;
}

#ifdef CLIPCU_WITH_CUDA
// The norm of CUDA gradients through a one-off list (the free functions).
double cuda_grads_norm(const std::vector<Tensor>& grads) {
  const Device dev = grads.front().device();
  std::vector<cuda::AdamWTensor> list;
  for (const Tensor& g : grads) {
    cuda::AdamWTensor t;
    t.grad = g.raw();
    t.n = g.numel();
    list.push_back(t);
  }
  PackedList packed = pack(list);
  Tensor list_buf = Tensor::empty({int64_t(packed.bytes.size())}, DType::U8, dev);
  Tensor partial = Tensor::empty({std::max<int64_t>(packed.chunks, 1)}, DType::F64, dev);
  Tensor norm_buf = Tensor::empty({2}, DType::F32, dev);
  return launch_grad_norm(dev, grads.front().dtype(), packed, list_buf, partial, norm_buf, -1.0, true);
}
#endif

}  // namespace

bool open_clip_decay(const std::string& name, const Tensor& p) {
  return !(p.dim() < 2 || contains(name, "bn") || contains(name, "ln") || contains(name, "bias") ||
           contains(name, "logit_scale"));
}

AdamW::AdamW(std::vector<NamedParam> params, AdamWConfig cfg) : params_(std::move(params)), cfg_(cfg) {
  CLIPCU_CHECK(cfg_.lr >= 0 && std::isfinite(cfg_.lr), "AdamW: learning rate " << cfg_.lr << " must be >= 0");
  CLIPCU_CHECK(cfg_.beta1 >= 0 && cfg_.beta1 < 1, "AdamW: beta1 " << cfg_.beta1 << " must be in [0, 1)");
  CLIPCU_CHECK(cfg_.beta2 >= 0 && cfg_.beta2 < 1, "AdamW: beta2 " << cfg_.beta2 << " must be in [0, 1)");
  CLIPCU_CHECK(cfg_.eps >= 0, "AdamW: eps " << cfg_.eps << " must be >= 0");
  CLIPCU_CHECK(cfg_.weight_decay >= 0, "AdamW: weight decay " << cfg_.weight_decay << " must be >= 0");
  m_.reserve(params_.size());
  v_.reserve(params_.size());
  masters_.resize(params_.size());
  for (const NamedParam& np : params_) check_param("AdamW", np.name, np.param);
  device_ = params_.empty() ? Device::cpu() : params_.front().param.device();
  if (device_.is_cuda()) check_cuda_params();
  for (size_t i = 0; i < params_.size(); ++i) {
    const Tensor& p = params_[i].param;
    // CPU: moments in the parameter's type (F32, or F64 for the finite-difference checks);
    // CUDA: float32 whatever the parameter's type.
    const DType mt = device_.is_cuda() ? DType::F32 : p.dtype();
    m_.push_back(Tensor::zeros(p.shape(), mt, p.device()));
    v_.push_back(Tensor::zeros(p.shape(), mt, p.device()));
    if (mixed_) masters_[i] = p.to(DType::F32);  // the bf16 values; set_value() gives exact ones
  }
}

void AdamW::check_cuda_params() {
#ifdef CLIPCU_WITH_CUDA
  const DType t = params_.front().param.dtype();
  for (const NamedParam& np : params_) {
    CLIPCU_CHECK(np.param.device() == device_, "AdamW: parameter '" << np.name << "' is " << np.param.str()
                                                                    << ", the others are on " << device_.str()
                                                                    << " (one device for all)");
    CLIPCU_CHECK(np.param.dtype() == t, "AdamW: parameter '" << np.name << "' is " << np.param.str() << ", '"
                                                             << params_.front().name << "' is "
                                                             << params_.front().param.str()
                                                             << " (one type for all on a GPU)");
  }
  mixed_ = t == DType::BF16;
  const size_t n = params_.size();
  std::vector<int64_t> sizes;
  for (const NamedParam& np : params_) sizes.push_back(np.param.numel());
  dev_list_ = Tensor::empty({int64_t(packed_capacity(n))}, DType::U8, device_);
  dev_partial_ = Tensor::empty({std::max<int64_t>(total_chunks(sizes), 1)}, DType::F64, device_);
  dev_norm_ = Tensor::zeros({2}, DType::F32, device_);
#else
  CLIPCU_FAIL("AdamW: this build has no CUDA backend (parameter '" << params_.front().name << "' is "
                                                                  << params_.front().param.str() << ")");
#endif
}

const Tensor& AdamW::master(size_t i) const {
  CLIPCU_CHECK(i < params_.size(), "AdamW: parameter index " << i << " out of range");
  return mixed_ ? masters_[i] : params_[i].param;
}

size_t AdamW::index_of(const std::string& name) const {
  for (size_t i = 0; i < params_.size(); ++i)
    if (params_[i].name == name) return i;
  CLIPCU_FAIL("AdamW: no parameter named '" << name << "'");
}

void AdamW::set_value(size_t i, const Tensor& value) {
  CLIPCU_CHECK(i < params_.size(), "AdamW: parameter index " << i << " out of range");
  Tensor p = params_[i].param;
  CLIPCU_CHECK(value.defined() && value.numel() == p.numel(),
               "AdamW: value " << (value.defined() ? value.str() : std::string("(undefined)")) << " for parameter '"
                               << params_[i].name << "' " << p.str());
  // a 0-d scalar and a [1] tensor are the same value (logit_scale)
  const Tensor v = value.shape() == p.shape() ? value : value.view(p.shape());
  if (mixed_) {
    // through the host: exact float32 into the master, then bf16 rounding of it into the model
    const Tensor h = v.to(Device::cpu()).to(DType::F32);
    masters_[i].copy_from(h);
    p.copy_from(h.to(DType::BF16));
  } else {
    p.copy_from(v);
  }
  list_current_ = false;
}

Tensor AdamW::master_value(size_t i) const { return master(i).to(Device::cpu()).to(DType::F32); }

double AdamW::clamp(size_t i, double lo, double hi) {
  Tensor w = master(i);
  CLIPCU_CHECK(w.numel() == 1, "AdamW::clamp: parameter '" << params_[i].name << "' has " << w.numel()
                                                           << " elements, expected one");
  // The same comparisons and fills as the trainer made on the parameter before: on the CPU the
  // values are bit for bit what they were.
  double x = w.item();
  if (x > hi) {
    set_value(i, Tensor::full(w.shape(), hi, DType::F64));
    x = master(i).item();
  }
  if (x < lo) {
    set_value(i, Tensor::full(w.shape(), lo, DType::F64));
    x = master(i).item();
  }
  return x;
}

void AdamW::step(double lr) {
  CLIPCU_CHECK(lr >= 0 && std::isfinite(lr), "AdamW: learning rate " << lr << " must be >= 0");
  ++t_;
  if (device_.is_cuda()) {
#ifdef CLIPCU_WITH_CUDA
    if (!list_current_) build_device_list();
    const int d = device_.index;
    const auto* tensors = static_cast<const cuda::AdamWTensor*>(dev_list_.raw());
    const size_t chunk_offset = (size_t(list_tensors_) * sizeof(cuda::AdamWTensor) + 15) / 16 * 16;
    const auto* chunk_start = reinterpret_cast<const int32_t*>(static_cast<const char*>(dev_list_.raw()) + chunk_offset);
    cuda::AdamWHyper h;
    h.lr = lr;
    h.beta1 = cfg_.beta1;
    h.beta2 = cfg_.beta2;
    h.eps = cfg_.eps;
    h.step = t_;
    // After clip_grad_norm: the coefficient, and the norm so that a non-finite gradient makes
    // the kernel skip (the trainer does not call step() then, but other callers may).
    const float* coef = clip_pending_ ? dev_norm_.data<float>() + 1 : nullptr;
    const float* norm = clip_pending_ ? dev_norm_.data<float>() : nullptr;
    if (mixed_) {
      cuda::adamw_step<cuda::bf16>(list_tensors_, tensors, chunk_start, list_chunks_, h, coef, norm,
                                   cuda::current_stream(d));
    } else {
      cuda::adamw_step<float>(list_tensors_, tensors, chunk_start, list_chunks_, h, coef, norm,
                              cuda::current_stream(d));
    }
    clip_pending_ = false;
    list_current_ = false;
#endif
    return;
  }
  for (size_t i = 0; i < params_.size(); ++i) {
    NamedParam& np = params_[i];
    Tensor& p = np.param;
    if (!p.has_grad()) continue;  // not part of this step's graph: parameter and moments untouched
    Tensor g = p.grad();
    CLIPCU_CHECK(!p.device().is_cuda(), "AdamW: parameter '" << np.name << "' " << p.str()
                                                             << " is on a GPU, the optimizer's others on the CPU");
    CLIPCU_CHECK(g.shape() == p.shape() && g.dtype() == p.dtype(),
                 "AdamW: gradient " << g.str() << " does not match parameter '" << np.name << "' " << p.str());
    for (const Tensor* mom : {&m_[i], &v_[i]}) check_moment(*mom, np, p.dtype());
    cpu::AdamWStep s;
    s.lr = lr;
    s.beta1 = cfg_.beta1;
    s.beta2 = cfg_.beta2;
    s.eps = cfg_.eps;
    s.weight_decay = np.decay ? cfg_.weight_decay : 0.0;
    s.t = t_;
    with_float(p.dtype(), [&](auto tag) {
      using T = decltype(tag);
      cpu::adamw_step<T>(p.numel(), s, p.data<T>(), g.data<T>(), m_[i].data<T>(), v_[i].data<T>());
    });
  }
}

void AdamW::build_device_list() {
#ifdef CLIPCU_WITH_CUDA
  std::vector<cuda::AdamWTensor> list;
  for (size_t i = 0; i < params_.size(); ++i) {
    NamedParam& np = params_[i];
    Tensor& p = np.param;
    if (!p.has_grad()) continue;  // as on the CPU: untouched, moments too
    Tensor g = p.grad();
    CLIPCU_CHECK(g.shape() == p.shape() && g.dtype() == p.dtype() && g.device() == p.device(),
                 "AdamW: gradient " << g.str() << " does not match parameter '" << np.name << "' " << p.str());
    CLIPCU_CHECK(p.device() == device_ && p.dtype() == (mixed_ ? DType::BF16 : DType::F32),
                 "AdamW: parameter '" << np.name << "' is now " << p.str() << " (the optimizer was built for "
                                      << device_.str() << ", " << (mixed_ ? "BF16" : "F32")
                                      << "): build the optimizer after moving the model");
    for (const Tensor* mom : {&m_[i], &v_[i]}) check_moment(*mom, np, DType::F32);
    cuda::AdamWTensor t;
    if (mixed_) {
      t.param = masters_[i].data<float>();
      t.param_bf16 = static_cast<cuda::bf16*>(p.raw());
    } else {
      t.param = p.data<float>();
    }
    t.grad = g.raw();
    t.exp_avg = m_[i].data<float>();
    t.exp_avg_sq = v_[i].data<float>();
    t.n = p.numel();
    t.weight_decay = np.decay ? float(cfg_.weight_decay) : 0.f;
    list.push_back(t);
  }
  PackedList packed = pack(list);
  CLIPCU_CHECK(packed.bytes.size() <= size_t(dev_list_.numel()), "AdamW: tensor list larger than its buffer");
  // Asynchronous, in stream order: the previous step's kernels have read the old list before
  // this copy runs, and the next kernels read the new one after it.
  cuda::staging(device_.index).upload(dev_list_.raw(), packed.bytes.data(), packed.bytes.size());
  list_tensors_ = packed.tensors;
  list_chunks_ = packed.chunks;
  list_current_ = true;
#endif
}

double AdamW::device_grad_norm(double max_norm) {
#ifdef CLIPCU_WITH_CUDA
  if (!list_current_) build_device_list();
  PackedList view;  // the uploaded list: only its shape is needed here
  view.tensors = list_tensors_;
  view.chunks = list_chunks_;
  view.chunk_offset = (size_t(list_tensors_) * sizeof(cuda::AdamWTensor) + 15) / 16 * 16;
  const double norm = launch_grad_norm(device_, mixed_ ? DType::BF16 : DType::F32, view, dev_list_, dev_partial_,
                                       dev_norm_, max_norm, /*upload=*/false);
  return norm;
#else
  (void)max_norm;
  CLIPCU_FAIL("AdamW: this build has no CUDA backend");
#endif
}

double AdamW::grad_norm() {
  if (!device_.is_cuda()) {
    std::vector<Tensor> ps;
    for (const NamedParam& np : params_) ps.push_back(np.param);
    return optim::grad_norm(ps);
  }
  const double norm = device_grad_norm(-1.0);  // coefficient 1: nothing to apply
  clip_pending_ = false;
  return norm;
}

double AdamW::clip_grad_norm(double max_norm) {
  CLIPCU_CHECK(max_norm >= 0, "clip_grad_norm: max_norm " << max_norm << " must be >= 0");
  if (!device_.is_cuda()) {
    std::vector<Tensor> ps;
    for (const NamedParam& np : params_) ps.push_back(np.param);
    return optim::clip_grad_norm(ps, max_norm);
  }
  const double norm = device_grad_norm(max_norm);
  clip_pending_ = true;  // the kernel set the coefficient (1 when not clipping or not finite)
  return norm;
}

void AdamW::zero_grad() {
  for (NamedParam& np : params_) np.param.zero_grad();
  list_current_ = false;
  clip_pending_ = false;
}

double grad_norm(const std::vector<Tensor>& params) {
  std::vector<Tensor> grads = present_grads(params, "grad_norm");
  if (!grads.empty() && grads.front().device().is_cuda()) {
#ifdef CLIPCU_WITH_CUDA
    return cuda_grads_norm(grads);
#endif
  }
  double ss = 0.0;  // parameters in list order, each summed deterministically: repeatable bit for bit
  for (const Tensor& g : grads) {
    with_float(g.dtype(), [&](auto tag) {
      using T = decltype(tag);
      ss += cpu::sum_squares<T>(g.numel(), g.data<T>());
    });
  }
  return std::sqrt(ss);
}

double clip_grad_norm(const std::vector<Tensor>& params, double max_norm) {
  CLIPCU_CHECK(max_norm >= 0, "clip_grad_norm: max_norm " << max_norm << " must be >= 0");
  const double norm = grad_norm(params);
  // A non-finite norm is returned as is and the gradients are left alone: the caller decides
  // (skip the step); scaling by max_norm / inf would only turn infinities into NaNs.
  if (!std::isfinite(norm) || !(norm > max_norm)) return norm;
  const double coef = max_norm / (norm + 1e-6);
  for (const Tensor& p : params) {
    if (!p.defined() || !p.has_grad()) continue;
    Tensor g = p.grad();
    if (g.device().is_cuda()) {
#ifdef CLIPCU_WITH_CUDA
      // cuBLAS scales in place on the current stream (float math, F32 or BF16 storage)
      cublasHandle_t h = cuda::cublas_handle(g.device().index);
      cublasPointerMode_t mode;
      CLIPCU_CUBLAS_CHECK(cublasGetPointerMode(h, &mode));
      CLIPCU_CUBLAS_CHECK(cublasSetPointerMode(h, CUBLAS_POINTER_MODE_HOST));
      const float alpha = float(coef);
      const cudaDataType xt = g.dtype() == DType::BF16 ? CUDA_R_16BF : CUDA_R_32F;
      CLIPCU_CUBLAS_CHECK(cublasScalEx(h, int(g.numel()), &alpha, CUDA_R_32F, g.raw(), xt, 1, CUDA_R_32F));
      CLIPCU_CUBLAS_CHECK(cublasSetPointerMode(h, mode));
#endif
      continue;
    }
    with_float(g.dtype(), [&](auto tag) {
      using T = decltype(tag);
      cpu::scale_inplace<T>(g.numel(), g.data<T>(), coef);
    });
  }
  return norm;
}

}  // namespace clipcu::optim
