// The shared-memory layouts of the Hopper GEMM (kernels/cuda/gemm.cu, the Wgmma backend): where
// the loader puts each element of a stage tile, and the wgmma matrix descriptors that tell the
// tensor cores where to read it. Plain constexpr code, includable from host C++ too, so that
// tests/test_cuda_ops.cpp checks the two against PTX's canonical layouts without a GPU.
//
// Both use the 128-byte swizzle: inside every 1024-byte group of eight 128-byte rows (groups start
// at 1024-byte aligned shared addresses), the 16-byte chunk index of a row is XORed with the
// row's index in the group.
//   K-major tile (A [M, K] or B [N, K]: K contiguous in memory): row r (m or n) holds the stage's
//     BK = 64 k in 128 bytes; 8-row groups follow each other (1024 bytes apart).
//   MN-major tile (A [K, M] or B [K, N]): atoms of 64 (m or n) x 8 k, 8 rows of 128 bytes each
//     (row = k); atom (a, g) (a: the 64-wide MN block, g: the 8-k group) at (8 a + g) x 1024
//     bytes, so the atoms of one MN block are consecutive along K.
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define CLIPCU_WGMMA_HD __host__ __device__
#else
#define CLIPCU_WGMMA_HD
#endif

namespace clipcu::cuda::wgmma_layout {

constexpr int kBK = 64;             // K per pipeline stage: one 128-byte row of bf16
constexpr int kRowBytes = 128;
constexpr int kAtomBytes = 1024;    // the swizzle's repeating unit
constexpr int kAtomElems = kAtomBytes / 2;

// Element offsets inside a stage tile: row r of the global block copied, element e along its
// contiguous dimension (the interface of gemm.cu's tile loaders; E elements per 16-byte chunk).
struct KMajorTile {  // rows m or n, 64 k each
  static constexpr int E = 8;
  CLIPCU_WGMMA_HD static constexpr int offset(int r, int e) {
    return r * (kRowBytes / 2) + (((e >> 3) ^ (r & 7)) << 3) + (e & 7);
  }
};
struct MnMajorTile {  // rows k (kBK of them), the tile's M or N along e
  static constexpr int E = 8;
  CLIPCU_WGMMA_HD static constexpr int offset(int k, int e) {
    const int c = e >> 3;  // 16-byte chunk along M or N
    return ((c >> 3) * (kBK / 8) + (k >> 3)) * kAtomElems + (k & 7) * (kRowBytes / 2) +
           (((c & 7) ^ (k & 7)) << 3) + (e & 7);
  }
};

// A shared-memory matrix descriptor with the 128-byte swizzle: start address, leading and stride
// byte offsets, each stored >> 4 in 14 bits (bits 0-13, 16-29, 32-45), base offset 0, swizzle
// mode 1 (bits 62-63). The start address is the low field: adding (bytes >> 4) to a descriptor
// moves it (shared addresses stay below 2^18, so the field never carries over).
CLIPCU_WGMMA_HD constexpr uint64_t make_desc(uint32_t smem_addr, uint32_t lead_bytes, uint32_t stride_bytes) {
  return uint64_t((smem_addr & 0x3FFFF) >> 4) | (uint64_t((lead_bytes & 0x3FFFF) >> 4) << 16) |
         (uint64_t((stride_bytes & 0x3FFFF) >> 4) << 32) | (uint64_t(1) << 62);
}

// Where the operand rows starting at MN offset mn0 (a multiple of 64) begin in a tile, for k16
// slice 0, and the descriptor's two byte offsets:
//   K-major:  start mn0 rows on; leading unused with swizzling (1, i.e. 16 bytes); stride 1024
//             (the next 8 rows);
//   MN-major: start at atom column mn0 / 64; leading 8 x 1024 (the next 64 of M or N); stride
//             1024 (the next 8 k).
// slice_step: the bytes from k16 slice ks to ks + 1 (2 chunks along a row; 2 atoms along K).
struct SliceDesc {
  uint32_t start, lead, stride;
};
template <bool kMnMajor>
CLIPCU_WGMMA_HD constexpr SliceDesc slice0(int mn0) {
  if constexpr (kMnMajor) {
    return {uint32_t((mn0 / 64) * (kBK / 8) * kAtomBytes), uint32_t((kBK / 8) * kAtomBytes), uint32_t(kAtomBytes)};
  } else {
    return {uint32_t(mn0 * kRowBytes), 16u, uint32_t(kAtomBytes)};
  }
}
template <bool kMnMajor>
constexpr uint32_t kSliceStep = kMnMajor ? 2 * kAtomBytes : 32;

}  // namespace clipcu::cuda::wgmma_layout
