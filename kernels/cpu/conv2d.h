// CPU 2-d convolution, NCHW: forward, backward-data, backward-weight (+ bias), float and double.
//
// y[n, co, oh, ow] = b[co] + sum_{ci, kh, kw} w[co, ci, kh, kw] * x[n, ci, oh*s - p + kh, ow*s - p + kw]
// (zero outside the input). OH = (H + 2p - KH) / s + 1 (floor), the same for OW.
//
// Variants (ConvVariant):
//  - Direct: plain loops with float64 accumulation, the oracle.
//  - Im2col: per image, unfold x into col [Cin*KH*KW, OH*OW] and call cpu::gemm, images one
//    after another with the parallelism inside gemm (the fast path with OpenBLAS); 1x1 stride-1
//    unpadded convolutions skip the unfold (col is the image itself).
//  - Im2colBatch: the same products, OpenMP over images with a serial Blocked gemm in each
//    (the fast path without OpenBLAS, when the batch has at least as many images as threads).
//  - Auto (the default): Im2colBatch or Im2col as just said.
//
// The caller (engine/ops_conv.cpp) validates the shapes; these functions assume valid dims.
// Backward functions ACCUMULATE (+=) into dx / dweight / dbias (the tape's gradient contract);
// pass nullptr for a gradient that is not wanted.
#pragma once
#include <cstdint>

namespace clipcu::cpu {

enum class ConvVariant { Auto, Direct, Im2col, Im2colBatch };
const char* conv_variant_name(ConvVariant v);

struct Conv2dDims {
  int64_t N = 0, Cin = 0, H = 0, W = 0;  // input [N, Cin, H, W]
  int64_t Cout = 0, KH = 0, KW = 0;      // weight [Cout, Cin, KH, KW]
  int64_t stride = 1, padding = 0;
  int64_t OH = 0, OW = 0;  // output [N, Cout, OH, OW]
};
// Fills OH, OW from the rest. Requires stride >= 1, padding >= 0, H + 2p >= KH, W + 2p >= KW.
Conv2dDims conv2d_dims(int64_t N, int64_t Cin, int64_t H, int64_t W, int64_t Cout, int64_t KH, int64_t KW,
                       int64_t stride, int64_t padding);

template <class T>
void conv2d_forward(const Conv2dDims& d,
                    const T* x,     // [N, Cin, H, W]
                    const T* w,     // [Cout, Cin, KH, KW]
                    const T* bias,  // [Cout] or nullptr
                    T* y,           // [N, Cout, OH, OW] (written)
                    ConvVariant variant = ConvVariant::Auto);

// dx += conv_transpose(dy, w)
template <class T>
void conv2d_backward_data(const Conv2dDims& d,
                          const T* dy,  // [N, Cout, OH, OW]
                          const T* w,   // [Cout, Cin, KH, KW]
                          T* dx,        // [N, Cin, H, W] (accumulated)
                          ConvVariant variant = ConvVariant::Auto);

// dw += sum_n dy[n] (x) x[n] (correlation), dbias += sum_{n, oh, ow} dy; either may be nullptr.
template <class T>
void conv2d_backward_weight(const Conv2dDims& d,
                            const T* x,   // [N, Cin, H, W]
                            const T* dy,  // [N, Cout, OH, OW]
                            T* dw,        // [Cout, Cin, KH, KW] (accumulated) or nullptr
                            T* dbias,     // [Cout] (accumulated) or nullptr
                            ConvVariant variant = ConvVariant::Auto);

// The unfold and its adjoint, exposed for tests and benchmarks.
// col[(ci*KH + kh)*KW + kw, oh*OW + ow] = x[ci, oh*s - p + kh, ow*s - p + kw] (0 outside).
template <class T>
void im2col(const Conv2dDims& d,
            const T* x,  // [Cin, H, W] (one image)
            T* col);     // [Cin*KH*KW, OH*OW] (written)
// dx[ci, ih, iw] += every col entry that im2col read from (ci, ih, iw).
template <class T>
void col2im(const Conv2dDims& d,
            const T* col,  // [Cin*KH*KW, OH*OW]
            T* dx);        // [Cin, H, W] (accumulated)

}  // namespace clipcu::cpu
