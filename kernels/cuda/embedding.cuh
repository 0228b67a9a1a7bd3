// CUDA embeddings and the token-level data movement of the towers, forward and backward. Host
// interface.
//
//   token + positional embedding: out[b, t, :] = table[ids[b, t], :] + pos[t, :]   (pos optional; t = n % Tn)
//   class-token concat:           out[b, 0, :] = cls + pos[0]; out[b, 1 + p, :] = x[b, p, :] + pos[1 + p]
//   end-token gather:             y[b, :] = x[b, index[b], :]
// Backwards ACCUMULATE (+=). The table's scatter-add is deterministic without atomics: the host
// builds an index of the batch (embedding_build_index: the distinct ids, and for each the
// positions that hold it, in increasing order; a counting sort, no comparison sort), and one
// block per distinct id adds its positions' gradient rows in that order. The positional and
// class-token gradients are sums over the batch, one thread per element looping over b in order.
//
// Ids and indices are int32 or int64. Device code cannot throw: an id outside [0, V) (an index
// outside [0, Tn)) produces a zero row (no gradient) and sets *error_flag = 1 when error_flag is
// given; callers validate on the host where the ids are (embedding_build_index throws naming the
// position).
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "kernels/cuda/common/types.h"

namespace clipcu::cuda {

// out[n, :] = table[ids[n], :] (+ pos[n % Tn, :]), N = B * Tn.
template <class T, class I>
void embedding_forward(int64_t N, int64_t Tn, int64_t V, int64_t C,
                       const T* table,  // [V, C]
                       const I* ids,    // [N]
                       const T* pos,    // [Tn, C] or nullptr
                       T* out,          // [N, C]
                       int* error_flag, cudaStream_t stream);

// The batch's ids bucketed by value (host side): rows[u] is the u-th distinct id (increasing),
// positions[offsets[u] .. offsets[u + 1]) the positions holding it (increasing).
struct EmbeddingIndex {
  std::vector<int32_t> rows;       // [U]
  std::vector<int32_t> offsets;    // [U + 1]
  std::vector<int32_t> positions;  // [N]
};
// Throws clipcu::Error naming the first id outside [0, V) and its position. N < 2^31.
template <class I>
EmbeddingIndex embedding_build_index(int64_t N, int64_t V, const I* ids);  // ids: host [N]

// grad_table[rows[u], :] += sum over positions p of bucket u of grad_out[p, :] (the index above,
// uploaded to the device).
template <class T>
void embedding_backward(int64_t U, int64_t C,
                        const int32_t* rows,       // [U]
                        const int32_t* offsets,    // [U + 1]
                        const int32_t* positions,  // [N]
                        const T* grad_out,         // [N, C]
                        T* grad_table,             // [V, C]
                        cudaStream_t stream);

// grad_pos[t, :] += sum_b grad_out[b, t, :].
template <class T>
void positional_backward(int64_t B, int64_t Tn, int64_t C,
                         const T* grad_out,  // [B, Tn, C]
                         T* grad_pos,        // [Tn, C]
                         cudaStream_t stream);

// out[b, 0] = cls (+ pos[0]), out[b, 1 + p] = x[b, p] (+ pos[1 + p]).
template <class T>
void class_token_forward(int64_t B, int64_t P, int64_t C,
                         const T* x,    // [B, P, C]
                         const T* cls,  // [C]
                         const T* pos,  // [P + 1, C] or nullptr
                         T* out,        // [B, P + 1, C]
                         cudaStream_t stream);

// dx[b, p] += dout[b, 1 + p]; dcls += sum_b dout[b, 0]; dpos += sum_b dout[b]. nullptr skips one.
template <class T>
void class_token_backward(int64_t B, int64_t P, int64_t C,
                          const T* dout,  // [B, P + 1, C]
                          T* dx,          // [B, P, C] or nullptr
                          T* dcls,        // [C] or nullptr
                          T* dpos,        // [P + 1, C] or nullptr
                          cudaStream_t stream);

// y[b, :] = x[b, index[b], :].
template <class T, class I>
void gather_rows_forward(int64_t B, int64_t Tn, int64_t C,
                         const T* x,      // [B, Tn, C]
                         const I* index,  // [B]
                         T* y,            // [B, C]
                         int* error_flag, cudaStream_t stream);

// gx[b, index[b], :] += gy[b, :] (each b owns its slab of gx: no collisions).
template <class T, class I>
void gather_rows_backward(int64_t B, int64_t Tn, int64_t C,
                          const I* index,  // [B]
                          const T* gy,     // [B, C]
                          T* gx,           // [B, Tn, C]
                          int* error_flag, cudaStream_t stream);

}  // namespace clipcu::cuda
