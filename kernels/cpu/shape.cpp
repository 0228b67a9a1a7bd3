// CPU data-movement kernels (see shape.h for the [outer, D, inner] view of a dimension).
//
// permute first simplifies the permutation (drops size-1 dims, merges dims that stay adjacent)
// and then takes one of three paths: whole contiguous rows (memcpy, e.g. head splits that keep
// D last), a batch of 2-d transposes done in 16 x 16 tiles (e.g. [B, C, HW] -> [B, HW, C]), or
// a strided gather per output row (anything else).
//
// Parallelisation: OpenMP over independent output rows (permute: rows or transpose tiles;
// slices/concats: the outer index; gather: the batch row; mean: the outer index),
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
constexpr int64_t kParallelMin = 1 << 16;  // elements below which waking a thread costs more than it saves

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

namespace {

// A permutation reduced to its essentials: output dims of size 1 dropped and runs of output
// dims that are also consecutive (in the same order) in the input merged into one dim, so that
// [B, T, H, D] -> [B, H, T, D] is a 4-d problem with contiguous rows of D, [B, C, HW] ->
// [B, HW, C] a batch of 2-d transposes, and an identity permutation a single flat copy.
struct Perm {
  static constexpr int kMax = 8;
  int nd = 0;
  int64_t shape[kMax];   // output shape after merging
  int64_t stride[kMax];  // step in x for a step along each merged output dim
};

Perm simplify(int ndim, const int64_t* shape, const int* dims) {
  int64_t in_stride[Perm::kMax];
  int64_t s = 1;
  for (int k = ndim - 1; k >= 0; --k) {
    in_stride[k] = s;
    s *= shape[k];
  }
  Perm p;
  for (int k = 0; k < ndim; ++k) {
    const int64_t n = shape[dims[k]], st = in_stride[dims[k]];
    if (n == 1) continue;
    if (p.nd > 0 && p.stride[p.nd - 1] == n * st) {  // continues the previous dim in x
      p.shape[p.nd - 1] *= n;
      p.stride[p.nd - 1] = st;
    } else {
      p.shape[p.nd] = n;
      p.stride[p.nd] = st;
      ++p.nd;
    }
  }
  return p;
}

template <class T, bool Accumulate>
void copy_run(int64_t n, const T* __restrict src, T* __restrict dst) {
  if constexpr (Accumulate) {
    for (int64_t j = 0; j < n; ++j) dst[j] += src[j];
  } else {
    std::memcpy(dst, src, size_t(n) * sizeof(T));
  }
}

// Offset in x of the first element of output row r (the row index over all output dims but the
// last `skip` ones).
int64_t row_offset(const Perm& p, int64_t r, int skip) {
  int64_t off = 0;
  for (int k = p.nd - 1 - skip; k >= 0; --k) {
    off += (r % p.shape[k]) * p.stride[k];
    r /= p.shape[k];
  }
  return off;
}

template <class T, bool Accumulate>
void permute_impl(const Perm& p, int64_t n, const T* x, T* y) {
  if (p.nd == 0 || (p.nd == 1 && p.stride[0] == 1)) {  // nothing moves: one flat copy
    constexpr int64_t kChunk = 1 << 14;
    const int64_t chunks = (n + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(static) if (n > kParallelMin)
    for (int64_t c = 0; c < chunks; ++c) {
      const int64_t i0 = c * kChunk;
      copy_run<T, Accumulate>(std::min(kChunk, n - i0), x + i0, y + i0);
    }
    return;
  }
  const int64_t last = p.shape[p.nd - 1];
  if (p.stride[p.nd - 1] == 1) {
    // Rows of the output are contiguous runs of x: copy them whole.
    const int64_t rows = n / last;
#pragma omp parallel for schedule(static) if (n > kParallelMin)
    for (int64_t r = 0; r < rows; ++r) copy_run<T, Accumulate>(last, x + row_offset(p, r, 1), y + r * last);
    return;
  }
  // The last output dim is strided in x. When the dim contiguous in x is the second to last
  // of the output, this is a batch of 2-d transposes ([B, C, HW] -> [B, HW, C]).
  int a = -1;
  for (int k = 0; k < p.nd - 1; ++k)
    if (p.stride[k] == 1) a = k;
  if (a == p.nd - 2) {
    // y[..., i, j] = x[... + i + j * sj]: a batch of transposes of [last, A] blocks of x into
    // [A, last] blocks of y, done in square tiles so both reads and writes stay in cache lines.
    constexpr int64_t kTile = 16;
    const int64_t A = p.shape[p.nd - 2], sj = p.stride[p.nd - 1];
    const int64_t batches = n / (A * last);
    const int64_t ti = (A + kTile - 1) / kTile, tj = (last + kTile - 1) / kTile;
#pragma omp parallel for schedule(static) if (n > kParallelMin)
    for (int64_t t = 0; t < batches * ti; ++t) {
      const int64_t b = t / ti, i0 = (t % ti) * kTile, i1 = std::min(A, i0 + kTile);
      const T* xb = x + row_offset(p, b, 2);
      T* yb = y + b * A * last;
      for (int64_t jt = 0; jt < tj; ++jt) {
        const int64_t j0 = jt * kTile, j1 = std::min(last, j0 + kTile);
        for (int64_t i = i0; i < i1; ++i) {
          T* yr = yb + i * last;
          const T* xc = xb + i;
          if constexpr (Accumulate) {
            for (int64_t j = j0; j < j1; ++j) yr[j] += xc[j * sj];
          } else {
            for (int64_t j = j0; j < j1; ++j) yr[j] = xc[j * sj];
          }
        }
      }
    }
    return;
  }
  // General case: each output row gathered with a stride.
  const int64_t rows = n / last, sl = p.stride[p.nd - 1];
#pragma omp parallel for schedule(static) if (n > kParallelMin)
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + row_offset(p, r, 1);
    T* yr = y + r * last;
    if constexpr (Accumulate) {
      for (int64_t j = 0; j < last; ++j) yr[j] += xr[j * sl];
    } else {
      for (int64_t j = 0; j < last; ++j) yr[j] = xr[j * sl];
    }
  }
}

}  // namespace

template <class T>
void permute(int ndim, const int64_t* shape, const int* dims, const T* x, T* y, bool accumulate) {
  if (ndim < 0 || ndim > Perm::kMax) {
    std::ostringstream m;
    m << "cpu::permute: " << ndim << " dimensions (at most " << Perm::kMax << ")";
    throw Error(m.str());
  }
  int64_t n = 1;
  for (int k = 0; k < ndim; ++k) n *= shape[k];
  if (n == 0) return;
  const Perm p = simplify(ndim, shape, dims);
  if (accumulate) {
    permute_impl<T, true>(p, n, x, y);
  } else {
    permute_impl<T, false>(p, n, x, y);
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

// The head layouts move rows of D contiguous elements: one task per (b, t) token row, which
// touches 3 H rows of qkv (or H rows of y) and the matching rows of q, k, v (or x).
template <class T>
void split_qkv_heads_forward(int64_t B, int64_t Tn, int64_t H, int64_t D, const T* qkv, T* q, T* k, T* v) {
  T* parts[3] = {q, k, v};
#pragma omp parallel for schedule(static) if (B * Tn * 3 * H * D > kParallelMin)
  for (int64_t bt = 0; bt < B * Tn; ++bt) {
    const int64_t b = bt / Tn, t = bt % Tn;
    for (int64_t p = 0; p < 3; ++p)
      for (int64_t h = 0; h < H; ++h)
        copy_run<T, false>(D, qkv + ((bt * 3 + p) * H + h) * D, parts[p] + ((b * H + h) * Tn + t) * D);
  }
}

template <class T>
void split_qkv_heads_backward(int64_t B, int64_t Tn, int64_t H, int64_t D, const T* dq, const T* dk, const T* dv,
                              T* dqkv) {
  const T* parts[3] = {dq, dk, dv};
#pragma omp parallel for schedule(static) if (B * Tn * 3 * H * D > kParallelMin)
  for (int64_t bt = 0; bt < B * Tn; ++bt) {
    const int64_t b = bt / Tn, t = bt % Tn;
    for (int64_t p = 0; p < 3; ++p) {
      if (!parts[p]) continue;
      for (int64_t h = 0; h < H; ++h)
        copy_run<T, true>(D, parts[p] + ((b * H + h) * Tn + t) * D, dqkv + ((bt * 3 + p) * H + h) * D);
    }
  }
}

template <class T>
void merge_heads_forward(int64_t B, int64_t H, int64_t Tn, int64_t D, const T* x, T* y) {
#pragma omp parallel for schedule(static) if (B * Tn * H * D > kParallelMin)
  for (int64_t bt = 0; bt < B * Tn; ++bt) {
    const int64_t b = bt / Tn, t = bt % Tn;
    for (int64_t h = 0; h < H; ++h) copy_run<T, false>(D, x + ((b * H + h) * Tn + t) * D, y + (bt * H + h) * D);
  }
}

template <class T>
void merge_heads_backward(int64_t B, int64_t H, int64_t Tn, int64_t D, const T* gy, T* gx) {
#pragma omp parallel for schedule(static) if (B * Tn * H * D > kParallelMin)
  for (int64_t bt = 0; bt < B * Tn; ++bt) {
    const int64_t b = bt / Tn, t = bt % Tn;
    for (int64_t h = 0; h < H; ++h) copy_run<T, true>(D, gy + (bt * H + h) * D, gx + ((b * H + h) * Tn + t) * D);
  }
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
  template void sum_all_backward<T>(int64_t, T, T*);                                                       \
  template void split_qkv_heads_forward<T>(int64_t, int64_t, int64_t, int64_t, const T*, T*, T*, T*);      \
  template void split_qkv_heads_backward<T>(int64_t, int64_t, int64_t, int64_t, const T*, const T*, const T*, \
                                            T*);                                                           \
  template void merge_heads_forward<T>(int64_t, int64_t, int64_t, int64_t, const T*, T*);                   \
  template void merge_heads_backward<T>(int64_t, int64_t, int64_t, int64_t, const T*, T*);
CLIPCU_SHAPE_T(float)
CLIPCU_SHAPE_T(double)
#undef CLIPCU_SHAPE_T
template void check_row_indices<int32_t>(const char*, int64_t, int64_t, const int32_t*);
template void check_row_indices<int64_t>(const char*, int64_t, int64_t, const int64_t*);

}  // namespace clipcu::cpu
