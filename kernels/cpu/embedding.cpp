// CPU embedding: a row copy per position forward; a bucketed, row-owned scatter-add backward.
//
// Parallelisation: forward, OpenMP over positions (each writes its own output row). Backward,
// a serial counting sort of the positions by id (O(N + V)), then OpenMP over table rows: a
// thread owns whole rows of grad_table and walks their positions in increasing order, so there
// are no atomics and the sum order is fixed (deterministic for any thread count).
#include "kernels/cpu/embedding.h"

#include <cstring>
#include <sstream>
#include <vector>

#include "engine/error.h"

namespace clipcu::cpu {

namespace {
constexpr int64_t kParallelMin = 1 << 15;  // elements below which threads cost more than they save
}

template <class I>
void embedding_check_ids(int64_t N, int64_t V, const I* ids) {
  for (int64_t n = 0; n < N; ++n) {
    if (ids[n] < 0 || int64_t(ids[n]) >= V) {
      std::ostringstream m;
      m << "embedding: id " << int64_t(ids[n]) << " at position " << n << " is out of range [0, V=" << V << ")";
      throw Error(m.str());
    }
  }
}

template <class T, class I>
void embedding_forward(int64_t N, int64_t V, int64_t C, const T* table, const I* ids, T* out) {
  embedding_check_ids(N, V, ids);
  if (C == 0) return;
#pragma omp parallel for if (N * C > kParallelMin)
  for (int64_t n = 0; n < N; ++n) std::memcpy(out + n * C, table + int64_t(ids[n]) * C, size_t(C) * sizeof(T));
}

template <class T, class I>
void embedding_backward(int64_t N, int64_t V, int64_t C, const I* ids, const T* grad_out, T* grad_table) {
  embedding_check_ids(N, V, ids);
  if (N == 0 || C == 0) return;
  // counting sort: start[v] .. start[v+1] index the positions of id v in `order`, ascending
  std::vector<int64_t> start(static_cast<size_t>(V) + 1, 0), order(static_cast<size_t>(N));
  for (int64_t n = 0; n < N; ++n) ++start[size_t(ids[n]) + 1];
  for (int64_t v = 0; v < V; ++v) start[size_t(v) + 1] += start[size_t(v)];
  {
    std::vector<int64_t> fill(start.begin(), start.end() - 1);
    for (int64_t n = 0; n < N; ++n) order[size_t(fill[size_t(ids[n])]++)] = n;
  }
#pragma omp parallel for schedule(dynamic, 64) if (N * C > kParallelMin)
  for (int64_t v = 0; v < V; ++v) {
    const int64_t b = start[size_t(v)], e = start[size_t(v) + 1];
    if (b == e) continue;
    T* g = grad_table + v * C;
    for (int64_t k = b; k < e; ++k) {
      const T* s = grad_out + order[size_t(k)] * C;
      for (int64_t c = 0; c < C; ++c) g[c] += s[c];
    }
  }
}

#define CLIPCU_EMB(T, I)                                                                    \
  template void embedding_forward<T, I>(int64_t, int64_t, int64_t, const T*, const I*, T*); \
  template void embedding_backward<T, I>(int64_t, int64_t, int64_t, const I*, const T*, T*);
CLIPCU_EMB(float, int32_t)
CLIPCU_EMB(float, int64_t)
CLIPCU_EMB(double, int32_t)
CLIPCU_EMB(double, int64_t)
#undef CLIPCU_EMB
template void embedding_check_ids<int32_t>(int64_t, int64_t, const int32_t*);
template void embedding_check_ids<int64_t>(int64_t, int64_t, const int64_t*);

}  // namespace clipcu::cpu
