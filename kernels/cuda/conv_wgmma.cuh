// The Hopper implicit-GEMM convolution (ConvKernel::Wgmma, bf16): kernels/cuda/conv.cu's
// launchers call these for bf16 products; each returns false when the shape has no wgmma path
// (sizes past the 32-bit pixel math, or tensors not 16-byte aligned where the path the shape takes
// reads them in place; the caller then runs the mma.sync TensorCore kernel).
// Internal to the kernels library. See kernels/cuda/conv_wgmma.cu.
#pragma once
#include <cuda_runtime_api.h>

#include <cstddef>

#include "kernels/cuda/conv.cuh"

namespace clipcu::cuda::convwg {

// Scratch of the pass on the path the shape takes (with 16-byte aligned tensors); 0 when it
// needs none or has no path.
size_t workspace_bytes(const ConvShape& s, ConvPass pass);

// Enqueue the pass (semantics of conv2d_forward & co. in conv.cuh; the caller has validated the
// arguments and checks that the device runs wgmma). false: no path, nothing enqueued.
bool forward(const ConvShape& s, const ConvArgs<bf16>& a, cudaStream_t stream);
bool backward_data(const ConvShape& s, const ConvArgs<bf16>& a, cudaStream_t stream);
bool backward_filter(const ConvShape& s, const ConvArgs<bf16>& a, cudaStream_t stream);  // dw only

}  // namespace clipcu::cuda::convwg
