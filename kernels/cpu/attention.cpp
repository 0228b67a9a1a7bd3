// CPU attention core (see attention.h for the math and the saved log-sum-exp).
//
// Parallelisation: one (batch, head) pair is one task; OpenMP hands the B*H tasks to threads
// (static schedule). Within a task, queries are processed one row at a time, with the row's
// scores in a scratch vector of Tk values.
// Layout trick: K (and V in backward) of the pair is first transposed into [D, Tk] scratch, so
// that the scores of one query, s_j = sum_d q_d K[j, d], are D axpy passes over contiguous j
// (vectorizable without reassociating a dot product); the value sums o += p_j V_j are axpys over
// contiguous d. Backward keeps dK and dV of the pair in the output buffers (each pair owns its
// slice, so there are no races) and sums the rows i in order: deterministic.
// Causal rows only touch keys j <= i, so the masked scores are never computed.
#include "kernels/cpu/attention.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

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
               const T* x,  // [R, C]
               T* y) {      // [C, R]
  for (int64_t r = 0; r < R; ++r)
    for (int64_t c = 0; c < C; ++c) y[c * R + r] = x[r * C + c];
}

bool parallel_worth_it(const AttentionParams& p) { return p.B * p.H > 1 && p.B * p.H * p.Tq * p.Tk * p.D >= 32768; }

}  // namespace

template <class T>
void attention_forward(const AttentionParams& p,
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

template void attention_forward<float>(const AttentionParams&, const float*, const float*, const float*, float*,
                                       float*);
template void attention_forward<double>(const AttentionParams&, const double*, const double*, const double*,
                                        double*, double*);
template void attention_backward<float>(const AttentionParams&, const float*, const float*, const float*,
                                        const float*, const float*, const float*, float*, float*, float*);
template void attention_backward<double>(const AttentionParams&, const double*, const double*, const double*,
                                         const double*, const double*, const double*, double*, double*, double*);

}  // namespace clipcu::cpu
