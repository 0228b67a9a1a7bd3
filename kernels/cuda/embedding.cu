// CUDA embeddings, class-token concat and end-token gather, forward and backward (see
// embedding.cuh for the math and the contract).
//
// Parallelisation: row kernels use one block of 128 threads per output row, the threads striding
// over the C columns (coalesced). The table gradient has one block per distinct id of the batch
// (from the host-built index), which adds the gradient rows of that id's positions in increasing
// position order and then adds the sum into its table row: every table row has one owner, no
// atomics, the same bits on every run. Sums over the batch (positional and class-token
// gradients) have one thread per (t, c) looping over b in order. One variant each: these kernels
// are plain memory movement.
#include "kernels/cuda/embedding.cuh"

#include <algorithm>

#include "kernels/cuda/common/check.h"
#include "kernels/cuda/common/device.cuh"

namespace clipcu::cuda {

namespace {

constexpr int kRowThreads = 128;

template <class T, class I>
__global__ void __launch_bounds__(kRowThreads)
    embedding_fwd_kernel(int64_t Tn, int64_t V, int64_t C, const T* table, const I* ids, const T* pos, T* out,
                         int* error_flag) {
  const int64_t n = blockIdx.x;
  const int64_t id = int64_t(ids[n]);
  const bool ok = id >= 0 && id < V;
  if (!ok && error_flag && threadIdx.x == 0) *error_flag = 1;
  const T* src = table + (ok ? id : 0) * C;
  const T* p = pos ? pos + (n % Tn) * C : nullptr;
  T* dst = out + n * C;
  for (int64_t c = threadIdx.x; c < C; c += kRowThreads) {
    float v = ok ? to_float(src[c]) : 0.f;
    if (p) v += to_float(p[c]);
    dst[c] = from_float<T>(v);
  }
}

// grid: U (one block per distinct id).
template <class T>
__global__ void __launch_bounds__(kRowThreads)
    embedding_bwd_kernel(int64_t C, const int32_t* rows, const int32_t* offsets, const int32_t* positions,
                         const T* grad_out, T* grad_table) {
  const int64_t u = blockIdx.x;
  const int32_t begin = offsets[u], end = offsets[u + 1];
  T* dst = grad_table + int64_t(rows[u]) * C;
  for (int64_t c = threadIdx.x; c < C; c += kRowThreads) {
    float acc = 0.f;
    for (int32_t k = begin; k < end; ++k) acc += to_float(grad_out[int64_t(positions[k]) * C + c]);
    accumulate(dst + c, acc);
  }
}

// grad_pos[t, c] += sum_b g[b, t, c]; one thread per (t, c).
template <class T>
__global__ void positional_bwd_kernel(int64_t B, int64_t Tn, int64_t C, const T* g, T* grad_pos) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;  // over Tn * C
  if (i >= Tn * C) return;
  float acc = 0.f;
  for (int64_t b = 0; b < B; ++b) acc += to_float(g[b * Tn * C + i]);
  accumulate(grad_pos + i, acc);
}

// grid: B * (P + 1) output rows.
template <class T>
__global__ void __launch_bounds__(kRowThreads)
    class_token_fwd_kernel(int64_t P, int64_t C, const T* x, const T* cls, const T* pos, T* out) {
  const int64_t r = blockIdx.x, b = r / (P + 1), t = r % (P + 1);
  const T* src = t == 0 ? cls : x + (b * P + t - 1) * C;
  const T* p = pos ? pos + t * C : nullptr;
  T* dst = out + r * C;
  for (int64_t c = threadIdx.x; c < C; c += kRowThreads) {
    float v = to_float(src[c]);
    if (p) v += to_float(p[c]);
    dst[c] = from_float<T>(v);
  }
}

// dx[b, p] += dout[b, 1 + p]; grid: B * P rows.
template <class T>
__global__ void __launch_bounds__(kRowThreads) class_token_dx_kernel(int64_t P, int64_t C, const T* dout, T* dx) {
  const int64_t r = blockIdx.x, b = r / P, p = r % P;
  const T* src = dout + (b * (P + 1) + 1 + p) * C;
  T* dst = dx + r * C;
  for (int64_t c = threadIdx.x; c < C; c += kRowThreads) accumulate(dst + c, to_float(src[c]));
}

// dcls[c] += sum_b dout[b, 0, c]; one thread per c.
template <class T>
__global__ void class_token_dcls_kernel(int64_t B, int64_t P, int64_t C, const T* dout, T* dcls) {
  const int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= C) return;
  float acc = 0.f;
  for (int64_t b = 0; b < B; ++b) acc += to_float(dout[b * (P + 1) * C + c]);
  accumulate(dcls + c, acc);
}

// grid: B rows.
template <class T, class I>
__global__ void __launch_bounds__(kRowThreads)
    gather_fwd_kernel(int64_t Tn, int64_t C, const T* x, const I* index, T* y, int* error_flag) {
  const int64_t b = blockIdx.x;
  const int64_t t = int64_t(index[b]);
  const bool ok = t >= 0 && t < Tn;
  if (!ok && error_flag && threadIdx.x == 0) *error_flag = 1;
  const T* src = x + (b * Tn + (ok ? t : 0)) * C;
  for (int64_t c = threadIdx.x; c < C; c += kRowThreads) y[b * C + c] = ok ? src[c] : from_float<T>(0.f);
}

template <class T, class I>
__global__ void __launch_bounds__(kRowThreads)
    gather_bwd_kernel(int64_t Tn, int64_t C, const I* index, const T* gy, T* gx, int* error_flag) {
  const int64_t b = blockIdx.x;
  const int64_t t = int64_t(index[b]);
  if (t < 0 || t >= Tn) {
    if (error_flag && threadIdx.x == 0) *error_flag = 1;
    return;  // whole block
  }
  T* dst = gx + (b * Tn + t) * C;
  for (int64_t c = threadIdx.x; c < C; c += kRowThreads) accumulate(dst + c, to_float(gy[b * C + c]));
}

void check_rows(int64_t rows, const char* op) {
  CLIPCU_CUDA_REQUIRE(rows >= 0 && rows < (int64_t(1) << 31), op << ": " << rows << " rows (the grid holds < 2^31)");
}

}  // namespace

template <class T, class I>
void embedding_forward(int64_t N, int64_t Tn, int64_t V, int64_t C, const T* table, const I* ids, const T* pos,
                       T* out, int* error_flag, cudaStream_t stream) {
  check_rows(N, "embedding_forward");
  CLIPCU_CUDA_REQUIRE(C >= 1 && V >= 1 && (!pos || Tn >= 1), "embedding_forward: C " << C << " V " << V << " Tn " << Tn);
  CLIPCU_CUDA_REQUIRE(table && ids && out, "embedding_forward: a pointer is null");
  if (N == 0) return;
  embedding_fwd_kernel<T, I><<<unsigned(N), kRowThreads, 0, stream>>>(Tn > 0 ? Tn : 1, V, C, table, ids, pos, out,
                                                                     error_flag);
  CLIPCU_CUDA_CHECK_LAUNCH("embedding_fwd_kernel");
}

template <class I>
EmbeddingIndex embedding_build_index(int64_t N, int64_t V, const I* ids) {
  CLIPCU_CUDA_REQUIRE(N >= 0 && N < (int64_t(1) << 31) && V >= 1 && V < (int64_t(1) << 31),
                      "embedding_build_index: N " << N << " V " << V);
  std::vector<int32_t> count(size_t(V), 0);
  for (int64_t n = 0; n < N; ++n) {
    const int64_t id = int64_t(ids[n]);
    CLIPCU_CUDA_REQUIRE(id >= 0 && id < V, "embedding: id " << id << " at position " << n << " is outside [0, " << V << ")");
    ++count[size_t(id)];
  }
  EmbeddingIndex ix;
  std::vector<int32_t> start(size_t(V), 0);  // where each id's positions begin
  ix.offsets.push_back(0);
  for (int64_t v = 0; v < V; ++v) {
    if (count[size_t(v)] == 0) continue;
    start[size_t(v)] = ix.offsets.back();
    ix.rows.push_back(int32_t(v));
    ix.offsets.push_back(ix.offsets.back() + count[size_t(v)]);
  }
  ix.positions.resize(size_t(N));
  for (int64_t n = 0; n < N; ++n) ix.positions[size_t(start[size_t(ids[n])]++)] = int32_t(n);  // stable
  return ix;
}

template <class T>
void embedding_backward(int64_t U, int64_t C, const int32_t* rows, const int32_t* offsets, const int32_t* positions,
                        const T* grad_out, T* grad_table, cudaStream_t stream) {
  check_rows(U, "embedding_backward");
  CLIPCU_CUDA_REQUIRE(C >= 1, "embedding_backward: C " << C);
  if (U == 0) return;
  CLIPCU_CUDA_REQUIRE(rows && offsets && positions && grad_out && grad_table, "embedding_backward: a pointer is null");
  embedding_bwd_kernel<T><<<unsigned(U), kRowThreads, 0, stream>>>(C, rows, offsets, positions, grad_out, grad_table);
  CLIPCU_CUDA_CHECK_LAUNCH("embedding_bwd_kernel");
}

template <class T>
void positional_backward(int64_t B, int64_t Tn, int64_t C, const T* grad_out, T* grad_pos, cudaStream_t stream) {
  CLIPCU_CUDA_REQUIRE(B >= 0 && Tn >= 0 && C >= 1 && Tn * C < (int64_t(1) << 40),
                      "positional_backward: B " << B << " Tn " << Tn << " C " << C);
  if (Tn * C == 0) return;
  CLIPCU_CUDA_REQUIRE(grad_out && grad_pos, "positional_backward: a pointer is null");
  positional_bwd_kernel<T><<<ceil_div_u(Tn * C, 256), 256, 0, stream>>>(B, Tn, C, grad_out, grad_pos);
  CLIPCU_CUDA_CHECK_LAUNCH("positional_bwd_kernel");
}

template <class T>
void class_token_forward(int64_t B, int64_t P, int64_t C, const T* x, const T* cls, const T* pos, T* out,
                         cudaStream_t stream) {
  check_rows(B * (P + 1), "class_token_forward");
  CLIPCU_CUDA_REQUIRE(B >= 0 && P >= 0 && C >= 1, "class_token_forward: B " << B << " P " << P << " C " << C);
  if (B == 0) return;
  CLIPCU_CUDA_REQUIRE((x || P == 0) && cls && out, "class_token_forward: a pointer is null");
  class_token_fwd_kernel<T><<<unsigned(B * (P + 1)), kRowThreads, 0, stream>>>(P, C, x, cls, pos, out);
  CLIPCU_CUDA_CHECK_LAUNCH("class_token_fwd_kernel");
}

template <class T>
void class_token_backward(int64_t B, int64_t P, int64_t C, const T* dout, T* dx, T* dcls, T* dpos,
                          cudaStream_t stream) {
  check_rows(B * (P + 1), "class_token_backward");
  CLIPCU_CUDA_REQUIRE(B >= 0 && P >= 0 && C >= 1, "class_token_backward: B " << B << " P " << P << " C " << C);
  if (B == 0) return;
  CLIPCU_CUDA_REQUIRE(dout, "class_token_backward: dout is null");
  if (dx && P > 0) {
    class_token_dx_kernel<T><<<unsigned(B * P), kRowThreads, 0, stream>>>(P, C, dout, dx);
    CLIPCU_CUDA_CHECK_LAUNCH("class_token_dx_kernel");
  }
  if (dcls) {
    class_token_dcls_kernel<T><<<ceil_div_u(C, 256), 256, 0, stream>>>(B, P, C, dout, dcls);
    CLIPCU_CUDA_CHECK_LAUNCH("class_token_dcls_kernel");
  }
  if (dpos) positional_backward(B, P + 1, C, dout, dpos, stream);
}

template <class T, class I>
void gather_rows_forward(int64_t B, int64_t Tn, int64_t C, const T* x, const I* index, T* y, int* error_flag,
                         cudaStream_t stream) {
  check_rows(B, "gather_rows_forward");
  CLIPCU_CUDA_REQUIRE(Tn >= 1 && C >= 1, "gather_rows_forward: Tn " << Tn << " C " << C);
  if (B == 0) return;
  CLIPCU_CUDA_REQUIRE(x && index && y, "gather_rows_forward: a pointer is null");
  gather_fwd_kernel<T, I><<<unsigned(B), kRowThreads, 0, stream>>>(Tn, C, x, index, y, error_flag);
  CLIPCU_CUDA_CHECK_LAUNCH("gather_fwd_kernel");
}

template <class T, class I>
void gather_rows_backward(int64_t B, int64_t Tn, int64_t C, const I* index, const T* gy, T* gx, int* error_flag,
                          cudaStream_t stream) {
  check_rows(B, "gather_rows_backward");
  CLIPCU_CUDA_REQUIRE(Tn >= 1 && C >= 1, "gather_rows_backward: Tn " << Tn << " C " << C);
  if (B == 0) return;
  CLIPCU_CUDA_REQUIRE(index && gy && gx, "gather_rows_backward: a pointer is null");
  gather_bwd_kernel<T, I><<<unsigned(B), kRowThreads, 0, stream>>>(Tn, C, index, gy, gx, error_flag);
  CLIPCU_CUDA_CHECK_LAUNCH("gather_bwd_kernel");
}

#define CLIPCU_INSTANTIATE_TI(T, I)                                                                              \
  template void embedding_forward<T, I>(int64_t, int64_t, int64_t, int64_t, const T*, const I*, const T*, T*,  \
                                        int*, cudaStream_t);                                                   \
  template void gather_rows_forward<T, I>(int64_t, int64_t, int64_t, const T*, const I*, T*, int*, cudaStream_t); \
  template void gather_rows_backward<T, I>(int64_t, int64_t, int64_t, const I*, const T*, T*, int*, cudaStream_t);
#define CLIPCU_INSTANTIATE_T(T)                                                                                  \
  CLIPCU_INSTANTIATE_TI(T, int32_t)                                                                              \
  CLIPCU_INSTANTIATE_TI(T, int64_t)                                                                              \
  template void embedding_backward<T>(int64_t, int64_t, const int32_t*, const int32_t*, const int32_t*, const T*, \
                                      T*, cudaStream_t);                                                         \
  template void positional_backward<T>(int64_t, int64_t, int64_t, const T*, T*, cudaStream_t);                   \
  template void class_token_forward<T>(int64_t, int64_t, int64_t, const T*, const T*, const T*, T*, cudaStream_t); \
  template void class_token_backward<T>(int64_t, int64_t, int64_t, const T*, T*, T*, T*, cudaStream_t);
CLIPCU_INSTANTIATE_T(float)
CLIPCU_INSTANTIATE_T(bf16)
#undef CLIPCU_INSTANTIATE_T
#undef CLIPCU_INSTANTIATE_TI

template EmbeddingIndex embedding_build_index<int32_t>(int64_t, int64_t, const int32_t*);
template EmbeddingIndex embedding_build_index<int64_t>(int64_t, int64_t, const int64_t*);

}  // namespace clipcu::cuda
