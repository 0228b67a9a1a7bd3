// Helpers shared by the kernel-level GPU tests (tests/test_cuda_ops.cpp, tests/test_cuda_conv.cpp):
// device buffers from the engine's allocator, host <-> device copies of float64 values rounded
// to the storage type, norm-wise relative errors. Reference values are float64 computed on the
// values the GPU holds (stored<T>), so a difference is the GPU's arithmetic and output rounding.
#pragma once
#ifdef CLIPCU_WITH_CUDA
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#include "engine/cuda_runtime.h"
#include "engine/device.h"
#include "engine/dtype.h"
#include "engine/rng.h"
#include "kernels/cuda/common/types.h"
#include "tests/support.h"

namespace clipcu::test::gpu {

using cuda::bf16;

// Norm-wise relative error bounds: float32 forward / gradients (the golden README's), TF32 tensor
// cores, bf16 storage.
constexpr double kF32Fwd = 1e-5;
constexpr double kF32Grad = 1e-4;
constexpr double kTf32 = 2e-3;
constexpr double kBf16 = 1e-2;

// CLIPCU_TEST_SMALL=1 (the sanitizer runs of tools/device-check.sh): the smaller shapes only.
inline bool small_run() {
  const char* v = std::getenv("CLIPCU_TEST_SMALL");
  return v && *v && std::string(v) != "0";
}
template <class V>
std::vector<V> maybe_small(std::vector<V> all, size_t keep) {
  if (small_run() && all.size() > keep) all.resize(keep);
  return all;
}

template <class T>
const char* type_name() {
  return std::is_same_v<T, float> ? "f32" : "bf16";
}

// Device memory from the engine's allocator (so the caching allocator is exercised too).
template <class T>
class DevBuf {
 public:
  explicit DevBuf(size_t n) : n_(n) {
    ptr_ = static_cast<T*>(device_alloc(Device::cuda(0), std::max<size_t>(n, 1) * sizeof(T)));
  }
  ~DevBuf() { device_free(Device::cuda(0), ptr_); }
  DevBuf(DevBuf&& o) noexcept : ptr_(o.ptr_), n_(o.n_) { o.ptr_ = nullptr; }
  DevBuf(const DevBuf&) = delete;
  DevBuf& operator=(const DevBuf&) = delete;
  DevBuf& operator=(DevBuf&&) = delete;
  T* get() const { return ptr_; }
  size_t size() const { return n_; }

 private:
  T* ptr_ = nullptr;
  size_t n_ = 0;
};

// The value a double becomes when stored as T.
template <class T>
double stored(double x) {
  if constexpr (std::is_same_v<T, float>) {
    return double(float(x));
  } else {
    return double(bf16_to_f32(f32_to_bf16(float(x))));
  }
}
template <class T>
std::vector<double> stored(std::vector<double> v) {
  for (double& x : v) x = stored<T>(x);
  return v;
}

// dst[0 .. v.size()) = v converted to T (synchronous copy).
template <class T>
void write(T* dst, const std::vector<double>& v) {
  if (v.empty()) return;
  if constexpr (std::is_same_v<T, float>) {
    std::vector<float> h(v.begin(), v.end());
    device_copy(dst, Device::cuda(0), h.data(), Device::cpu(), h.size() * sizeof(float));
  } else if constexpr (std::is_same_v<T, bf16>) {
    std::vector<uint16_t> h(v.size());
    for (size_t i = 0; i < v.size(); ++i) h[i] = f32_to_bf16(float(v[i]));
    device_copy(dst, Device::cuda(0), h.data(), Device::cpu(), h.size() * sizeof(uint16_t));
  } else {
    std::vector<T> h(v.size());
    for (size_t i = 0; i < v.size(); ++i) h[i] = T(v[i]);
    device_copy(dst, Device::cuda(0), h.data(), Device::cpu(), h.size() * sizeof(T));
  }
}

template <class T>
DevBuf<T> upload(const std::vector<double>& v) {
  DevBuf<T> b(v.size());
  write(b.get(), v);
  return b;
}

// Waits for the current stream (reporting a kernel fault here), then copies n values back.
template <class T>
std::vector<double> read(const T* src, size_t n) {
  cuda::synchronize();
  std::vector<double> out(n);
  if (n == 0) return out;
  if constexpr (std::is_same_v<T, float>) {
    std::vector<float> h(n);
    device_copy(h.data(), Device::cpu(), src, Device::cuda(0), n * sizeof(float));
    for (size_t i = 0; i < n; ++i) out[i] = h[i];
  } else if constexpr (std::is_same_v<T, bf16>) {
    std::vector<uint16_t> h(n);
    device_copy(h.data(), Device::cpu(), src, Device::cuda(0), n * sizeof(uint16_t));
    for (size_t i = 0; i < n; ++i) out[i] = bf16_to_f32(h[i]);
  } else {
    std::vector<T> h(n);
    device_copy(h.data(), Device::cpu(), src, Device::cuda(0), n * sizeof(T));
    for (size_t i = 0; i < n; ++i) out[i] = double(h[i]);
  }
  return out;
}
template <class T>
std::vector<double> read(const DevBuf<T>& b) {
  return read(b.get(), b.size());
}

inline std::vector<double> randn(size_t n, Rng& rng, double scale = 1.0) {
  std::vector<double> v(n);
  for (double& x : v) x = scale * rng.normal();
  return v;
}

// ||got - ref|| / ||ref|| (||got - ref|| when ref is all zeros; infinite on NaN).
inline double rel_err(const std::vector<double>& got, const std::vector<double>& ref) {
  double num = 0, den = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    num += (got[i] - ref[i]) * (got[i] - ref[i]);
    den += ref[i] * ref[i];
  }
  if (std::isnan(num)) return INFINITY;
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

// "0-15,32-47": the indices where `on` is set, as ranges.
inline std::string index_ranges(const std::vector<bool>& on) {
  std::ostringstream out;
  bool any = false;
  for (size_t i = 0; i < on.size();) {
    if (!on[i]) {
      ++i;
      continue;
    }
    size_t j = i;
    while (j + 1 < on.size() && on[j + 1]) ++j;
    out << (any ? "," : "") << i;
    if (j > i) out << "-" << j;
    any = true;
    i = j + 1;
  }
  return any ? out.str() : "none";
}

// For a failed comparison: where the differences are, so that one GPU run tells a layout or
// indexing fault (whole rows, columns or tiles wrong) from rounding. An element is off when
// |got - ref| > 8 tol rms(ref), or NaN. cols > 0: the values are a row-major matrix with that many
// columns (a GEMM's N, a convolution's plane); the report then names the rows and columns hit and
// their classes modulo the Hopper tiles' 64 rows and 128 columns.
inline std::string mismatch_report(const std::vector<double>& got, const std::vector<double>& ref, double tol,
                                   int64_t cols) {
  const size_t n = got.size();
  if (n == 0) return "";
  double ss = 0;
  for (double r : ref) ss += r * r;
  const double rms = std::sqrt(ss / double(n)), limit = 8 * tol * (rms > 0 ? rms : 1.0);
  const size_t nc = cols > 0 ? size_t(cols) : 0, nr = cols > 0 ? (n + nc - 1) / nc : 0;
  std::vector<bool> row_hit(nr), col_hit(nc), row_mod(64), col_mod(128);
  size_t off = 0, nan = 0;
  std::ostringstream first;
  for (size_t i = 0; i < n; ++i) {
    const bool is_nan = std::isnan(got[i]);
    if (!is_nan && std::abs(got[i] - ref[i]) <= limit) continue;
    ++off;
    nan += is_nan;
    const size_t r = nc ? i / nc : 0, c = nc ? i % nc : 0;
    if (nc) row_hit[r] = col_hit[c] = row_mod[r % 64] = col_mod[c % 128] = true;
    if (off > 6) continue;
    if (nc) {
      first << " (" << r << ", " << c << ")";
    } else {
      first << " [" << i << "]";
    }
    first << " " << got[i] << " vs " << ref[i] << ";";
  }
  std::ostringstream out;
  out << " | " << off << " of " << n << " elements off (> 8 tol rms(ref)), " << nan << " NaN";
  if (off == 0) return out.str();
  out << "; first:" << first.str();
  if (nc) {
    const auto count = [](const std::vector<bool>& v) { return std::count(v.begin(), v.end(), true); };
    out << " rows hit " << count(row_hit) << " of " << nr << ", columns hit " << count(col_hit) << " of " << nc
        << "; row % 64 hit: " << index_ranges(row_mod) << "; column % 128 hit: " << index_ranges(col_mod);
  }
  return out.str();
}

// cols: see mismatch_report (only for the message of a failure).
inline void expect_close(const std::vector<double>& got, const std::vector<double>& ref, double tol,
                         const std::string& label, WorstError& worst, int64_t cols = 0) {
  REQUIRE_MESSAGE(got.size() == ref.size(), label << ": " << got.size() << " values vs " << ref.size());
  const double e = rel_err(got, ref);
  worst.add(label, e);
  CHECK_MESSAGE(e <= tol, label << ": rel err " << e << " > tol " << tol
                                << (e <= tol ? "" : mismatch_report(got, ref, tol, cols)));
}

}  // namespace clipcu::test::gpu
#endif  // CLIPCU_WITH_CUDA
