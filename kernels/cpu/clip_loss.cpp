// CPU fused CLIP loss (see clip_loss.h for the math).
//
// The two [B, E] x [E, B]-shaped products (logits forward; d In and d Tn backward) go through
// cpu::gemm; the rest is row/column reductions. Parallelisation: OpenMP over rows for the row
// lse and dL, over columns for the column lse; every sum is a float64 sum in index order and
// the loss is combined serially, so results do not depend on the thread count.
#include "kernels/cpu/clip_loss.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/cpu/l2_normalize.h"
#include "kernels/cpu/matmul.h"

namespace clipcu::cpu {

namespace {
constexpr int64_t kParallelMin = 1 << 14;  // elements below which threads cost more than they save
}

template <class T>
T clip_loss_forward(const ClipLossParams<T>& p) {
  const int64_t B = p.B, E = p.E;
  l2_normalize_forward(B, E, p.image, p.image_n, p.image_norm);
  l2_normalize_forward(B, E, p.text, p.text_n, p.text_norm);
  const T scale = T(std::exp(double(p.log_scale)));
  gemm<T>(false, true, B, B, E, scale, p.image_n, p.text_n, T(0), p.logits);

  const T* L = p.logits;
#pragma omp parallel for if (B * B > kParallelMin)
  for (int64_t i = 0; i < B; ++i) {  // row lse: each image against every text
    const T* l = L + i * B;
    double mx = -INFINITY;
    for (int64_t j = 0; j < B; ++j) mx = std::max(mx, double(l[j]));
    double s = 0.0;
    for (int64_t j = 0; j < B; ++j) s += std::exp(double(l[j]) - mx);
    p.row_lse[i] = T(mx + std::log(s));
  }
#pragma omp parallel for if (B * B > kParallelMin)
  for (int64_t j = 0; j < B; ++j) {  // column lse: each text against every image
    double mx = -INFINITY;
    for (int64_t i = 0; i < B; ++i) mx = std::max(mx, double(L[i * B + j]));
    double s = 0.0;
    for (int64_t i = 0; i < B; ++i) s += std::exp(double(L[i * B + j]) - mx);
    p.col_lse[j] = T(mx + std::log(s));
  }
  double total = 0.0;
  for (int64_t i = 0; i < B; ++i) total += double(p.row_lse[i]) + double(p.col_lse[i]) - 2.0 * double(L[i * B + i]);
  return T(total / (2.0 * double(B)));
}

template <class T>
void clip_loss_backward(const ClipLossParams<T>& p, T grad_loss, T* grad_image, T* grad_text, T* grad_log_scale) {
  const int64_t B = p.B, E = p.E;
  const T* L = p.logits;
  const double g = double(grad_loss) / (2.0 * double(B));
  std::vector<T> dL(size_t(B * B));
  std::vector<double> ds_row(static_cast<size_t>(B));
#pragma omp parallel for if (B * B > kParallelMin)
  for (int64_t i = 0; i < B; ++i) {
    const double r = double(p.row_lse[i]);
    double ds = 0.0;
    for (int64_t j = 0; j < B; ++j) {
      const double l = double(L[i * B + j]);
      double d = std::exp(l - r) + std::exp(l - double(p.col_lse[j]));
      if (i == j) d -= 2.0;
      d *= g;
      dL[size_t(i * B + j)] = T(d);
      ds += d * l;
    }
    ds_row[size_t(i)] = ds;
  }
  if (grad_log_scale) {
    double ds = 0.0;
    for (double v : ds_row) ds += v;
    grad_log_scale[0] += T(ds);
  }
  const T scale = T(std::exp(double(p.log_scale)));
  std::vector<T> dn(size_t(B * E));
  if (grad_image) {
    gemm<T>(false, false, B, E, B, scale, dL.data(), p.text_n, T(0), dn.data());  // d In = s dL Tn
    l2_normalize_backward(B, E, p.image_n, p.image_norm, dn.data(), grad_image);
  }
  if (grad_text) {
    gemm<T>(true, false, B, E, B, scale, dL.data(), p.image_n, T(0), dn.data());  // d Tn = s dL^T In
    l2_normalize_backward(B, E, p.text_n, p.text_norm, dn.data(), grad_text);
  }
}

template float clip_loss_forward<float>(const ClipLossParams<float>&);
template double clip_loss_forward<double>(const ClipLossParams<double>&);
template void clip_loss_backward<float>(const ClipLossParams<float>&, float, float*, float*, float*);
template void clip_loss_backward<double>(const ClipLossParams<double>&, double, double*, double*, double*);

}  // namespace clipcu::cpu
