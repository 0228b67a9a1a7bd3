// CUDA fused CLIP contrastive loss (see clip_loss.cuh for the math and the contract).
//
// Kernels, in launch order:
//   normalize: one warp per row of each feature set: the norm, and the normalized row in float.
//   lse (twice: images against texts for r, texts against images for c): a block owns 32 rows of
//     its side and walks all rows of the other side in tiles of 32; a 32 x 32 score tile is
//     accumulated over E in chunks of 32 staged in shared memory (each thread a 4 x 2 register
//     tile: common/tile.cuh), then folded into a running max / sum per row (online log-sum-exp,
//     half-warp reductions). The image pass can also write the logits tile when asked.
//   loss: one block; each warp takes rows i, i + 8, ... and computes L_ii; the partial sums are
//     added in warp order in double.
//   backward grad (twice, image side and text side): a block owns 16 rows; per tile of 32 rows of
//     the other side it recomputes the score tile, forms dL, adds dL * L into per-row sums of d s,
//     and accumulates dL times the other side's tile into a [16, E] float accumulator in shared
//     memory (every element has one owning thread); at the end each warp finishes 4 rows with
//     the L2-normalize backward and adds them into the gradient.
//   log-scale: one block adds the per-row d s terms in a fixed order.
// Memory: the saved state is O(B E); nothing is O(B^2) unless logits are asked for. Every sum
// has a fixed order, so results repeat bit for bit.
#include "kernels/cuda/clip_loss.cuh"

#include <cmath>

#include "kernels/cuda/common/check.h"
#include "kernels/cuda/common/device.cuh"
#include "kernels/cuda/common/tile.cuh"

namespace clipcu::cuda {

namespace {

constexpr int kTileJ = 32;   // rows of the other side per tile
constexpr int kChunkE = 32;  // features per shared-memory chunk
constexpr int kLd = kChunkE + 1;
constexpr int64_t kMaxE = 2048;  // the backward's [16, E] accumulator lives in shared memory
constexpr float kNormEps = 1e-12f;

// ---------------------------------------------------------------- normalize
// grid: ceil(B / 8); block: 256 (a warp per row).
template <class T>
__global__ void __launch_bounds__(256) clip_normalize(int64_t B, int64_t E, const T* x, float* xn, float* norm) {
  const int64_t row = int64_t(blockIdx.x) * 8 + threadIdx.x / 32;
  if (row >= B) return;
  const int lane = int(threadIdx.x) % 32;
  const T* xr = x + row * E;
  float ss = 0.f;
  for (int64_t e = lane; e < E; e += 32) {
    const float v = to_float(xr[e]);
    ss += v * v;
  }
  const float nrm = sqrtf(warp_sum(ss));
  const float inv = 1.f / fmaxf(nrm, kNormEps);
  for (int64_t e = lane; e < E; e += 32) xn[row * E + e] = to_float(xr[e]) * inv;
  if (lane == 0) norm[row] = nrm;
}

// Scores s[r][c] = X[i0 + ty*RPT + r] . Y[j0 + tx + 16 c] over all of E, through shared chunks
// Xs [RPT * 8][kLd] and Ys [32][kLd]. Rows past B read as zero. Begins and ends with the
// chunk loop's barriers, so callers may reuse Xs / Ys only after their own barrier.
template <int RPT>
__device__ __forceinline__ void score_tile(float (&s)[RPT][2], const float* X, const float* Y, int64_t B, int64_t E,
                                           int64_t i0, int64_t j0, float* Xs, float* Ys) {
  constexpr int kRowsI = RPT * tile::kRowGroups;
#pragma unroll
  for (int r = 0; r < RPT; ++r) s[r][0] = s[r][1] = 0.f;
  for (int64_t e0 = 0; e0 < E; e0 += kChunkE) {
    __syncthreads();  // the previous chunk's (or the caller's) readers of Xs / Ys are done
    for (int idx = int(threadIdx.x); idx < kRowsI * kChunkE; idx += tile::kThreads) {
      const int r = idx / kChunkE, e = idx % kChunkE;
      const int64_t gi = i0 + r, ge = e0 + e;
      Xs[r * kLd + e] = (gi < B && ge < E) ? X[gi * E + ge] : 0.f;
    }
    for (int idx = int(threadIdx.x); idx < kTileJ * kChunkE; idx += tile::kThreads) {
      const int r = idx / kChunkE, e = idx % kChunkE;
      const int64_t gj = j0 + r, ge = e0 + e;
      Ys[r * kLd + e] = (gj < B && ge < E) ? Y[gj * E + ge] : 0.f;
    }
    __syncthreads();
    tile::mul_abt<RPT, 2, kChunkE>(s, Xs + tile::ty() * RPT * kLd, kLd, Ys + tile::tx() * kLd, kLd);
  }
}

// ---------------------------------------------------------------- row / column log-sum-exp
// lse_out[i] = log sum_j exp(scale X_i . Y_j). grid: ceil(B / 32); block: 128.
template <class T>
__global__ void __launch_bounds__(tile::kThreads) clip_lse(int64_t B, int64_t E, const float* X, const float* Y,
                                                           const T* log_scale, float* lse_out, T* logits) {
  constexpr int RPT = 4;
  __shared__ float Xs[RPT * tile::kRowGroups * kLd];
  __shared__ float Ys[kTileJ * kLd];
  const int tx = tile::tx(), ty = tile::ty();
  const int64_t i0 = int64_t(blockIdx.x) * RPT * tile::kRowGroups;
  const float scale = expf(to_float(log_scale[0]));
  float m[RPT], l[RPT];
#pragma unroll
  for (int r = 0; r < RPT; ++r) m[r] = -INFINITY, l[r] = 0.f;
  for (int64_t j0 = 0; j0 < B; j0 += kTileJ) {
    float s[RPT][2];
    score_tile<RPT>(s, X, Y, B, E, i0, j0, Xs, Ys);
#pragma unroll
    for (int r = 0; r < RPT; ++r) {
      const int64_t i = i0 + ty * RPT + r;
      float mx = -INFINITY;
#pragma unroll
      for (int c = 0; c < 2; ++c) {
        const int64_t j = j0 + tx + 16 * c;
        float L = scale * s[r][c];
        if (j >= B) L = -INFINITY;
        else if (logits && i < B) logits[i * B + j] = from_float<T>(L);
        s[r][c] = L;
        mx = fmaxf(mx, L);
      }
      mx = half_warp_max(mx);
      const float m_new = fmaxf(m[r], mx);  // finite: every tile has column j0 < B
      float rs = expf(s[r][0] - m_new) + expf(s[r][1] - m_new);
      rs = half_warp_sum(rs);
      l[r] = l[r] * expf(m[r] - m_new) + rs;
      m[r] = m_new;
    }
  }
#pragma unroll
  for (int r = 0; r < RPT; ++r) {
    const int64_t i = i0 + ty * RPT + r;
    if (tx == 0 && i < B) lse_out[i] = m[r] + logf(l[r]);
  }
}

// ---------------------------------------------------------------- loss
// loss = (1/2B) sum_i (r_i + c_i - 2 scale In_i . Tn_i). grid: 1; block: 256.
template <class T>
__global__ void __launch_bounds__(256) clip_loss_value(int64_t B, int64_t E, const float* In, const float* Tn,
                                                       const float* row_lse, const float* col_lse,
                                                       const T* log_scale, float* loss) {
  __shared__ double scratch[8];
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
  const float scale = expf(to_float(log_scale[0]));
  double acc = 0.0;  // meaningful in lane 0
  for (int64_t i = warp; i < B; i += 8) {
    float d = 0.f;
    for (int64_t e = lane; e < E; e += 32) d += In[i * E + e] * Tn[i * E + e];
    d = warp_sum(d);
    if (lane == 0) acc += double(row_lse[i]) + double(col_lse[i]) - 2.0 * double(scale * d);
  }
  const double total = block_sum_d<8>(lane == 0 ? acc : 0.0, scratch);
  if (threadIdx.x == 0) loss[0] = float(total / (2.0 * double(B)));
}

// ---------------------------------------------------------------- backward
constexpr int kGradRPT = 2;                            // 16 own rows per block
constexpr int kGradRows = kGradRPT * tile::kRowGroups;

struct GradSide {
  const float* X;          // [B, E] own side, normalized
  const float* Y;          // [B, E] other side, normalized
  const float* lse_own;    // [B]
  const float* lse_other;  // [B]
  const float* norm_own;   // [B]
  float* ds_rows;          // [B] or nullptr: per-row sum_j dL L (written once, by the image side)
};

// grid: ceil(B / 16); block: 128; dynamic shared memory: 16 E floats.
template <class T>
__global__ void __launch_bounds__(tile::kThreads) clip_grad(int64_t B, int64_t E, const GradSide side,
                                                            const T* log_scale, const float* grad_loss, T* grad) {
  extern __shared__ float acc[];  // [16][E]: sum_j dL_ij Y_j for the block's rows
  __shared__ float Xs[kGradRows * kLd];
  __shared__ float Ys[kTileJ * kLd];
  __shared__ float dLs[kGradRows * kLd];
  const int tx = tile::tx(), ty = tile::ty();
  const int64_t i0 = int64_t(blockIdx.x) * kGradRows;
  const float scale = expf(to_float(log_scale[0]));
  const float g = grad_loss[0] / (2.f * float(B));
  for (int64_t k = threadIdx.x; k < kGradRows * E; k += tile::kThreads) acc[k] = 0.f;
  float lse_r[kGradRPT], ds[kGradRPT];
#pragma unroll
  for (int r = 0; r < kGradRPT; ++r) {
    const int64_t i = i0 + ty * kGradRPT + r;
    lse_r[r] = i < B ? side.lse_own[i] : 0.f;
    ds[r] = 0.f;
  }
  for (int64_t j0 = 0; j0 < B; j0 += kTileJ) {
    float s[kGradRPT][2];
    score_tile<kGradRPT>(s, side.X, side.Y, B, E, i0, j0, Xs, Ys);
#pragma unroll
    for (int r = 0; r < kGradRPT; ++r) {
      const int64_t i = i0 + ty * kGradRPT + r;
#pragma unroll
      for (int c = 0; c < 2; ++c) {
        const int64_t j = j0 + tx + 16 * c;
        float dl = 0.f;
        if (i < B && j < B) {
          const float L = scale * s[r][c];
          dl = g * (expf(L - lse_r[r]) + expf(L - side.lse_other[j]) - (i == j ? 2.f : 0.f));
          ds[r] = fmaf(dl, L, ds[r]);
        }
        dLs[(ty * kGradRPT + r) * kLd + tx + 16 * c] = dl;
      }
    }
    // acc[i, :] += sum_j dL_ij Y_j, E in chunks through Ys
    for (int64_t e0 = 0; e0 < E; e0 += kChunkE) {
      __syncthreads();  // dLs complete; the previous readers of Ys are done
      for (int idx = int(threadIdx.x); idx < kTileJ * kChunkE; idx += tile::kThreads) {
        const int r = idx / kChunkE, e = idx % kChunkE;
        const int64_t gj = j0 + r, ge = e0 + e;
        Ys[r * kLd + e] = (gj < B && ge < E) ? side.Y[gj * E + ge] : 0.f;
      }
      __syncthreads();
      float part[kGradRPT][2] = {};
      tile::mul_ab<kGradRPT, 2, kTileJ>(part, dLs + ty * kGradRPT * kLd, kLd, Ys + tx, kLd);
#pragma unroll
      for (int r = 0; r < kGradRPT; ++r)
#pragma unroll
        for (int c = 0; c < 2; ++c) {
          const int64_t e = e0 + tx + 16 * c;
          if (e < E) acc[(ty * kGradRPT + r) * E + e] += part[r][c];  // this thread's own element
        }
    }
  }
  // per-row d s terms (all threads take part in the shuffles)
#pragma unroll
  for (int r = 0; r < kGradRPT; ++r) {
    const float total = half_warp_sum(ds[r]);
    const int64_t i = i0 + ty * kGradRPT + r;
    if (side.ds_rows && tx == 0 && i < B) side.ds_rows[i] = total;
  }
  if (!grad) return;  // uniform
  __syncthreads();    // acc complete
  // gy = scale * acc; grad += (gy - x (x . gy)) / ||x||, or gy / eps when the norm was clamped
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
  for (int rr = warp; rr < kGradRows; rr += tile::kThreads / 32) {
    const int64_t i = i0 + rr;
    if (i >= B) continue;  // warp-uniform
    const float* xr = side.X + i * E;
    const float* ar = acc + rr * E;
    float dot = 0.f;
    for (int64_t e = lane; e < E; e += 32) dot = fmaf(xr[e], scale * ar[e], dot);
    dot = warp_sum(dot);
    const float nrm = side.norm_own[i];
    T* gr = grad + i * E;
    for (int64_t e = lane; e < E; e += 32) {
      const float gy = scale * ar[e];
      accumulate(gr + e, nrm > kNormEps ? (gy - xr[e] * dot) / nrm : gy / kNormEps);
    }
  }
}

// grad_log_scale[0] += sum_i ds_rows[i] (fixed order). grid: 1; block: 256.
template <class T>
__global__ void __launch_bounds__(256) clip_log_scale_grad(int64_t B, const float* ds_rows, T* grad_log_scale) {
  __shared__ double scratch[8];
  double acc = 0.0;
  for (int64_t i = threadIdx.x; i < B; i += 256) acc += double(ds_rows[i]);
  const double total = block_sum_d<8>(acc, scratch);
  if (threadIdx.x == 0) accumulate(grad_log_scale, float(total));
}

template <class T>
void check_args(const ClipLossArgs<T>& a, const char* op) {
  CLIPCU_CUDA_REQUIRE(a.B >= 1 && a.E >= 1 && a.E <= kMaxE,
                      op << ": B " << a.B << " E " << a.E << " (need B >= 1, 1 <= E <= " << kMaxE << ")");
  CLIPCU_CUDA_REQUIRE(a.B < (int64_t(1) << 31) / 2, op << ": B " << a.B << " too large");
  CLIPCU_CUDA_REQUIRE(a.image && a.text && a.log_scale && a.image_n && a.text_n && a.image_norm && a.text_norm &&
                          a.row_lse && a.col_lse && a.loss,
                      op << ": a pointer is null");
}

}  // namespace

template <class T>
void clip_loss_forward(const ClipLossArgs<T>& a, cudaStream_t stream) {
  check_args(a, "clip_loss_forward");
  const unsigned rows8 = ceil_div_u(a.B, 8);
  clip_normalize<T><<<rows8, 256, 0, stream>>>(a.B, a.E, a.image, a.image_n, a.image_norm);
  CLIPCU_CUDA_CHECK_LAUNCH("clip_normalize");
  clip_normalize<T><<<rows8, 256, 0, stream>>>(a.B, a.E, a.text, a.text_n, a.text_norm);
  CLIPCU_CUDA_CHECK_LAUNCH("clip_normalize");
  const unsigned blocks = ceil_div_u(a.B, 32);
  clip_lse<T><<<blocks, tile::kThreads, 0, stream>>>(a.B, a.E, a.image_n, a.text_n, a.log_scale, a.row_lse, a.logits);
  CLIPCU_CUDA_CHECK_LAUNCH("clip_lse");
  clip_lse<T><<<blocks, tile::kThreads, 0, stream>>>(a.B, a.E, a.text_n, a.image_n, a.log_scale, a.col_lse,
                                                     static_cast<T*>(nullptr));
  CLIPCU_CUDA_CHECK_LAUNCH("clip_lse");
  clip_loss_value<T><<<1, 256, 0, stream>>>(a.B, a.E, a.image_n, a.text_n, a.row_lse, a.col_lse, a.log_scale, a.loss);
  CLIPCU_CUDA_CHECK_LAUNCH("clip_loss_value");
}

template <class T>
void clip_loss_backward(const ClipLossArgs<T>& a, const float* grad_loss, T* grad_image, T* grad_text,
                        T* grad_log_scale, cudaStream_t stream) {
  check_args(a, "clip_loss_backward");
  CLIPCU_CUDA_REQUIRE(grad_loss, "clip_loss_backward: grad_loss is null");
  CLIPCU_CUDA_REQUIRE(!grad_log_scale || a.scratch, "clip_loss_backward: the log-scale gradient needs scratch [B]");
  const unsigned blocks = ceil_div_u(a.B, kGradRows);
  const size_t smem = size_t(kGradRows * a.E) * sizeof(float);
  auto kernel = clip_grad<T>;
  // the dynamic accumulator plus the static tiles (8.25 KiB) may pass the default 48 KiB
  CLIPCU_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  if (grad_image || grad_log_scale) {
    const GradSide side{a.image_n, a.text_n, a.row_lse, a.col_lse, a.image_norm,
                        grad_log_scale ? a.scratch : nullptr};
    kernel<<<blocks, tile::kThreads, smem, stream>>>(a.B, a.E, side, a.log_scale, grad_loss, grad_image);
    CLIPCU_CUDA_CHECK_LAUNCH("clip_grad");
  }
  if (grad_text) {
    const GradSide side{a.text_n, a.image_n, a.col_lse, a.row_lse, a.text_norm, nullptr};
    kernel<<<blocks, tile::kThreads, smem, stream>>>(a.B, a.E, side, a.log_scale, grad_loss, grad_text);
    CLIPCU_CUDA_CHECK_LAUNCH("clip_grad");
  }
  if (grad_log_scale) {
    clip_log_scale_grad<T><<<1, 256, 0, stream>>>(a.B, a.scratch, grad_log_scale);
    CLIPCU_CUDA_CHECK_LAUNCH("clip_log_scale_grad");
  }
}

template void clip_loss_forward<float>(const ClipLossArgs<float>&, cudaStream_t);
template void clip_loss_forward<bf16>(const ClipLossArgs<bf16>&, cudaStream_t);
template void clip_loss_backward<float>(const ClipLossArgs<float>&, const float*, float*, float*, float*, cudaStream_t);
template void clip_loss_backward<bf16>(const ClipLossArgs<bf16>&, const float*, bf16*, bf16*, bf16*, cudaStream_t);

}  // namespace clipcu::cuda
