#include "engine/tensor.h"

#include <cmath>
#include <cstring>
#include <sstream>

#include "engine/rng.h"

#ifdef CLIPCU_WITH_CUDA
#include "engine/cuda_runtime.h"
#include "kernels/cuda/elementwise.cuh"
#endif

namespace clipcu {

std::string shape_str(const Shape& s) {
  std::ostringstream o;
  o << '[';
  for (size_t i = 0; i < s.size(); ++i) o << (i ? ", " : "") << s[i];
  o << ']';
  return o.str();
}

int64_t shape_numel(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
}

Storage::Storage(size_t b, Device d) : data(device_alloc(d, b)), bytes(b), device(d) {}
Storage::Storage(void* borrowed, size_t b, Device d, std::shared_ptr<void> k)
    : data(borrowed), bytes(b), device(d), keep_alive(std::move(k)) {}
Storage::~Storage() {
  if (!keep_alive) device_free(device, data);
}

static void check_new_shape(const Shape& shape) {
  for (int64_t d : shape) CLIPCU_CHECK(d >= 0, "negative dimension in shape " << shape_str(shape));
}

Tensor Tensor::empty(const Shape& shape, DType dtype, Device device) {
  check_new_shape(shape);
  Tensor t;
  t.shape_ = shape;
  t.dtype_ = dtype;
  t.storage_ = std::make_shared<Storage>(size_t(shape_numel(shape)) * dtype_size(dtype), device);
  t.ensure_meta();
  return t;
}

Tensor Tensor::zeros(const Shape& shape, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, device);
  t.zero();
  return t;
}

Tensor Tensor::ones(const Shape& shape, DType dtype, Device device) { return full(shape, 1.0, dtype, device); }

Tensor Tensor::full(const Shape& shape, double value, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, device);
  t.fill(value);
  return t;
}

Tensor Tensor::arange(const Shape& shape, DType dtype, Device device) {
  std::vector<double> v(size_t(shape_numel(shape)));
  for (size_t i = 0; i < v.size(); ++i) v[i] = double(i);
  return from_vector(v, shape, dtype).to(device);
}

Tensor Tensor::randn(const Shape& shape, Rng& rng, double mean, double std, DType dtype) {
  std::vector<double> v(size_t(shape_numel(shape)));
  for (auto& x : v) x = mean + std * rng.normal();
  return from_vector(v, shape, dtype);
}

Tensor Tensor::uniform(const Shape& shape, Rng& rng, double lo, double hi, DType dtype) {
  std::vector<double> v(size_t(shape_numel(shape)));
  for (auto& x : v) x = lo + (hi - lo) * rng.uniform();
  return from_vector(v, shape, dtype);
}

Tensor Tensor::from_vector(const std::vector<float>& v, const Shape& shape, DType dtype) {
  CLIPCU_CHECK(int64_t(v.size()) == shape_numel(shape),
               "from_vector: " << v.size() << " values for shape " << shape_str(shape));
  Tensor t = empty(shape, dtype);
  convert_host(t.raw(), dtype, v.data(), DType::F32, v.size());
  return t;
}

Tensor Tensor::from_vector(const std::vector<double>& v, const Shape& shape, DType dtype) {
  CLIPCU_CHECK(int64_t(v.size()) == shape_numel(shape),
               "from_vector: " << v.size() << " values for shape " << shape_str(shape));
  Tensor t = empty(shape, dtype);
  convert_host(t.raw(), dtype, v.data(), DType::F64, v.size());
  return t;
}

Tensor Tensor::from_ints(const std::vector<int64_t>& v, const Shape& shape, DType dtype) {
  CLIPCU_CHECK(int64_t(v.size()) == shape_numel(shape),
               "from_ints: " << v.size() << " values for shape " << shape_str(shape));
  Tensor t = empty(shape, dtype);
  if (v.empty()) return t;
  if (dtype == DType::I64) {
    std::memcpy(t.raw(), v.data(), v.size() * 8);
  } else {
    convert_host(t.raw(), dtype, v.data(), DType::I64, v.size());
  }
  return t;
}

Tensor Tensor::borrow(void* data, const Shape& shape, DType dtype, Device device, std::shared_ptr<void> keep_alive) {
  check_new_shape(shape);
  CLIPCU_CHECK(keep_alive != nullptr, "borrow: a keep-alive owner is required");
  Tensor t;
  t.shape_ = shape;
  t.dtype_ = dtype;
  t.storage_ = std::make_shared<Storage>(data, size_t(shape_numel(shape)) * dtype_size(dtype), device,
                                         std::move(keep_alive));
  t.ensure_meta();
  return t;
}

int64_t Tensor::size(int64_t d) const {
  int64_t n = dim();
  if (d < 0) d += n;
  CLIPCU_CHECK(d >= 0 && d < n, "dimension " << d << " out of range for " << str());
  return shape_[size_t(d)];
}

Device Tensor::device() const { return storage_ ? storage_->device : Device::cpu(); }

std::string Tensor::str() const {
  if (!defined()) return "(undefined tensor)";
  return std::string(dtype_name(dtype_)) + shape_str(shape_) + " " + device().str();
}

Tensor Tensor::to(DType dtype) const {
  CLIPCU_CHECK(defined(), "to(dtype) of an undefined tensor");
  if (dtype == dtype_) return *this;
  if (device().is_cpu()) {
    Tensor t = empty(shape_, dtype);
    convert_host(t.raw(), dtype, raw(), dtype_, size_t(numel()));
    return t;
  }
#ifdef CLIPCU_WITH_CUDA
  // float32 <-> bf16 on the device (the mixed-precision casts); other pairs go through the host
  if (device().is_cuda() && ((dtype_ == DType::F32 && dtype == DType::BF16) ||
                             (dtype_ == DType::BF16 && dtype == DType::F32))) {
    Tensor t = empty(shape_, dtype, device());
    cudaStream_t stream = cuda::current_stream(device().index);
    if (dtype == DType::BF16) {
      cuda::convert<cuda::bf16, float>(numel(), static_cast<const float*>(raw()), static_cast<cuda::bf16*>(t.raw()),
                                       stream);
    } else {
      cuda::convert<float, cuda::bf16>(numel(), static_cast<const cuda::bf16*>(raw()), static_cast<float*>(t.raw()),
                                       stream);
    }
    return t;
  }
#endif
  return to(Device::cpu()).to(dtype).to(device());
}

Tensor Tensor::to(Device device) const {
  CLIPCU_CHECK(defined(), "to(device) of an undefined tensor");
  if (device == this->device()) return *this;
  Tensor t = empty(shape_, dtype_, device);
  device_copy(t.raw(), device, raw(), this->device(), nbytes());
  return t;
}

Tensor Tensor::clone() const {
  CLIPCU_CHECK(defined(), "clone of an undefined tensor");
  Tensor t = empty(shape_, dtype_, device());
  device_copy(t.raw(), device(), raw(), device(), nbytes());
  return t;
}

Tensor Tensor::view(const Shape& shape) const {
  CLIPCU_CHECK(defined(), "view of an undefined tensor");
  Shape s = shape;
  int64_t known = 1;
  int infer = -1;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == -1) {
      CLIPCU_CHECK(infer < 0, "view: more than one -1 in " << shape_str(shape));
      infer = int(i);
    } else {
      CLIPCU_CHECK(s[i] >= 0, "view: negative dimension in " << shape_str(shape));
      known *= s[i];
    }
  }
  if (infer >= 0) {
    CLIPCU_CHECK(known > 0 && numel() % known == 0, "view: cannot infer -1 in " << shape_str(shape) << " for " << str());
    s[size_t(infer)] = numel() / known;
  }
  CLIPCU_CHECK(shape_numel(s) == numel(), "view: shape " << shape_str(shape) << " does not fit " << str());
  Tensor t;
  t.storage_ = storage_;
  t.offset_ = offset_;
  t.shape_ = s;
  t.dtype_ = dtype_;
  t.ensure_meta();
  return t;
}

Tensor Tensor::rows(int64_t start, int64_t count) const {
  CLIPCU_CHECK(defined() && dim() >= 1, "rows() needs a tensor with at least one dimension, got " << str());
  CLIPCU_CHECK(start >= 0 && count >= 0 && start + count <= shape_[0],
               "rows [" << start << ", " << start + count << ") out of range for " << str());
  Tensor t;
  t.storage_ = storage_;
  int64_t row = numel() / std::max<int64_t>(shape_[0], 1);
  t.offset_ = offset_ + size_t(start * row) * dtype_size(dtype_);
  t.shape_ = shape_;
  t.shape_[0] = count;
  t.dtype_ = dtype_;
  t.ensure_meta();
  return t;
}

void Tensor::copy_from(const Tensor& src) {
  CLIPCU_CHECK(defined() && src.defined(), "copy_from with an undefined tensor");
  CLIPCU_CHECK(shape_ == src.shape_, "copy_from: shape " << src.str() << " into " << str());
  Tensor s = src;
  if (s.dtype_ != dtype_) s = s.device() == device() ? s.to(dtype_) : s.to(Device::cpu()).to(dtype_);
  device_copy(raw(), device(), s.raw(), s.device(), nbytes());
}

void Tensor::fill(double value) {
  CLIPCU_CHECK(defined(), "fill of an undefined tensor");
  if (value == 0.0) {
    zero();
    return;
  }
#ifdef CLIPCU_WITH_CUDA
  if (device().is_cuda() && (dtype_ == DType::F32 || dtype_ == DType::BF16)) {
    cudaStream_t stream = cuda::current_stream(device().index);
    if (dtype_ == DType::F32) {
      cuda::fill<float>(numel(), float(value), static_cast<float*>(raw()), stream);
    } else {
      cuda::fill<cuda::bf16>(numel(), float(value), static_cast<cuda::bf16*>(raw()), stream);
    }
    return;
  }
#endif
  std::vector<double> v(size_t(numel()), value);
  if (device().is_cpu()) {
    convert_host(raw(), dtype_, v.data(), DType::F64, v.size());
  } else {
    copy_from(from_vector(v, shape_, dtype_));
  }
}

void Tensor::zero() { device_memset_zero(device(), raw(), nbytes()); }

std::vector<float> Tensor::to_f32_vector() const {
  Tensor h = to(Device::cpu());
  std::vector<float> v(static_cast<size_t>(numel()));
  convert_host(v.data(), DType::F32, h.raw(), dtype_, v.size());
  return v;
}

std::vector<double> Tensor::to_f64_vector() const {
  Tensor h = to(Device::cpu());
  std::vector<double> v(static_cast<size_t>(numel()));
  convert_host(v.data(), DType::F64, h.raw(), dtype_, v.size());
  return v;
}

std::vector<int64_t> Tensor::to_i64_vector() const {
  Tensor h = to(Device::cpu());
  std::vector<int64_t> v(static_cast<size_t>(numel()));
  convert_host(v.data(), DType::I64, h.raw(), dtype_, v.size());
  return v;
}

double Tensor::item() const {
  CLIPCU_CHECK(defined() && numel() == 1, "item() needs a one-element tensor, got " << str());
  return to_f64_vector()[0];
}

void Tensor::ensure_meta() {
  if (!meta_) meta_ = std::make_shared<AutogradMeta>();
}

Tensor& Tensor::set_requires_grad(bool r) {
  CLIPCU_CHECK(!r || is_floating(dtype_), "only floating tensors can require a gradient, got " << str());
  ensure_meta();
  meta_->requires_grad = r;
  return *this;
}

Tensor Tensor::grad() const { return has_grad() ? *meta_->grad : Tensor(); }

Tensor& Tensor::grad_buffer() {
  ensure_meta();
  if (!meta_->grad || !meta_->grad->defined()) {
    meta_->grad = std::make_shared<Tensor>(zeros(shape_, dtype_, device()));
  }
  return *meta_->grad;
}

void Tensor::zero_grad() {
  if (meta_) meta_->grad.reset();
}

const std::string& Tensor::name() const {
  static const std::string empty_name;
  return meta_ ? meta_->name : empty_name;
}

Tensor& Tensor::set_name(const std::string& n) {
  ensure_meta();
  meta_->name = n;
  return *this;
}

void check_shape(const Tensor& t, const Shape& expect, const char* op, const char* arg) {
  CLIPCU_CHECK(t.defined(), op << ": argument '" << arg << "' is undefined");
  bool ok = t.dim() == int64_t(expect.size());
  for (size_t i = 0; ok && i < expect.size(); ++i) ok = expect[i] < 0 || expect[i] == t.shape()[i];
  CLIPCU_CHECK(ok, op << ": argument '" << arg << "' has shape " << shape_str(t.shape()) << ", expected "
                      << shape_str(expect) << " (-1: any)");
}

}  // namespace clipcu
