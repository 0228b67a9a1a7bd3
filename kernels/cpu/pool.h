// CPU average pooling with kernel = stride = k and no padding (floor), as nn.AvgPool2d(k) in
// CLIP's ModifiedResNet: y[nc, oh, ow] = mean of the k x k window x[nc, oh*k .. oh*k+k-1, ow*k ..].
// Rows and columns past OH*k / OW*k (H % k, W % k of them) are dropped and get no gradient.
// The caller (engine/ops_conv.cpp) validates shapes (H >= k, W >= k).
#pragma once
#include <cstdint>

namespace clipcu::cpu {

// NC = N * C planes; OH = H / k, OW = W / k.
template <class T>
void avgpool2d_forward(int64_t NC, int64_t H, int64_t W, int64_t k,
                       const T* x,  // [NC, H, W]
                       T* y);       // [NC, H/k, W/k] (written)

// dx[nc, ih, iw] += dy[nc, ih/k, iw/k] / k^2 inside the pooled region.
template <class T>
void avgpool2d_backward(int64_t NC, int64_t H, int64_t W, int64_t k,
                        const T* dy,  // [NC, H/k, W/k]
                        T* dx);       // [NC, H, W] (accumulated)

}  // namespace clipcu::cpu
