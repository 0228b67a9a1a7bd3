// AdamW over named parameters (moments kept per parameter, same shape and type) and global
// gradient-norm clipping. The arithmetic lives in kernels/cpu/adamw.h; this file validates,
// walks the parameter list in order and dispatches on the element type.
#include "engine/optim/adamw.h"

#include <cmath>

#include "engine/ops_common.h"
#include "kernels/cpu/adamw.h"

namespace clipcu::optim {

using ops::detail::with_float;

namespace {

void check_param(const char* where, const std::string& name, const Tensor& p) {
  CLIPCU_CHECK(p.defined(), where << ": parameter '" << name << "' is undefined");
  CLIPCU_CHECK(p.dtype() == DType::F32 || p.dtype() == DType::F64,
               where << ": parameter '" << name << "' is " << p.str() << ", expected F32 or F64 (master weights)");
}

bool contains(const std::string& s, const char* part) { return s.find(part) != std::string::npos; }

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
  for (const NamedParam& np : params_) {
    check_param("AdamW", np.name, np.param);
    m_.push_back(Tensor::zeros(np.param.shape(), np.param.dtype(), np.param.device()));
    v_.push_back(Tensor::zeros(np.param.shape(), np.param.dtype(), np.param.device()));
  }
}

void AdamW::step(double lr) {
  CLIPCU_CHECK(lr >= 0 && std::isfinite(lr), "AdamW: learning rate " << lr << " must be >= 0");
  ++t_;
  for (size_t i = 0; i < params_.size(); ++i) {
    NamedParam& np = params_[i];
    Tensor& p = np.param;
    if (!p.has_grad()) continue;  // not part of this step's graph: parameter and moments untouched
    Tensor g = p.grad();
    CLIPCU_CHECK(!p.device().is_cuda(),
                 "AdamW: CUDA path not built yet (parameter '" << np.name << "' " << p.str() << ")");
    CLIPCU_CHECK(g.shape() == p.shape() && g.dtype() == p.dtype(),
                 "AdamW: gradient " << g.str() << " does not match parameter '" << np.name << "' " << p.str());
    for (const Tensor* mom : {&m_[i], &v_[i]}) {
      CLIPCU_CHECK(
          mom->defined() && mom->shape() == p.shape() && mom->dtype() == p.dtype() && mom->device() == p.device(),
          "AdamW: moment " << (mom->defined() ? mom->str() : std::string("(undefined)"))
                           << " does not match parameter '" << np.name << "' " << p.str());
    }
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

void AdamW::zero_grad() {
  for (NamedParam& np : params_) np.param.zero_grad();
}

double grad_norm(const std::vector<Tensor>& params) {
  double ss = 0.0;  // parameters in list order, each summed deterministically: repeatable bit for bit
  for (const Tensor& p : params) {
    if (!p.defined() || !p.has_grad()) continue;
    Tensor g = p.grad();
    CLIPCU_CHECK(!g.device().is_cuda(), "grad_norm: CUDA path not built yet (gradient " << g.str() << ")");
    CLIPCU_CHECK(g.dtype() == DType::F32 || g.dtype() == DType::F64,
                 "grad_norm: gradient " << g.str() << ", expected F32 or F64");
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
    with_float(g.dtype(), [&](auto tag) {
      using T = decltype(tag);
      cpu::scale_inplace<T>(g.numel(), g.data<T>(), coef);
    });
  }
  return norm;
}

}  // namespace clipcu::optim
