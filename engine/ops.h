// Differentiable ops: the op set of the engine (coarse: one op = one kernel family).
//
// Every op takes and returns Tensors, checks shapes (errors name the op, the argument and the
// shapes), computes on the CPU twin (kernels/cpu/) or the CUDA kernels (kernels/cuda/) by the
// inputs' device, and records itself on the tape (engine/autograd.h) when an input requires a
// gradient. Floating inputs of one op share one dtype: F32 (the reference) or F64 (the
// finite-difference checks); the CUDA backend adds BF16. Index inputs are I32 or I64.
// Outputs are new contiguous tensors, except reshape's, which shares its input's storage.
// Sizes are named as in the math: B batch, T tokens, C channels, H heads, D head dim, N rows,
// K reduction, E embedding.
#pragma once
#include <vector>

#include "engine/tensor.h"

namespace clipcu::ops {

// ---------------------------------------------------------------- elementwise
// a + b. b's shape must equal a's or be a suffix of it (b broadcasts over a's leading dims:
// a bias [C] onto [N, C], a positional embedding [T, C] onto [B, T, C]).
Tensor add(const Tensor& a, const Tensor& b);
// a * b with the same broadcasting rule as add.
Tensor mul(const Tensor& a, const Tensor& b);
Tensor scale(const Tensor& x, double s);  // s * x
Tensor relu(const Tensor& x);
Tensor quick_gelu(const Tensor& x);         // x * sigmoid(1.702 x)
Tensor gelu(const Tensor& x, bool tanh_approx = false);  // erf form, or the tanh approximation
Tensor exp(const Tensor& x);

// ---------------------------------------------------------------- shapes
// A view of x with a new shape (one -1 allowed): no copy, the storage is shared, so writing into
// the result writes into x. Recorded on the tape like any op (its gradient is reshaped back).
Tensor reshape(const Tensor& x, const Shape& shape);
// The others materialize a new contiguous tensor.
Tensor permute(const Tensor& x, const std::vector<int>& dims);
Tensor slice(const Tensor& x, int dim, int64_t start, int64_t end);  // [start, end) along dim
Tensor concat(const std::vector<Tensor>& xs, int dim);
// x [B, T, C], index [B] (I32/I64) -> [B, C] with out[b] = x[b, index[b]] (text pooling).
Tensor gather_rows(const Tensor& x, const Tensor& index);
Tensor mean(const Tensor& x, int dim, bool keepdim = false);
Tensor sum_all(const Tensor& x);  // -> [1]
// Attention head layouts in one copy each. qkv [B, T, 3*H*D] (a fused q/k/v projection: q, k and
// v side by side along the last dim, each [H, D] head-major) -> {q, k, v}, each [B, H, T, D]:
// the same as slicing each third and permuting reshape(part, {B, T, H, D}) by {0, 2, 1, 3}.
std::vector<Tensor> split_qkv_heads(const Tensor& qkv, int64_t H);
// x [B, H, T, D] -> [B, T, H*D]: the same as reshape(permute(x, {0, 2, 1, 3}), {B, T, H*D}).
Tensor merge_heads(const Tensor& x);

// ---------------------------------------------------------------- dense
// a [M, K] (or [K, M] when trans_a) times b [K, N] (or [N, K] when trans_b) -> [M, N].
Tensor matmul(const Tensor& a, const Tensor& b, bool trans_a = false, bool trans_b = false);
// x [..., K], weight [N, K], bias [N] or undefined -> [..., N]: y = x W^T + b.
Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias = Tensor());

// ---------------------------------------------------------------- normalization
// Over the last dim: x [..., C], weight [C], bias [C].
Tensor layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps = 1e-5);
// x [N, C] -> x / max(||x||_2, 1e-12) per row.
Tensor l2_normalize(const Tensor& x);
// x [N, C, H, W]; weight, bias [C]. training: batch statistics, and running_mean/running_var
// (plain tensors, no gradient) are updated in place with momentum, running_var with the
// unbiased batch variance (PyTorch's rule). Inference: the running statistics are used.
Tensor batch_norm2d(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor running_mean,
                    Tensor running_var, bool training, double momentum = 0.1, double eps = 1e-5);
// relu(batch_norm2d(...)), the ResNet pattern: one fused op (and kernel) each way, on the GPU and
// on the CPU.
Tensor batch_norm2d_relu(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor running_mean,
                         Tensor running_var, bool training, double momentum = 0.1, double eps = 1e-5);

// ---------------------------------------------------------------- attention
// q [B, H, Tq, D], k, v [B, H, Tk, D] -> softmax(q k^T / sqrt(D)) v, [B, H, Tq, D].
// causal masks key j > query i (needs Tq == Tk).
Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v, bool causal = false);

// ---------------------------------------------------------------- convolution and pooling (NCHW)
// x [N, Cin, H, W], weight [Cout, Cin, kh, kw], bias [Cout] or undefined.
Tensor conv2d(const Tensor& x, const Tensor& weight, const Tensor& bias, int stride, int padding);
// Average pooling with kernel = stride = k, no padding (floor): [N, C, H/k, W/k].
Tensor avg_pool2d(const Tensor& x, int k);

// ---------------------------------------------------------------- embeddings and losses
// table [V, C], ids [...] (I32/I64, each in [0, V)) -> [..., C]; backward is a scatter-add.
Tensor embedding(const Tensor& table, const Tensor& ids);
// logits [N, C], targets [N] (I32/I64) -> [1]: mean over rows of -log softmax(logits)[target].
Tensor softmax_cross_entropy(const Tensor& logits, const Tensor& targets);

struct ClipLossOut {
  Tensor loss;              // [1]: (CE(logits, arange) + CE(logits^T, arange)) / 2
  Tensor logits_per_image;  // [B, B] = exp(log_scale) * normalize(img) normalize(txt)^T (no gradient)
};
// image_features, text_features [B, E] (unnormalized), log_scale [1] (or [] scalar).
// One fused op: normalization, scaled logits, both cross entropies; gradients for both
// feature sets and for the log-scale.
ClipLossOut clip_loss(const Tensor& image_features, const Tensor& text_features, const Tensor& log_scale);

}  // namespace clipcu::ops
