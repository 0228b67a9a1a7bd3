// CPU elementwise add / mul / scale with suffix broadcasting (see elementwise.h).
//
// Forward and the elementwise parts of backward are one pass over the flat [outer * inner]
// array, cut into fixed chunks of kChunk elements that OpenMP hands to threads when the array
// is large enough to pay for the threads (a residual add has outer == 1: splitting by rows
// would leave one thread idle); within a chunk, runs of up to `inner` elements pair with b.
// The reduction over the broadcast rows (the gradient of b) cuts the rows into fixed chunks that depend only on R
// (never on the thread count); each chunk sums its rows into its own float64 partial, threads
// take whole chunks, and the partials are then added in chunk order. So the result is the same
// bits on every run and every thread count. The chunk loop is compiled twice (baseline and
// AVX2 + FMA, picked by the CPU at run time: vec_math.h); both add in the same order (FMA may
// round mul's products differently in the last bit).
#include "kernels/cpu/elementwise.h"

#include <algorithm>
#include <vector>

#include "kernels/cpu/vec_math.h"

namespace clipcu::cpu {

namespace {

// Below this many elements waking a second thread costs more than it saves (these loops move
// ~1 float per ns on one core; a passive OpenMP worker takes tens of microseconds to wake).
constexpr int64_t kParallelMin = 1 << 16;
constexpr int64_t kChunk = 1 << 14;

// f(k0, len, i0) for every run of the flat [outer, inner] array: elements k0 .. k0 + len - 1,
// which pair with b[i0 .. i0 + len - 1]. Chunks are fixed (never depend on the thread count).
template <class F>
void for_runs(int64_t outer, int64_t inner, F f) {
  const int64_t n = outer * inner;
  if (n <= 0) return;
  const int64_t chunks = (n + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t k1 = std::min(n, (c + 1) * kChunk);
    int64_t k = c * kChunk, i = k % inner;
    while (k < k1) {
      const int64_t len = std::min(k1 - k, inner - i);
      f(k, len, i);
      k += len;
      i = 0;
    }
  }
}

// Rows r0 .. r1 - 1 of a reduction into one float64 partial (inlined into a baseline and an
// AVX2 + FMA copy: the float -> double conversions and adds run 4 wide instead of 2).
template <class Term>
[[gnu::always_inline]] inline void reduce_chunk(int64_t r0, int64_t r1, int64_t C, Term term, double* p) {  // p: [C]
  for (int64_t r = r0; r < r1; ++r)
    for (int64_t i = 0; i < C; ++i) p[i] += term(r, i);
}

template <class Term>
CLIPCU_TARGET_AVX2 void reduce_chunk_avx2(int64_t r0, int64_t r1, int64_t C, Term term, double* p) {
  reduce_chunk(r0, r1, C, term, p);
}

template <class Term>
void reduce_chunk_base(int64_t r0, int64_t r1, int64_t C, Term term, double* p) {
  reduce_chunk(r0, r1, C, term, p);
}

// out[i] += sum over r of term(r, i) (a float64 value), deterministic as described above.
template <class T, class Term>
void reduce_rows(int64_t R, int64_t C, Term term, T* out) {  // out: [C]
  if (R <= 0 || C <= 0) return;
  const int64_t rows_per_chunk = std::max<int64_t>(64, (R + 255) / 256);
  const int64_t chunks = (R + rows_per_chunk - 1) / rows_per_chunk;
  std::vector<double> partial(size_t(chunks * C), 0.0);  // [chunks, C]
  const bool avx2 = cpu_has_avx2_fma();
#pragma omp parallel for schedule(static) if (R * C >= kParallelMin)
  for (int64_t ch = 0; ch < chunks; ++ch) {
    double* p = partial.data() + ch * C;
    const int64_t r0 = ch * rows_per_chunk, r1 = std::min(R, (ch + 1) * rows_per_chunk);
    if (avx2) {
      reduce_chunk_avx2(r0, r1, C, term, p);
    } else {
      reduce_chunk_base(r0, r1, C, term, p);
    }
  }
  for (int64_t i = 0; i < C; ++i) {
    double s = 0.0;
    for (int64_t ch = 0; ch < chunks; ++ch) s += partial[size_t(ch * C + i)];
    out[i] += T(s);
  }
}

}  // namespace

template <class T>
void add_forward(int64_t outer, int64_t inner,
                 const T* a,  // [outer, inner]
                 const T* b,  // [inner]
                 T* y) {      // [outer, inner]
  for_runs(outer, inner, [&](int64_t k0, int64_t len, int64_t i0) {
    const T* ak = a + k0;
    const T* bi = b + i0;
    T* yk = y + k0;
    for (int64_t j = 0; j < len; ++j) yk[j] = ak[j] + bi[j];
  });
}

template <class T>
void add_backward(int64_t outer, int64_t inner,
                  const T* dy,  // [outer, inner]
                  T* da,        // [outer, inner] or nullptr
                  T* db) {      // [inner] or nullptr
  if (da) add_scaled(outer * inner, T(1), dy, da);
  if (db) {
    if (outer == 1) {
      add_scaled(inner, T(1), dy, db);
    } else {
      sum_rows(outer, inner, dy, db);
    }
  }
}

template <class T>
void mul_forward(int64_t outer, int64_t inner,
                 const T* a,  // [outer, inner]
                 const T* b,  // [inner]
                 T* y) {      // [outer, inner]
  for_runs(outer, inner, [&](int64_t k0, int64_t len, int64_t i0) {
    const T* ak = a + k0;
    const T* bi = b + i0;
    T* yk = y + k0;
    for (int64_t j = 0; j < len; ++j) yk[j] = ak[j] * bi[j];
  });
}

template <class T>
void mul_backward(int64_t outer, int64_t inner,
                  const T* a,   // [outer, inner]
                  const T* b,   // [inner]
                  const T* dy,  // [outer, inner]
                  T* da,        // [outer, inner] or nullptr
                  T* db) {      // [inner] or nullptr
  if (db) {
    if (outer == 1) {
      for (int64_t i = 0; i < inner; ++i) db[i] += dy[i] * a[i];
    } else {
      auto term = [&](int64_t o, int64_t i) { return double(dy[o * inner + i]) * double(a[o * inner + i]); };
      reduce_rows(outer, inner, term, db);
    }
  }
  if (da) {
    for_runs(outer, inner, [&](int64_t k0, int64_t len, int64_t i0) {
      const T* g = dy + k0;
      const T* bi = b + i0;
      T* d = da + k0;
      for (int64_t j = 0; j < len; ++j) d[j] += g[j] * bi[j];
    });
  }
}

template <class T>
void scale_forward(int64_t n, T s,
                   const T* x,  // [n]
                   T* y) {      // [n]
#pragma omp parallel for simd schedule(static) if (n >= kParallelMin)
  for (int64_t i = 0; i < n; ++i) y[i] = s * x[i];
}

template <class T>
void add_scaled(int64_t n, T s,
                const T* src,  // [n]
                T* dst) {      // [n]
#pragma omp parallel for simd schedule(static) if (n >= kParallelMin)
  for (int64_t i = 0; i < n; ++i) dst[i] += s * src[i];
}

template <class T>
void fill_rows(int64_t R, int64_t C,
               const T* row,  // [C]
               T* out) {      // [R, C]
  for_runs(R, C, [&](int64_t k0, int64_t len, int64_t i0) { std::copy(row + i0, row + i0 + len, out + k0); });
}

template <class T>
void sum_rows(int64_t R, int64_t C,
              const T* x,  // [R, C]
              T* out) {    // [C]
  reduce_rows(R, C, [&](int64_t r, int64_t i) { return double(x[r * C + i]); }, out);
}

#define CLIPCU_INSTANTIATE(T)                                                       \
  template void add_forward<T>(int64_t, int64_t, const T*, const T*, T*);          \
  template void add_backward<T>(int64_t, int64_t, const T*, T*, T*);               \
  template void mul_forward<T>(int64_t, int64_t, const T*, const T*, T*);          \
  template void mul_backward<T>(int64_t, int64_t, const T*, const T*, const T*, T*, T*); \
  template void scale_forward<T>(int64_t, T, const T*, T*);                        \
  template void add_scaled<T>(int64_t, T, const T*, T*);                           \
  template void sum_rows<T>(int64_t, int64_t, const T*, T*);                       \
  template void fill_rows<T>(int64_t, int64_t, const T*, T*);
CLIPCU_INSTANTIATE(float)
CLIPCU_INSTANTIATE(double)
#undef CLIPCU_INSTANTIATE

}  // namespace clipcu::cpu
