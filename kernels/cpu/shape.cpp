// CPU data-movement kernels (see shape.h for the [outer, D, inner] view of a dimension).
//
// Parallelisation: OpenMP over independent output rows (permute: rows of the output's last
// dimension; slices/concats: the outer index; gather: the batch row; mean: the outer index),
// switched on only past a size where threads pay for themselves. Every output element has one
// owner, so there are no races, and every reduction runs in a fixed order (float64 partial sums
// over fixed-size chunks for sum_all), so results do not depend on the thread count.
#include "kernels/cpu/shape.h"

#include <algorithm>
#include <cstring>
#include <sstream>
#include <vector>

#include "engine/error.h"

namespace clipcu::cpu {

namespace {
constexpr int64_t kParallelMin = 1 << 15;  // elements below which threads cost more than they save

// dst[o, dst_start + j, i] (=|+=) src[o, src_start + j, i] for j < len: the one block copy that
// slices and concatenations are made of.
template <class T, bool Accumulate>
void block_copy(int64_t outer, int64_t inner, int64_t len, const T* src, int64_t src_D, int64_t src_start, T* dst,
                int64_t dst_D, int64_t dst_start) {
  const int64_t run = len * inner;  // contiguous elements per outer index
#pragma omp parallel for if (outer * run > kParallelMin)
  for (int64_t o = 0; o < outer; ++o) {
    const T* s = src + (o * src_D + src_start) * inner;
    T* d = dst + (o * dst_D + dst_start) * inner;
    if constexpr (Accumulate) {
      for (int64_t k = 0; k < run; ++k) d[k] += s[k];
    } else {
      if (run > 0) std::memcpy(d, s, size_t(run) * sizeof(T));
    }
  }
}
}  // namespace

template <class T>
void accumulate(int64_t n, const T* src, T* dst) {
#pragma omp parallel for if (n > kParallelMin)
  for (int64_t k = 0; k < n; ++k) dst[k] += src[k];
}

template <class T>
void permute(int ndim, const int64_t* shape, const int* dims, const T* x, T* y, bool accumulate) {
  constexpr int kMaxDims = 8;
  if (ndim < 0 || ndim > kMaxDims) {
    std::ostringstream m;
    m << "cpu::permute: " << ndim << " dimensions (at most " << kMaxDims << ")";
    throw Error(m.str());
  }
  if (ndim == 0) {
    y[0] = accumulate ? y[0] + x[0] : x[0];
    return;
  }
  int64_t in_stride[kMaxDims], out_shape[kMaxDims], src_stride[kMaxDims];
  int64_t s = 1;
  for (int k = ndim - 1; k >= 0; --k) {
    in_stride[k] = s;
    s *= shape[k];
  }
  const int64_t n = s;
  for (int k = 0; k < ndim; ++k) {
    out_shape[k] = shape[dims[k]];
    src_stride[k] = in_stride[dims[k]];  // step in x for a step along output dim k
  }
  const int64_t last = out_shape[ndim - 1];
  const int64_t last_stride = src_stride[ndim - 1];
  if (n == 0) return;
  const int64_t rows = n / last;
#pragma omp parallel for if (n > kParallelMin)
  for (int64_t r = 0; r < rows; ++r) {
    // decompose the output row index into the output's leading indices -> offset in x
    int64_t rem = r, off = 0;
    for (int k = ndim - 2; k >= 0; --k) {
      int64_t idx = rem % out_shape[k];
      rem /= out_shape[k];
      off += idx * src_stride[k];
    }
    T* yr = y + r * last;
    if (accumulate) {
      for (int64_t j = 0; j < last; ++j) yr[j] += x[off + j * last_stride];
    } else {
      for (int64_t j = 0; j < last; ++j) yr[j] = x[off + j * last_stride];
    }
  }
}

template <class T>
void slice_forward(int64_t outer, int64_t D, int64_t inner, int64_t start, int64_t len, const T* x, T* y) {
  block_copy<T, false>(outer, inner, len, x, D, start, y, len, 0);
}
template <class T>
void slice_backward(int64_t outer, int64_t D, int64_t inner, int64_t start, int64_t len, const T* gy, T* gx) {
  block_copy<T, true>(outer, inner, len, gy, len, 0, gx, D, start);
}
template <class T>
void concat_forward_part(int64_t outer, int64_t D, int64_t inner, int64_t start, int64_t len, const T* x, T* y) {
  block_copy<T, false>(outer, inner, len, x, len, 0, y, D, start);
}
template <class T>
void concat_backward_part(int64_t outer, int64_t D, int64_t inner, int64_t start, int64_t len, const T* gy, T* gx) {
  block_copy<T, true>(outer, inner, len, gy, D, start, gx, len, 0);
}

template <class I>
void check_row_indices(const char* op, int64_t B, int64_t T, const I* index) {
  // serial and before any write: an exception must not leave an OpenMP region
  for (int64_t b = 0; b < B; ++b) {
    if (index[b] < 0 || int64_t(index[b]) >= T) {
      std::ostringstream m;
      m << op << ": index " << int64_t(index[b]) << " at row " << b << " is out of range [0, " << T << ")";
      throw Error(m.str());
    }
  }
}

template <class T, class I>
void gather_rows_forward(int64_t B, int64_t Tn, int64_t C, const T* x, const I* index, T* y) {
  check_row_indices("gather_rows", B, Tn, index);
#pragma omp parallel for if (B * C > kParallelMin)
  for (int64_t b = 0; b < B; ++b) {
    if (C > 0) std::memcpy(y + b * C, x + (b * Tn + int64_t(index[b])) * C, size_t(C) * sizeof(T));
  }
}

template <class T, class I>
void gather_rows_backward(int64_t B, int64_t Tn, int64_t C, const I* index, const T* gy, T* gx) {
  check_row_indices("gather_rows backward", B, Tn, index);
#pragma omp parallel for if (B * C > kParallelMin)
  for (int64_t b = 0; b < B; ++b) {
    T* d = gx + (b * Tn + int64_t(index[b])) * C;
    const T* s = gy + b * C;
    for (int64_t c = 0; c < C; ++c) d[c] += s[c];
  }
}

template <class T>
void mean_forward(int64_t outer, int64_t D, int64_t inner, const T* x, T* y) {
  const double inv = D > 0 ? 1.0 / double(D) : 0.0;
#pragma omp parallel for if (outer * D * inner > kParallelMin)
  for (int64_t o = 0; o < outer; ++o) {
    std::vector<double> acc(size_t(inner), 0.0);
    for (int64_t d = 0; d < D; ++d) {
      const T* xr = x + (o * D + d) * inner;
      for (int64_t i = 0; i < inner; ++i) acc[size_t(i)] += double(xr[i]);
    }
    for (int64_t i = 0; i < inner; ++i) y[o * inner + i] = T(acc[size_t(i)] * inv);
  }
}

template <class T>
void mean_backward(int64_t outer, int64_t D, int64_t inner, const T* gy, T* gx) {
  const T inv = D > 0 ? T(1.0 / double(D)) : T(0);
#pragma omp parallel for if (outer * D * inner > kParallelMin)
  for (int64_t o = 0; o < outer; ++o) {
    for (int64_t d = 0; d < D; ++d) {
      T* g = gx + (o * D + d) * inner;
      const T* s = gy + o * inner;
      for (int64_t i = 0; i < inner; ++i) g[i] += s[i] * inv;
    }
  }
}

template <class T>
T sum_all_forward(int64_t n, const T* x) {
  // fixed-size chunks, partial sums in float64, combined in chunk order: the same bits for
  // every thread count
  constexpr int64_t kChunk = 4096;
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  std::vector<double> part(size_t(chunks), 0.0);
#pragma omp parallel for if (n > kParallelMin)
  for (int64_t c = 0; c < chunks; ++c) {
    double acc = 0.0;
    const int64_t end = std::min(n, (c + 1) * kChunk);
    for (int64_t k = c * kChunk; k < end; ++k) acc += double(x[k]);
    part[size_t(c)] = acc;
  }
  double total = 0.0;
  for (double p : part) total += p;
  return T(total);
}

template <class T>
void sum_all_backward(int64_t n, T gy, T* gx) {
#pragma omp parallel for if (n > kParallelMin)
  for (int64_t k = 0; k < n; ++k) gx[k] += gy;
}

#define CLIPCU_SHAPE_T(T)                                                                                  \
  template void accumulate<T>(int64_t, const T*, T*);                                                      \
  template void permute<T>(int, const int64_t*, const int*, const T*, T*, bool);                           \
  template void slice_forward<T>(int64_t, int64_t, int64_t, int64_t, int64_t, const T*, T*);               \
  template void slice_backward<T>(int64_t, int64_t, int64_t, int64_t, int64_t, const T*, T*);              \
  template void concat_forward_part<T>(int64_t, int64_t, int64_t, int64_t, int64_t, const T*, T*);         \
  template void concat_backward_part<T>(int64_t, int64_t, int64_t, int64_t, int64_t, const T*, T*);        \
  template void gather_rows_forward<T, int32_t>(int64_t, int64_t, int64_t, const T*, const int32_t*, T*);  \
  template void gather_rows_forward<T, int64_t>(int64_t, int64_t, int64_t, const T*, const int64_t*, T*);  \
  template void gather_rows_backward<T, int32_t>(int64_t, int64_t, int64_t, const int32_t*, const T*, T*); \
  template void gather_rows_backward<T, int64_t>(int64_t, int64_t, int64_t, const int64_t*, const T*, T*); \
  template void mean_forward<T>(int64_t, int64_t, int64_t, const T*, T*);                                  \
  template void mean_backward<T>(int64_t, int64_t, int64_t, const T*, T*);                                 \
  template T sum_all_forward<T>(int64_t, const T*);                                                        \
  template void sum_all_backward<T>(int64_t, T, T*);
CLIPCU_SHAPE_T(float)
CLIPCU_SHAPE_T(double)
#undef CLIPCU_SHAPE_T
template void check_row_indices<int32_t>(const char*, int64_t, int64_t, const int32_t*);
template void check_row_indices<int64_t>(const char*, int64_t, int64_t, const int64_t*);

}  // namespace clipcu::cpu
