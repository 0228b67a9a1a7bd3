// Tensor: a shape, an element type, a device and contiguous storage shared by views.
//
// Storage is always contiguous and row-major; a view (view(), rows()) shares the storage with
// a byte offset and a new shape, so it is cheap. Non-contiguous layouts (permutes) are
// materialized by the ops that need them. Autograd state (requires_grad, the gradient, the
// module-path name) lives in a shared AutogradMeta, so copies of a Tensor handle are the same
// variable; views made with view()/rows() are new variables with no autograd history.
#pragma once
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "engine/device.h"
#include "engine/dtype.h"
#include "engine/error.h"

namespace clipcu {

using Shape = std::vector<int64_t>;
std::string shape_str(const Shape& s);  // "[5, 3, 32, 32]"
int64_t shape_numel(const Shape& s);

class Rng;

// Owns (or borrows, with a keep-alive) a block of memory on one device.
struct Storage {
  void* data = nullptr;
  size_t bytes = 0;
  Device device;
  std::shared_ptr<void> keep_alive;  // set when borrowing (e.g. an mmap'd file): nothing is freed here
  Storage(size_t bytes, Device d);
  Storage(void* borrowed, size_t bytes, Device d, std::shared_ptr<void> keep_alive);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
};

class Tensor;
struct AutogradMeta {
  bool requires_grad = false;
  std::shared_ptr<Tensor> grad;  // same shape, dtype and device as the tensor; created on first use
  std::string name;              // module path ("visual.transformer.resblocks.3.attn.out"), may be empty
};

class Tensor {
 public:
  Tensor() = default;  // undefined tensor (defined() == false): an absent optional argument

  // ---- factories (contiguous, new storage)
  static Tensor empty(const Shape& shape, DType dtype = DType::F32, Device device = Device::cpu());
  static Tensor zeros(const Shape& shape, DType dtype = DType::F32, Device device = Device::cpu());
  static Tensor ones(const Shape& shape, DType dtype = DType::F32, Device device = Device::cpu());
  static Tensor full(const Shape& shape, double value, DType dtype = DType::F32, Device device = Device::cpu());
  // 0, 1, 2, ... in row-major order
  static Tensor arange(const Shape& shape, DType dtype = DType::F32, Device device = Device::cpu());
  // Normal(mean, std) / Uniform[lo, hi) from the engine's seeded RNG, drawn in float64 then stored.
  static Tensor randn(const Shape& shape, Rng& rng, double mean = 0.0, double std = 1.0, DType dtype = DType::F32);
  static Tensor uniform(const Shape& shape, Rng& rng, double lo, double hi, DType dtype = DType::F32);
  // Copies host values (converted to dtype).
  static Tensor from_vector(const std::vector<float>& v, const Shape& shape, DType dtype = DType::F32);
  static Tensor from_vector(const std::vector<double>& v, const Shape& shape, DType dtype = DType::F64);
  static Tensor from_ints(const std::vector<int64_t>& v, const Shape& shape, DType dtype = DType::I64);
  // Wraps memory owned elsewhere; keep_alive holds that owner while any view lives.
  static Tensor borrow(void* data, const Shape& shape, DType dtype, Device device, std::shared_ptr<void> keep_alive);

  // ---- metadata
  bool defined() const { return storage_ != nullptr; }
  const Shape& shape() const { return shape_; }
  int64_t dim() const { return int64_t(shape_.size()); }
  int64_t size(int64_t d) const;  // negative d counts from the end
  int64_t numel() const { return shape_numel(shape_); }
  size_t nbytes() const { return size_t(numel()) * dtype_size(dtype_); }
  DType dtype() const { return dtype_; }
  Device device() const;
  std::string str() const;  // "F32[5, 3] cpu"

  // ---- data access (checks the element type against T)
  template <class T> T* data();
  template <class T> const T* data() const;
  void* raw() { return static_cast<char*>(storage_->data) + offset_; }
  const void* raw() const { return static_cast<const char*>(storage_->data) + offset_; }

  // ---- copies and views
  Tensor to(DType dtype) const;    // a copy converted (same object when the type already matches);
                                   // F32 <-> BF16 on a CUDA device runs a conversion kernel
  Tensor to(Device device) const;  // a copy on another device (same object when already there)
  Tensor clone() const;            // a deep copy with no autograd history
  Tensor view(const Shape& shape) const;  // same storage, new shape (one -1 allowed); no autograd
  Tensor rows(int64_t start, int64_t count) const;  // rows [start, start+count) along dim 0; no autograd
  void copy_from(const Tensor& src);  // same shape; converts dtype and moves across devices
  void fill(double value);
  void zero();
  std::vector<float> to_f32_vector() const;
  std::vector<double> to_f64_vector() const;
  std::vector<int64_t> to_i64_vector() const;
  double item() const;  // a one-element tensor's value

  // ---- autograd
  bool requires_grad() const { return meta_ && meta_->requires_grad; }
  Tensor& set_requires_grad(bool r);
  bool has_grad() const { return meta_ && meta_->grad && meta_->grad->defined(); }
  Tensor grad() const;         // undefined when no gradient has been accumulated
  Tensor& grad_buffer();       // the gradient, allocated as zeros on first use
  void zero_grad();            // drops the gradient (freed, recreated as zeros on next use)
  const std::string& name() const;
  Tensor& set_name(const std::string& n);
  // Identity of the variable (shared by copies of the handle, not by views).
  const void* id() const { return meta_.get(); }

 private:
  std::shared_ptr<Storage> storage_;
  size_t offset_ = 0;  // bytes
  Shape shape_;
  DType dtype_ = DType::F32;
  std::shared_ptr<AutogradMeta> meta_;
  void ensure_meta();
};

template <class T> constexpr DType dtype_of();
template <> constexpr DType dtype_of<float>() { return DType::F32; }
template <> constexpr DType dtype_of<double>() { return DType::F64; }
template <> constexpr DType dtype_of<int32_t>() { return DType::I32; }
template <> constexpr DType dtype_of<int64_t>() { return DType::I64; }
template <> constexpr DType dtype_of<uint8_t>() { return DType::U8; }

template <class T> T* Tensor::data() {
  CLIPCU_CHECK(defined(), "data() of an undefined tensor");
  if constexpr (std::is_same_v<T, uint16_t>) {
    CLIPCU_CHECK(dtype_ == DType::BF16 || dtype_ == DType::F16, "tensor " << str() << " is not 16-bit");
  } else {
    CLIPCU_CHECK(dtype_ == dtype_of<T>(), "tensor " << str() << " accessed as " << dtype_name(dtype_of<T>()));
  }
  return static_cast<T*>(raw());
}
template <class T> const T* Tensor::data() const { return const_cast<Tensor*>(this)->data<T>(); }

// Checks a tensor's shape, naming the op, the argument and both shapes. -1 in `expect` matches anything.
void check_shape(const Tensor& t, const Shape& expect, const char* op, const char* arg);

}  // namespace clipcu
