// CUDA 2-d convolution, NCHW, float or bf16 storage with float accumulation: forward,
// backward-data and backward-filter (+ bias), with the same math as kernels/cpu/conv2d.h:
//   y[n, co, oh, ow] = bias[co] + sum_{ci, kh, kw} w[co, ci, kh, kw] x[n, ci, oh*s - p + kh, ow*s - p + kw]
// (zero outside the input), OH = (H + 2p - KH) / s + 1 (floor), the same for OW.
// Backward: dx += conv_transpose(dy, w); dw += correlation of x and dy; dbias += sum dy. The
// backward passes ACCUMULATE (+=), as the tape's gradient contract asks.
//
// Kernels (ConvKernel), one interface, chosen at run time:
//   Simple:     SIMT direct convolution (a thread per output / input-gradient element, a block per
//               weight-gradient element), float accumulation: float32 accuracy; the oracle.
//   TensorCore: implicit GEMM on mma.sync tensor cores (bf16 m16n8k16; float as TF32 m16n8k8, so
//               about 1e-3 relative error, not float32 accuracy), NCHW read in place (see conv.cu).
//   Cudnn:      cuDNN's legacy convolution API (the baseline, and a fallback); float uses TF32
//               only when allow_tf32 (otherwise FMA math and no FFT / Winograd algorithms).
//   Wgmma:      Hopper's warpgroup MMA (sm_90a builds on sm_90 GPUs), bf16: implicit GEMM
//               with 16-byte gathers from NHWC copies of the activations (made inside the call)
//               or, for 1x1 stride-1 layers with H W % 8 == 0, from the NCHW tensors in place
//               (see conv_wgmma.cu); channel counts are padded to multiples of 8 in the
//               copies. Float storage (and sizes past its 32-bit pixel math) run the
//               TensorCore kernel.
//
// Every launcher validates its arguments (throws clipcu::Error), never allocates, and takes its
// scratch from ConvArgs::workspace, at least conv2d_workspace_bytes() for that pass.
#pragma once
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <vector>

#include "kernels/cuda/common/types.h"

namespace clipcu::cuda {

// New values go at the end (the numbering of the existing ones stays).
enum class ConvKernel { Simple, TensorCore, Cudnn, Wgmma };
const char* conv_kernel_name(ConvKernel k);
// True when this build links cuDNN (ConvKernel::Cudnn works).
bool conv_cudnn_built();
// Whether ConvKernel::Wgmma runs bf16 on the device: gemm_wgmma_available(device) (a Hopper GPU,
// sm_90a code, CLIPCU_WGMMA not 0) and CLIPCU_CONV_WGMMA not 0 in the environment (read once;
// the device check sets it when the convolution's wgmma smoke test fails).
bool conv_wgmma_available(int device);
// Every kernel this build can run on the device, in enum order (Wgmma where
// conv_wgmma_available(device), Cudnn where conv_cudnn_built()).
std::vector<ConvKernel> conv_kernels(int device = 0);

enum class ConvPass { Forward, BackwardData, BackwardFilter };

struct ConvShape {
  int64_t N = 0, Cin = 0, H = 0, W = 0;  // x [N, Cin, H, W]
  int64_t Cout = 0, KH = 0, KW = 0;      // w [Cout, Cin, KH, KW]
  int64_t stride = 1, padding = 0;
  int64_t OH = 0, OW = 0;  // y [N, Cout, OH, OW]; conv_shape() fills them
  ConvKernel kernel = ConvKernel::TensorCore;
  bool allow_tf32 = true;   // Cudnn with float storage: TF32 tensor cores allowed
  void* cudnn = nullptr;    // Cudnn: a cudnnHandle_t (engine/cuda_runtime.h's cudnn_handle())
};
// A ConvShape with OH, OW computed; throws clipcu::Error on sizes that make no convolution.
ConvShape conv_shape(int64_t N, int64_t Cin, int64_t H, int64_t W, int64_t Cout, int64_t KH, int64_t KW,
                     int64_t stride, int64_t padding, ConvKernel kernel = ConvKernel::TensorCore);

template <class T>
struct ConvArgs {
  const T* x = nullptr;     // [N, Cin, H, W]
  const T* w = nullptr;     // [Cout, Cin, KH, KW]
  const T* bias = nullptr;  // [Cout] or nullptr (forward)
  T* y = nullptr;           // [N, Cout, OH, OW] (forward: written)
  const T* dy = nullptr;    // [N, Cout, OH, OW] (backward)
  T* dx = nullptr;          // [N, Cin, H, W] (backward-data: accumulated)
  T* dw = nullptr;          // [Cout, Cin, KH, KW] (backward-filter: accumulated) or nullptr
  T* dbias = nullptr;       // [Cout] (backward-filter: accumulated) or nullptr
  void* workspace = nullptr;  // conv2d_workspace_bytes(shape, pass) bytes, 256-byte aligned
  size_t workspace_bytes = 0;
};

// Scratch one pass needs. TensorCore: the weight in the layout of the GEMM (forward with a
// kernel larger than 1x1, backward-data always) and the split-K partial sums of backward-filter.
// Wgmma: the NHWC copies, the reordered weight and the partial sums, or the TensorCore's needs
// where it falls back (the larger).
// Cudnn: the chosen algorithm's workspace (choosing it here, cached per shape and type, so this
// needs the handle). Simple: none.
template <class T>
size_t conv2d_workspace_bytes(const ConvShape& s, ConvPass pass);

// Whether cuDNN has an algorithm this path accepts (deterministic, within the workspace limit,
// exact for float without TF32) for all three passes of s (s.cudnn set); false without cuDNN.
// The choices are cached like conv2d_workspace_bytes's. The engine falls back to our kernels
// when its default (cuDNN) has none.
template <class T>
bool conv_cudnn_has_algorithms(const ConvShape& s);

template <class T>
void conv2d_forward(const ConvShape& s, const ConvArgs<T>& a, cudaStream_t stream);
template <class T>
void conv2d_backward_data(const ConvShape& s, const ConvArgs<T>& a, cudaStream_t stream);
// dw and/or dbias (either may be nullptr).
template <class T>
void conv2d_backward_filter(const ConvShape& s, const ConvArgs<T>& a, cudaStream_t stream);

}  // namespace clipcu::cuda
