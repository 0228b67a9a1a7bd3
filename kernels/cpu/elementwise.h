// CPU elementwise arithmetic with suffix broadcasting: add, mul, scale; forward and backward.
//
// Broadcasting is the one form the towers need: b's shape is a suffix of a's (a bias [C] onto
// [N, C], a positional embedding [T, C] onto [B, T, C]). a is then seen as [outer, inner] and b
// as [inner]; equal shapes are outer == 1. The gradient of b is a sum over the outer rows, done
// deterministically (fixed row chunks whose partial sums are added in chunk order, independent of
// the number of threads).
// Backward functions ACCUMULATE (+=) into the gradients they are given (the tape's contract);
// pass nullptr for a gradient that is not wanted.
#pragma once
#include <cstdint>

namespace clipcu::cpu {

// y[o, i] = a[o, i] + b[i]
template <class T>
void add_forward(int64_t outer, int64_t inner,
                 const T* a,  // [outer, inner]
                 const T* b,  // [inner]
                 T* y);       // [outer, inner]
// da += dy; db += sum over o of dy[o, :]
template <class T>
void add_backward(int64_t outer, int64_t inner,
                  const T* dy,  // [outer, inner]
                  T* da,        // [outer, inner] or nullptr
                  T* db);       // [inner] or nullptr

// y[o, i] = a[o, i] * b[i]
template <class T>
void mul_forward(int64_t outer, int64_t inner,
                 const T* a,  // [outer, inner]
                 const T* b,  // [inner]
                 T* y);       // [outer, inner]
// da += dy * b; db += sum over o of dy[o, :] * a[o, :]
template <class T>
void mul_backward(int64_t outer, int64_t inner,
                  const T* a,   // [outer, inner]
                  const T* b,   // [inner]
                  const T* dy,  // [outer, inner]
                  T* da,        // [outer, inner] or nullptr
                  T* db);       // [inner] or nullptr

// y = s * x (forward); dx += s * dy is add_scaled(n, s, dy, dx).
template <class T>
void scale_forward(int64_t n, T s,
                   const T* x,  // [n]
                   T* y);       // [n]

// dst += s * src
template <class T>
void add_scaled(int64_t n, T s,
                const T* src,  // [n]
                T* dst);       // [n]

// out[r, :] = row for every r < R (a bias broadcast into the rows a gemm then adds onto).
template <class T>
void fill_rows(int64_t R, int64_t C,
               const T* row,  // [C]
               T* out);       // [R, C]

// out[i] += sum over r of x[r, i], deterministic (chunked partial sums in float64, added in
// chunk order). The bias gradient of linear and of broadcast adds.
template <class T>
void sum_rows(int64_t R, int64_t C,
              const T* x,  // [R, C]
              T* out);     // [C]

}  // namespace clipcu::cpu
