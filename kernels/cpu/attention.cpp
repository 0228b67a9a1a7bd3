// CPU attention core (see attention.h for the math, the saved log-sum-exp and the variants).
//
// Parallelisation (both variants): one (batch, head) pair is one task; OpenMP hands the B*H
// tasks to threads (static schedule). Each pair owns its slices of out, lse, dq, dk and dv, so
// there are no races, and a pair's sums always run in the same order on one thread:
// deterministic for any thread count.
//
// Rowwise: queries are processed one row at a time, with the row's scores in a scratch vector
// of Tk values. K (and V in backward) of the pair is first transposed into [D, Tk] scratch, so
// that the scores of one query, s_j = sum_d q_d K[j, d], are D axpy passes over contiguous j
// (vectorizable without reassociating a dot product); the value sums o += p_j V_j are axpys over
// contiguous d. Causal rows only touch keys j <= i, so the masked scores are never computed.
//
// Gemm: the queries of a pair are cut into blocks of up to kQueryBlock rows (bounded scratch for
// long sequences). A block's scores S [m, nk] (nk = the keys any row of the block may see) are
// one gemm against K^T copied to [D, nk] scratch (the plain NN form runs about twice as fast as
// Q K^T with a transposed operand at these sizes; V^T likewise for dP in backward); the softmax
// is a row pass (max, exp_fast, sum, scale; masked entries set to 0) with lane-parallel sums in
// a fixed order; P V is a second gemm. Backward recomputes P from the saved log-sum-exp, then
// dV += P^T dO, dP = dO V^T, dS = P (dP - Delta) scale, dQ += dS K, dK += dS^T Q: five gemms
// per block; dK and dV sum the query blocks in order. The row passes are compiled twice,
// baseline and AVX2 + FMA, picked by the CPU at run time (vec_math.h).
// Inside the parallel region cpu::gemm runs on one thread (OpenBLAS's OpenMP build and the
// blocked fallback do not nest), so the cores work on different heads, which suits the many
// small products of B * H heads. With a pthreads OpenBLAS (cpu::gemm_shares_openmp() false)
// the heads run one after another instead and gemm threads itself.
#include "kernels/cpu/attention.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/cpu/matmul.h"
#include "kernels/cpu/vec_math.h"

namespace clipcu::cpu {

namespace {

// s[j] = scale * sum_d q[d] * kt[d, j] for j < n.
template <class T>
void row_scores(int64_t D, int64_t Tk, int64_t n, T scale,
                const T* q,   // [D]
                const T* kt,  // [D, Tk]
                T* s) {       // [n]
  std::fill(s, s + n, T(0));
  for (int64_t d = 0; d < D; ++d) {
    const T qd = q[d] * scale;
    const T* kr = kt + d * Tk;
    for (int64_t j = 0; j < n; ++j) s[j] += qd * kr[j];
  }
}

template <class T>
void transpose(int64_t R, int64_t C,
               const T* __restrict x,  // [R, C]
               T* __restrict y) {      // [C, R]
  // contiguous writes, strided reads: measured faster than the other order
  for (int64_t c = 0; c < C; ++c)
    for (int64_t r = 0; r < R; ++r) y[c * R + r] = x[r * C + c];
}

bool parallel_worth_it(const AttentionParams& p) { return p.B * p.H > 1 && p.B * p.H * p.Tq * p.Tk * p.D >= 32768; }

// The Gemm variant runs one head per thread with gemm inside the region: only when gemm then
// stays on the calling thread (cpu::gemm_shares_openmp); else the heads run one after another
// and gemm threads itself.
bool gemm_parallel_worth_it(const AttentionParams& p) { return parallel_worth_it(p) && gemm_shares_openmp(); }

template <class T>
void forward_rowwise(const AttentionParams& p,
                     const T* q,  // [B, H, Tq, D]
                     const T* k,  // [B, H, Tk, D]
                     const T* v,  // [B, H, Tk, D]
                     T* out,      // [B, H, Tq, D]
                     T* lse) {    // [B, H, Tq]
  const int64_t BH = p.B * p.H, Tq = p.Tq, Tk = p.Tk, D = p.D;
  const T scale = T(1.0 / std::sqrt(double(D)));
#pragma omp parallel if (parallel_worth_it(p))
  {
    std::vector<T> kt(static_cast<size_t>(D * Tk));
    std::vector<T> s(static_cast<size_t>(Tk));
    std::vector<T> o(static_cast<size_t>(D));
#pragma omp for schedule(static)
    for (int64_t bh = 0; bh < BH; ++bh) {
      const T* qb = q + bh * Tq * D;
      const T* vb = v + bh * Tk * D;
      transpose(Tk, D, k + bh * Tk * D, kt.data());
      for (int64_t i = 0; i < Tq; ++i) {
        const int64_t n = p.causal ? std::min(i + 1, Tk) : Tk;
        row_scores(D, Tk, n, scale, qb + i * D, kt.data(), s.data());
        T m = -std::numeric_limits<T>::infinity();
        for (int64_t j = 0; j < n; ++j) m = std::max(m, s[j]);
        T sum = 0;
        for (int64_t j = 0; j < n; ++j) {
          s[j] = std::exp(s[j] - m);
          sum += s[j];
        }
        std::fill(o.begin(), o.end(), T(0));
        for (int64_t j = 0; j < n; ++j) {
          const T pj = s[j];
          const T* vr = vb + j * D;
          for (int64_t d = 0; d < D; ++d) o[size_t(d)] += pj * vr[d];
        }
        const T inv = T(1) / sum;
        T* orow = out + (bh * Tq + i) * D;
        for (int64_t d = 0; d < D; ++d) orow[d] = o[size_t(d)] * inv;
        lse[bh * Tq + i] = m + std::log(sum);
      }
    }
  }
}

template <class T>
void backward_rowwise(const AttentionParams& p,
                      const T* q,     // [B, H, Tq, D]
                      const T* k,     // [B, H, Tk, D]
                      const T* v,     // [B, H, Tk, D]
                      const T* out,   // [B, H, Tq, D]
                      const T* lse,   // [B, H, Tq]
                      const T* dout,  // [B, H, Tq, D]
                      T* dq,          // [B, H, Tq, D] or nullptr
                      T* dk,          // [B, H, Tk, D] or nullptr
                      T* dv) {        // [B, H, Tk, D] or nullptr
  const int64_t BH = p.B * p.H, Tq = p.Tq, Tk = p.Tk, D = p.D;
  const T scale = T(1.0 / std::sqrt(double(D)));
  const bool want_ds = dq || dk;  // dS is needed only for dQ and dK
#pragma omp parallel if (parallel_worth_it(p))
  {
    std::vector<T> kt(static_cast<size_t>(D * Tk));
    std::vector<T> vt(want_ds ? static_cast<size_t>(D * Tk) : 0);
    std::vector<T> prob(static_cast<size_t>(Tk));
    std::vector<T> ds(static_cast<size_t>(Tk));
    std::vector<T> dqrow(static_cast<size_t>(D));
#pragma omp for schedule(static)
    for (int64_t bh = 0; bh < BH; ++bh) {
      const T* qb = q + bh * Tq * D;
      const T* kb = k + bh * Tk * D;
      const T* ob = out + bh * Tq * D;
      const T* dob = dout + bh * Tq * D;
      transpose(Tk, D, kb, kt.data());
      if (want_ds) transpose(Tk, D, v + bh * Tk * D, vt.data());
      for (int64_t i = 0; i < Tq; ++i) {
        const int64_t n = p.causal ? std::min(i + 1, Tk) : Tk;
        const T* qi = qb + i * D;
        const T* doi = dob + i * D;
        row_scores(D, Tk, n, scale, qi, kt.data(), prob.data());
        const T l = lse[bh * Tq + i];
        for (int64_t j = 0; j < n; ++j) prob[size_t(j)] = std::exp(prob[size_t(j)] - l);

        if (dv) {
          T* dvb = dv + bh * Tk * D;
          for (int64_t j = 0; j < n; ++j) {
            const T pj = prob[size_t(j)];
            T* dvr = dvb + j * D;
            for (int64_t d = 0; d < D; ++d) dvr[d] += pj * doi[d];
          }
        }
        if (!want_ds) continue;

        // dP_ij = dO_i . V_j, vectorized over j through V^T; Delta_i = dO_i . O_i.
        T delta = 0;
        for (int64_t d = 0; d < D; ++d) delta += doi[d] * ob[i * D + d];
        std::fill(ds.begin(), ds.begin() + n, T(0));
        for (int64_t d = 0; d < D; ++d) {
          const T g = doi[d];
          const T* vr = vt.data() + d * Tk;
          for (int64_t j = 0; j < n; ++j) ds[size_t(j)] += g * vr[j];
        }
        // dS_ij * scale, the common factor of dQ and dK.
        for (int64_t j = 0; j < n; ++j) ds[size_t(j)] = prob[size_t(j)] * (ds[size_t(j)] - delta) * scale;

        if (dq) {
          std::fill(dqrow.begin(), dqrow.end(), T(0));
          for (int64_t j = 0; j < n; ++j) {
            const T g = ds[size_t(j)];
            const T* kr = kb + j * D;
            for (int64_t d = 0; d < D; ++d) dqrow[size_t(d)] += g * kr[d];
          }
          T* dqr = dq + (bh * Tq + i) * D;
          for (int64_t d = 0; d < D; ++d) dqr[d] += dqrow[size_t(d)];
        }
        if (dk) {
          T* dkb = dk + bh * Tk * D;
          for (int64_t j = 0; j < n; ++j) {
            const T g = ds[size_t(j)];
            T* dkr = dkb + j * D;
            for (int64_t d = 0; d < D; ++d) dkr[d] += g * qi[d];
          }
        }
      }
    }
  }
}

constexpr int64_t kQueryBlock = 128;

// Lane-parallel row reductions: kLanes independent accumulators, combined in a fixed order, so
// that the loops vectorize (a single running max or sum is a dependent chain the compiler may
// not reorder) and the result does not depend on the vector width.
constexpr int64_t kLanes = 8;

template <class T>
[[gnu::always_inline]] inline T row_max(int64_t n, const T* x) {  // x: [n], n >= 1
  T acc[kLanes];
  std::fill(acc, acc + kLanes, -std::numeric_limits<T>::infinity());
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes)
    for (int64_t l = 0; l < kLanes; ++l) acc[l] = std::max(acc[l], x[j + l]);
  for (int64_t l = 0; j < n; ++j, ++l) acc[l] = std::max(acc[l], x[j]);
  for (int64_t l = 1; l < kLanes; ++l) acc[0] = std::max(acc[0], acc[l]);
  return acc[0];
}

// x[j] = exp(x[j] - shift) for j < n; returns the sum of the new values.
template <class T>
[[gnu::always_inline]] inline T exp_shift_sum(int64_t n, T shift, T* x) {  // x: [n]
  T acc[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    for (int64_t l = 0; l < kLanes; ++l) {
      const T e = exp_fast(x[j + l] - shift);
      x[j + l] = e;
      acc[l] += e;
    }
  }
  for (int64_t l = 0; j < n; ++j, ++l) {
    const T e = exp_fast(x[j] - shift);
    x[j] = e;
    acc[l] += e;
  }
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

// The softmax of one block of score rows, in place: row r (query i0 + r) sees keys j < n(r)
// (all nk, or i0 + r + 1 when causal). P[r, j] = exp(S[r, j] - max) / sum for those j and 0 for
// the masked rest; lse[r] = max + log(sum).
template <class T>
[[gnu::always_inline]] inline void softmax_rows(int64_t m, int64_t nk, int64_t i0, bool causal,
                                                T* s,      // [m, nk] scores in, probabilities out
                                                T* lse) {  // [m]
  for (int64_t r = 0; r < m; ++r) {
    T* row = s + r * nk;
    const int64_t n = causal ? std::min(i0 + r + 1, nk) : nk;
    const T mx = row_max(n, row);
    const T sum = exp_shift_sum(n, mx, row);
    const T inv = T(1) / sum;
    for (int64_t j = 0; j < n; ++j) row[j] *= inv;
    std::fill(row + n, row + nk, T(0));
    lse[r] = mx + std::log(sum);
  }
}

// Backward: P = exp(S - lse) in place, 0 where masked.
template <class T>
[[gnu::always_inline]] inline void probs_from_lse(int64_t m, int64_t nk, int64_t i0, bool causal,
                                                  const T* lse,  // [m]
                                                  T* s) {        // [m, nk] scores in, P out
  for (int64_t r = 0; r < m; ++r) {
    T* row = s + r * nk;
    const int64_t n = causal ? std::min(i0 + r + 1, nk) : nk;
    const T l = lse[r];
    for (int64_t j = 0; j < n; ++j) row[j] = exp_fast(row[j] - l);
    std::fill(row + n, row + nk, T(0));
  }
}

// Backward: dS = P (dP - Delta) scale in place of dP, with Delta_i = dO_i . O_i.
template <class T>
[[gnu::always_inline]] inline void ds_rows(int64_t m, int64_t nk, int64_t D, T scale,
                                           const T* o,   // [m, D]
                                           const T* dO,  // [m, D]
                                           const T* P,   // [m, nk]
                                           T* ds) {      // [m, nk] dP in, dS * scale out
  for (int64_t r = 0; r < m; ++r) {
    const T* orow = o + r * D;
    const T* dorow = dO + r * D;
    T delta = 0;
    for (int64_t d = 0; d < D; ++d) delta += dorow[d] * orow[d];
    T* dsr = ds + r * nk;
    const T* pr = P + r * nk;
    for (int64_t j = 0; j < nk; ++j) dsr[j] = pr[j] * (dsr[j] - delta) * scale;
  }
}

// The same row passes compiled for AVX2 + FMA (vec_math.h), picked at run time.
template <class T>
CLIPCU_TARGET_AVX2 void softmax_rows_avx2(int64_t m, int64_t nk, int64_t i0, bool causal, T* s, T* lse) {
  softmax_rows(m, nk, i0, causal, s, lse);
}
template <class T>
CLIPCU_TARGET_AVX2 void probs_from_lse_avx2(int64_t m, int64_t nk, int64_t i0, bool causal, const T* lse, T* s) {
  probs_from_lse(m, nk, i0, causal, lse, s);
}
template <class T>
CLIPCU_TARGET_AVX2 void ds_rows_avx2(int64_t m, int64_t nk, int64_t D, T scale, const T* o, const T* dO, const T* P,
                                     T* ds) {
  ds_rows(m, nk, D, scale, o, dO, P, ds);
}

template <class T>
void forward_gemm(const AttentionParams& p,
                  const T* q,  // [B, H, Tq, D]
                  const T* k,  // [B, H, Tk, D]
                  const T* v,  // [B, H, Tk, D]
                  T* out,      // [B, H, Tq, D]
                  T* lse) {    // [B, H, Tq]
  const int64_t BH = p.B * p.H, Tq = p.Tq, Tk = p.Tk, D = p.D;
  const int64_t QB = std::min(Tq, kQueryBlock);
  const T scale = T(1.0 / std::sqrt(double(D)));
  const bool avx2 = cpu_has_avx2_fma();
#pragma omp parallel if (gemm_parallel_worth_it(p))
  {
    std::vector<T> kt(static_cast<size_t>(D * Tk));  // [D, nk]: K^T (S = Q K^T as a plain gemm)
    std::vector<T> s(static_cast<size_t>(QB * Tk));  // [m, nk] scores, then probabilities
#pragma omp for schedule(static)
    for (int64_t bh = 0; bh < BH; ++bh) {
      const T* kb = k + bh * Tk * D;
      const T* vb = v + bh * Tk * D;
      int64_t kt_cols = 0;
      for (int64_t i0 = 0; i0 < Tq; i0 += QB) {
        const int64_t m = std::min(QB, Tq - i0);
        const int64_t nk = p.causal ? std::min(Tk, i0 + m) : Tk;
        if (kt_cols != nk) {
          transpose(nk, D, kb, kt.data());
          kt_cols = nk;
        }
        gemm<T>(false, false, m, nk, D, scale, q + (bh * Tq + i0) * D, kt.data(), T(0), s.data());  // S = Q K^T scale
        if (avx2) {
          softmax_rows_avx2(m, nk, i0, p.causal, s.data(), lse + bh * Tq + i0);
        } else {
          softmax_rows(m, nk, i0, p.causal, s.data(), lse + bh * Tq + i0);
        }
        gemm<T>(false, false, m, D, nk, T(1), s.data(), vb, T(0), out + (bh * Tq + i0) * D);  // O = P V
      }
    }
  }
}

template <class T>
void backward_gemm(const AttentionParams& p,
                   const T* q,     // [B, H, Tq, D]
                   const T* k,     // [B, H, Tk, D]
                   const T* v,     // [B, H, Tk, D]
                   const T* out,   // [B, H, Tq, D]
                   const T* lse,   // [B, H, Tq]
                   const T* dout,  // [B, H, Tq, D]
                   T* dq,          // [B, H, Tq, D] or nullptr
                   T* dk,          // [B, H, Tk, D] or nullptr
                   T* dv) {        // [B, H, Tk, D] or nullptr
  const int64_t BH = p.B * p.H, Tq = p.Tq, Tk = p.Tk, D = p.D;
  const int64_t QB = std::min(Tq, kQueryBlock);
  const T scale = T(1.0 / std::sqrt(double(D)));
  const bool want_ds = dq || dk;  // dS is needed only for dQ and dK
  const bool avx2 = cpu_has_avx2_fma();
#pragma omp parallel if (gemm_parallel_worth_it(p))
  {
    std::vector<T> kt(static_cast<size_t>(D * Tk));                  // [D, nk] K^T
    std::vector<T> vt(want_ds ? static_cast<size_t>(D * Tk) : 0);   // [D, nk] V^T
    std::vector<T> prob(static_cast<size_t>(QB * Tk));               // [m, nk] P
    std::vector<T> ds(want_ds ? static_cast<size_t>(QB * Tk) : 0);  // [m, nk] dP, then dS
#pragma omp for schedule(static)
    for (int64_t bh = 0; bh < BH; ++bh) {
      const T* kb = k + bh * Tk * D;
      const T* vb = v + bh * Tk * D;
      int64_t t_cols = 0;
      for (int64_t i0 = 0; i0 < Tq; i0 += QB) {
        const int64_t m = std::min(QB, Tq - i0);
        const int64_t nk = p.causal ? std::min(Tk, i0 + m) : Tk;
        if (t_cols != nk) {
          transpose(nk, D, kb, kt.data());
          if (want_ds) transpose(nk, D, vb, vt.data());
          t_cols = nk;
        }
        const T* qi = q + (bh * Tq + i0) * D;
        const T* doi = dout + (bh * Tq + i0) * D;
        const T* li = lse + bh * Tq + i0;
        // P = exp(Q K^T scale - lse), 0 where masked
        gemm<T>(false, false, m, nk, D, scale, qi, kt.data(), T(0), prob.data());
        if (avx2) {
          probs_from_lse_avx2(m, nk, i0, p.causal, li, prob.data());
        } else {
          probs_from_lse(m, nk, i0, p.causal, li, prob.data());
        }
        if (dv) gemm<T>(true, false, nk, D, m, T(1), prob.data(), doi, T(1), dv + bh * Tk * D);  // dV += P^T dO
        if (!want_ds) continue;
        gemm<T>(false, false, m, nk, D, T(1), doi, vt.data(), T(0), ds.data());  // dP = dO V^T
        if (avx2) {
          ds_rows_avx2(m, nk, D, scale, out + (bh * Tq + i0) * D, doi, prob.data(), ds.data());
        } else {
          ds_rows(m, nk, D, scale, out + (bh * Tq + i0) * D, doi, prob.data(), ds.data());
        }
        if (dq) gemm<T>(false, false, m, D, nk, T(1), ds.data(), kb, T(1), dq + (bh * Tq + i0) * D);  // dQ += dS K
        if (dk) gemm<T>(true, false, nk, D, m, T(1), ds.data(), qi, T(1), dk + bh * Tk * D);         // dK += dS^T Q
      }
    }
  }
}

}  // namespace

const char* attention_variant_name(AttentionVariant v) {
  switch (v) {
    case AttentionVariant::Auto: return "auto";
    case AttentionVariant::Rowwise: return "rowwise";
    case AttentionVariant::Gemm: return "gemm";
  }
  return "?";
}

template <class T>
void attention_forward(const AttentionParams& p,
                       const T* q,  // [B, H, Tq, D]
                       const T* k,  // [B, H, Tk, D]
                       const T* v,  // [B, H, Tk, D]
                       T* out,      // [B, H, Tq, D]
                       T* lse) {    // [B, H, Tq]
  if (p.variant == AttentionVariant::Rowwise) {
    forward_rowwise(p, q, k, v, out, lse);
  } else {
    forward_gemm(p, q, k, v, out, lse);
  }
}

template <class T>
void attention_backward(const AttentionParams& p,
                        const T* q,     // [B, H, Tq, D]
                        const T* k,     // [B, H, Tk, D]
                        const T* v,     // [B, H, Tk, D]
                        const T* out,   // [B, H, Tq, D]
                        const T* lse,   // [B, H, Tq]
                        const T* dout,  // [B, H, Tq, D]
                        T* dq,          // [B, H, Tq, D] or nullptr
                        T* dk,          // [B, H, Tk, D] or nullptr
                        T* dv) {        // [B, H, Tk, D] or nullptr
  if (p.variant == AttentionVariant::Rowwise) {
    backward_rowwise(p, q, k, v, out, lse, dout, dq, dk, dv);
  } else {
    backward_gemm(p, q, k, v, out, lse, dout, dq, dk, dv);
  }
}

template void attention_forward<float>(const AttentionParams&, const float*, const float*, const float*, float*,
                                       float*);
template void attention_forward<double>(const AttentionParams&, const double*, const double*, const double*,
                                        double*, double*);
template void attention_backward<float>(const AttentionParams&, const float*, const float*, const float*,
                                        const float*, const float*, const float*, float*, float*, float*);
template void attention_backward<double>(const AttentionParams&, const double*, const double*, const double*,
                                         const double*, const double*, const double*, double*, double*, double*);

}  // namespace clipcu::cpu
