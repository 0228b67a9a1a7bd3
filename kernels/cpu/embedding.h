// CPU reference of the embedding lookup and its scatter-add backward.
//
// Forward: out[n, :] = table[ids[n], :] for the N = prod(ids.shape) positions.
// Backward: grad_table[v, :] += sum over the positions n with ids[n] == v of grad_out[n, :]
// (repeated ids accumulate). It is deterministic and race-free: the positions are bucketed by
// table row with a counting sort (stable, so each bucket keeps increasing position order), and
// each row is owned by one thread that adds its positions in that order. Results therefore do
// not depend on the number of threads.
#pragma once
#include <cstdint>

namespace clipcu::cpu {

// Throws clipcu::Error naming the first id outside [0, V), its position and V.
template <class I>
void embedding_check_ids(int64_t N, int64_t V, const I* ids);  // [N]

// Validates the ids, then out[n, :] = table[ids[n], :].
template <class T, class I>
void embedding_forward(int64_t N, int64_t V, int64_t C,
                       const T* table,  // [V, C]
                       const I* ids,    // [N]
                       T* out);         // [N, C]

// Validates the ids, then grad_table[ids[n], :] += grad_out[n, :] (accumulates).
template <class T, class I>
void embedding_backward(int64_t N, int64_t V, int64_t C,
                        const I* ids,       // [N]
                        const T* grad_out,  // [N, C]
                        T* grad_table);     // [V, C]

}  // namespace clipcu::cpu
