// CPU elementwise add / mul / scale with suffix broadcasting (see elementwise.h).
//
// Forward and the elementwise parts of backward are one pass over [outer, inner], split across
// threads by OpenMP when the array is large enough to pay for the threads. The reduction over
// the broadcast rows (the gradient of b) cuts the rows into fixed chunks that depend only on R
// (never on the thread count); each chunk sums its rows into its own float64 partial, threads
// take whole chunks, and the partials are then added in chunk order. So the result is the same
// bits on every run and every thread count.
#include "kernels/cpu/elementwise.h"

#include <algorithm>
#include <vector>

namespace clipcu::cpu {

namespace {

// Below this many elements the thread start-up costs more than the loop.
constexpr int64_t kParallelMin = 1 << 15;

// out[i] += sum over r of term(r, i) (a float64 value), deterministic as described above.
template <class T, class Term>
void reduce_rows(int64_t R, int64_t C, Term term, T* out) {  // out: [C]
  if (R <= 0 || C <= 0) return;
  const int64_t rows_per_chunk = std::max<int64_t>(64, (R + 255) / 256);
  const int64_t chunks = (R + rows_per_chunk - 1) / rows_per_chunk;
  std::vector<double> partial(size_t(chunks * C), 0.0);  // [chunks, C]
#pragma omp parallel for schedule(static) if (R * C >= kParallelMin)
  for (int64_t ch = 0; ch < chunks; ++ch) {
    double* p = partial.data() + ch * C;
    const int64_t r1 = std::min(R, (ch + 1) * rows_per_chunk);
    for (int64_t r = ch * rows_per_chunk; r < r1; ++r)
      for (int64_t i = 0; i < C; ++i) p[i] += term(r, i);
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
#pragma omp parallel for schedule(static) if (outer * inner >= kParallelMin)
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t i = 0; i < inner; ++i) y[o * inner + i] = a[o * inner + i] + b[i];
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
#pragma omp parallel for schedule(static) if (outer * inner >= kParallelMin)
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t i = 0; i < inner; ++i) y[o * inner + i] = a[o * inner + i] * b[i];
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
#pragma omp parallel for schedule(static) if (outer * inner >= kParallelMin)
    for (int64_t o = 0; o < outer; ++o)
      for (int64_t i = 0; i < inner; ++i) da[o * inner + i] += dy[o * inner + i] * b[i];
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
  template void sum_rows<T>(int64_t, int64_t, const T*, T*);
CLIPCU_INSTANTIATE(float)
CLIPCU_INSTANTIATE(double)
#undef CLIPCU_INSTANTIATE

}  // namespace clipcu::cpu
