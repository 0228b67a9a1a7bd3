// CPU attention core: out = softmax(q k^T * scale) v per (batch, head), scale = 1 / sqrt(D).
//
// q [B, H, Tq, D], k and v [B, H, Tk, D], out [B, H, Tq, D]. Tq may differ from Tk (CLIP's
// AttentionPool2d asks one query token over all positions). causal masks key j > query i and
// needs Tq == Tk (the text tower).
// Forward saves the per-row log-sum-exp lse[i] = log sum_j exp(s_ij) of the scaled scores; the
// backward recomputes the probabilities P_ij = exp(s_ij - lse_i) from it (P is never stored):
//   dV_j  += sum_i P_ij dO_i
//   dP_ij  = dO_i . V_j,  Delta_i = dO_i . O_i = sum_j P_ij dP_ij
//   dS_ij  = P_ij (dP_ij - Delta_i)
//   dQ_i  += scale * sum_j dS_ij K_j,   dK_j += scale * sum_i dS_ij Q_i
// Backward ACCUMULATES (+=) into dq / dk / dv (the tape's contract); nullptr skips one, and
// they may point to the same buffer (self-attention on one tensor).
//
// Variants (AttentionVariant):
//   Rowwise: one query row at a time with plain loops (the simple reference).
//   Gemm:    per (batch, head) and block of up to 128 query rows, the score block S = Q K^T and
//            the products P V, P^T dO, dO V^T, dS K, dS^T Q are cpu::gemm calls (OpenBLAS when
//            built in); the softmax between them is a vectorized row pass.
//   Auto:    Gemm.
#pragma once
#include <cstdint>

namespace clipcu::cpu {

enum class AttentionVariant { Auto, Rowwise, Gemm };
const char* attention_variant_name(AttentionVariant v);

struct AttentionParams {
  int64_t B = 0, H = 0;    // batch, heads
  int64_t Tq = 0, Tk = 0;  // query and key/value tokens (Tk >= 1)
  int64_t D = 0;           // head dim
  bool causal = false;     // needs Tq == Tk
  AttentionVariant variant = AttentionVariant::Auto;
};

template <class T>
void attention_forward(const AttentionParams& p,
                       const T* q,  // [B, H, Tq, D]
                       const T* k,  // [B, H, Tk, D]
                       const T* v,  // [B, H, Tk, D]
                       T* out,      // [B, H, Tq, D]
                       T* lse);     // [B, H, Tq]

template <class T>
void attention_backward(const AttentionParams& p,
                        const T* q,     // [B, H, Tq, D]
                        const T* k,     // [B, H, Tk, D]
                        const T* v,     // [B, H, Tk, D]
                        const T* out,   // [B, H, Tq, D] (forward output)
                        const T* lse,   // [B, H, Tq]   (forward log-sum-exp)
                        const T* dout,  // [B, H, Tq, D]
                        T* dq,          // [B, H, Tq, D] or nullptr
                        T* dk,          // [B, H, Tk, D] or nullptr
                        T* dv);         // [B, H, Tk, D] or nullptr

}  // namespace clipcu::cpu
