// The Hopper implicit-GEMM convolution (ConvKernel::Wgmma, bf16): kernels/cuda/conv.cu's
// launchers call these for bf16 products; each returns false when the shape has no wgmma path
// (sizes past the 32-bit pixel math; the caller then runs the mma.sync TensorCore kernel).
// Internal to the kernels library. See kernels/cuda/conv_wgmma.cu.
#pragma once
#include <cuda_runtime_api.h>

#include <cstddef>

#include "kernels/cuda/conv.cuh"

namespace clipcu::cuda::convwg {

// How a pass of a shape runs on this kernel: Nhwc (activations gathered from NHWC copies with
// channels padded to multiples of 8: any kernel size, stride, padding and channel count), Direct
// (1x1, stride 1, no padding, H W % 8 == 0, channel counts multiples of 8: the NCHW tensors read
// in place, no copies), or None (too large for 32-bit pixel indices).
enum class Path { None, Nhwc, Direct };
// `aligned`: the tensors of the pass are 16-byte aligned (Direct reads them with 16-byte copies).
Path path_of(const ConvShape& s, ConvPass pass, bool aligned);
const char* path_name(Path p);

// Scratch of the pass on either path its shape allows (the larger); 0 when it has none.
size_t workspace_bytes(const ConvShape& s, ConvPass pass);

// Enqueue the pass (semantics of conv2d_forward & co. in conv.cuh; the caller has validated the
// arguments and checks that the device runs wgmma). false: no path, nothing enqueued.
bool forward(const ConvShape& s, const ConvArgs<bf16>& a, cudaStream_t stream);
bool backward_data(const ConvShape& s, const ConvArgs<bf16>& a, cudaStream_t stream);
bool backward_filter(const ConvShape& s, const ConvArgs<bf16>& a, cudaStream_t stream);  // dw only

}  // namespace clipcu::cuda::convwg
