// The Hopper implicit-GEMM convolution (ConvKernel::Wgmma, bf16): kernels/cuda/conv.cu's
// launchers call these for bf16 products; each returns false when the shape has no wgmma path
// (sizes past the 32-bit pixel math; the caller then runs the mma.sync TensorCore kernel).
// Internal to the kernels library. See kernels/cuda/conv_wgmma.cu.
#pragma once
#include <cuda_runtime_api.h>

#include <cstddef>

#include "kernels/cuda/conv.cuh"

namespace clipcu::cuda::convwg {

// Scratch of the pass on either of its paths the shape allows (the larger: the path also depends
// on the pointers' alignment, see conv_wgmma.cu); 0 when it has none.
size_t workspace_bytes(const ConvShape& s, ConvPass pass);

// Enqueue the pass (semantics of conv2d_forward & co. in conv.cuh; the caller has validated the
// arguments and checks that the device runs wgmma). false: no path, nothing enqueued.
bool forward(const ConvShape& s, const ConvArgs<bf16>& a, cudaStream_t stream);
bool backward_data(const ConvShape& s, const ConvArgs<bf16>& a, cudaStream_t stream);
bool backward_filter(const ConvShape& s, const ConvArgs<bf16>& a, cudaStream_t stream);  // dw only

}  // namespace clipcu::cuda::convwg
