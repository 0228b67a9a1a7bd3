// The Hopper tensor-core pipeline shared by the wgmma GEMM (kernels/cuda/gemm.cu) and the wgmma
// implicit-GEMM convolution (kernels/cuda/conv_wgmma.cu): cp.async copies, the wgmma
// instructions, one block's shared-memory stages, the K loop (`mainloop`) and the epilogue's
// staging of the accumulators (`epilogue`). Include from .cu files only.
//
// A block of two warpgroups (256 threads) computes a BM x BN tile of C = A B: 128 x 256 or
// 128 x 128 (warpgroup w owns rows 64 w .. 64 w + 63, all columns), or 64 x 256 (both own the 64
// rows, warpgroup w columns 128 w ..: for products with at most 64 rows). Each issues
// wgmma.m64n128k16 (one per 128 of its columns per k16 step), both operands read by the tensor
// cores straight from shared memory through matrix descriptors; the f32 accumulators (64 per
// 128 columns per thread) live in registers.
//
// Shared tiles use the 128-byte swizzle of the wgmma descriptors, K-major or MN-major by operand
// (kernels/cuda/gemm_wgmma_layout.h: the offsets and descriptors, checked against PTX's
// canonical layouts by a host test): the k16 slice ks of a K-major tile starts 32 ks bytes into
// each row (the hardware swizzles the summed address), that of an MN-major tile 2 ks atoms on;
// the instruction's transpose flag tells the tensor cores which of the two they read. The caller
// fills the stages (its `load_stage`), with 16-byte cp.async copies or plain stores.
//
// Pipeline (kStages shared stages, kStages - 2 steps of loads ahead): at step kt every thread
// waits for its own copies of step kt, makes them visible to the tensor cores' async proxy
// (fence.proxy.async), and the block meets at one barrier; then the warpgroups issue step kt's
// wgmmas, the threads issue the copies of step kt + kStages - 2 into the stage of step kt - 2,
// and each warpgroup waits until at most one wgmma group (step kt's) is in flight. Step
// kt - 2's stage is free at step kt's barrier because every warpgroup had waited for its step
// kt - 2 group before arriving there (in step kt - 1).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/common/device.cuh"
#include "kernels/cuda/gemm_wgmma_layout.h"

namespace clipcu::cuda::tc {

// ---------------------------------------------------------------- cp.async (sm_80 and later)
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, int src_bytes) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(src_bytes) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
// "memory": no shared-memory access may be moved across the wait by the compiler
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// ---------------------------------------------------------------- geometry
// wgmma and the async-proxy fence need sm_90a's architecture-specific instructions: kernels that
// use them have a body only where CLIPCU_HAS_WGMMA is 1 (other targets compile them empty and the
// host never launches them there: gemm_wgmma_available runs a probe compiled under the same
// condition).
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define CLIPCU_HAS_WGMMA 1
#else
#define CLIPCU_HAS_WGMMA 0
#endif

using wgmma_layout::kAtomBytes;
using wgmma_layout::KMajorTile;
using wgmma_layout::MnMajorTile;
constexpr int BK = wgmma_layout::kBK;
constexpr int kThreads = 256;     // two warpgroups
constexpr int kInstN = 128;       // N of one wgmma
constexpr int kScratchLd = 64 + 8;  // epilogue staging row in floats (conflict-free float2 writes)

template <int BM_, int BN_>
struct Geo {
  static constexpr int BM = BM_, BN = BN_;
  static_assert((BM == 128 && (BN == 128 || BN == 256)) || (BM == 64 && BN == 256),
                "block tile 128 x 128, 128 x 256 or 64 x 256");
  static constexpr int kWgM = BM / 64, kWgN = 2 / kWgM;  // warpgroups along M and N
  static constexpr int kWgCols = BN / kWgN;             // a warpgroup's columns
  static constexpr int kInsts = kWgCols / kInstN;       // wgmmas per k16 step and warpgroup
  // as many stages as fit in 200 KB (4 for 128 x 256, 5 for 64 x 256, 6 for 128 x 128)
  static constexpr int kStages = 204800 / ((BM + BN) * BK * 2) < 6 ? 204800 / ((BM + BN) * BK * 2) : 6;
  static constexpr int kAElems = BM * BK, kBElems = BN * BK;
  static constexpr size_t kPipeBytes = size_t(kStages) * (kAElems + kBElems) * 2;
  static constexpr size_t kScratchBytes = size_t(kThreads / 32) * 16 * kScratchLd * sizeof(float);
  // + 1024: the dynamic shared memory is aligned up to the swizzle's 1024 bytes in the kernel
  static constexpr size_t kSmemBytes = (kPipeBytes > kScratchBytes ? kPipeBytes : kScratchBytes) + kAtomBytes;
};

// The stages in a block's dynamic shared memory, aligned to the swizzle's 1024 bytes (in the
// shared address space the descriptors use): A stages [kStages][kAElems], then B stages.
template <int BM, int BN>
struct Stages {
  unsigned char* base;  // also the epilogue's scratch
  bf16* as;
  bf16* bs;
  uint32_t as_addr, bs_addr;
};
template <int BM, int BN>
__device__ __forceinline__ Stages<BM, BN> stages(unsigned char* smem_raw) {
  using G = Geo<BM, BN>;
  const uint32_t raw_addr = static_cast<uint32_t>(__cvta_generic_to_shared(smem_raw));
  const uint32_t pad = (kAtomBytes - (raw_addr % kAtomBytes)) % kAtomBytes;
  Stages<BM, BN> s;
  s.base = smem_raw + pad;
  s.as = reinterpret_cast<bf16*>(s.base);
  s.bs = s.as + G::kStages * G::kAElems;
  s.as_addr = raw_addr + pad;
  s.bs_addr = s.as_addr + uint32_t(G::kStages * G::kAElems * 2);
  return s;
}

// Copies the block at (r0, c0) of a row-major global matrix [rows][cols] into a stage tile with
// 16-byte cp.async chunks, zero outside the matrix: 16-byte aligned base and cols a multiple of
// 8, so a chunk is wholly inside or outside. Consecutive threads copy consecutive chunks of a
// row (coalesced); a thread's chunks sit kStep rows apart in one column of chunks, and because
// kStep is a multiple of the swizzle's 8 rows they are also a fixed distance apart in the tile,
// so one source pointer and one destination walk them (the accumulators leave little room).
template <class Tile, int kRows, int kChunks>
__device__ __forceinline__ void load_stage_tile(bf16* s, const bf16* g, int64_t rows, int64_t cols, int64_t r0,
                                                int64_t c0) {
  constexpr int kStep = kThreads / kChunks, kPer = kRows / kStep;
  static_assert(kThreads % kChunks == 0 && kStep % 8 == 0 && kRows % kStep == 0, "whole swizzle groups per step");
  constexpr int kDstStep = Tile::offset(kStep, 0) - Tile::offset(0, 0);
  const int rt = int(threadIdx.x) / kChunks, ct = int(threadIdx.x) % kChunks;
  const int64_t gc = c0 + int64_t(ct) * Tile::E;
  const bool col_ok = gc < cols;
  const bf16* src = g + (r0 + rt) * cols + gc;
  bf16* dst = s + Tile::offset(rt, ct * Tile::E);
  const int64_t src_step = int64_t(kStep) * cols;
  int64_t rows_left = rows - (r0 + rt);  // rows at or below this thread's first
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    const bool ok = col_ok && rows_left > 0;
    cp_async16(dst, ok ? src : g, ok ? 16 : 0);
    src += src_step;
    dst += kDstStep;
    rows_left -= kStep;
  }
}

#if CLIPCU_HAS_WGMMA
// The descriptor of k16 slice 0 of the stage-0 tile at smem address `tile`, for the rows starting
// at MN offset mn0 (a multiple of 64); the next slices are kSliceStep bytes on.
template <bool kMnMajor>
__device__ __forceinline__ uint64_t base_desc(uint32_t tile, int mn0) {
  const wgmma_layout::SliceDesc d = wgmma_layout::slice0<kMnMajor>(mn0);
  return wgmma_layout::make_desc(tile + d.start, d.lead, d.stride);
}
using wgmma_layout::kSliceStep;

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// Generic-proxy writes to shared memory (cp.async, st.shared) before async-proxy reads (wgmma).
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
// Keeps the compiler from moving accumulator accesses across the asynchronous wgmma window.
template <int N>
__device__ __forceinline__ void fence_regs(float (&d)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

// D[64 x 128] += A[64 x 16] B[16 x 128], bf16 inputs from shared memory, f32 accumulators.
// kTransA / kTransB: the operand is MN-major in shared memory (1) or K-major (0).
template <int kTransA, int kTransB>
__device__ __forceinline__ void wgmma_m64n128k16(float (&d)[64], uint64_t desc_a, uint64_t desc_b) {
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "setp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "
      "%64, %65, p, 1, 1, %67, %68;\n"
      "}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
        "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
        "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
        "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
        "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
        "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "l"(desc_a), "l"(desc_b), "r"(1), "n"(kTransA), "n"(kTransB));
}

// acc += A B over KT steps of BK. kAMn / kBMn: A's / B's stage tiles are MN-major (else
// K-major). load_stage(bf16* a_stage, bf16* b_stage, int64_t kt) issues this thread's copies of
// step kt into the two stage tiles (cp.async and/or st.shared; the pipeline commits and waits).
// Ends with every warpgroup done with the stages (one barrier): the caller may reuse them.
template <int BM, int BN, bool kAMn, bool kBMn, class LoadStage>
__device__ __forceinline__ void mainloop(float (&acc)[Geo<BM, BN>::kInsts][64], const Stages<BM, BN>& sm,
                                         int64_t KT, LoadStage& load_stage) {
  using G = Geo<BM, BN>;
  constexpr int kStages = G::kStages, kInsts = G::kInsts;
  const int wgi = int(threadIdx.x) / 128;  // this thread's warpgroup
  const int wm = wgi % G::kWgM, wn = wgi / G::kWgM;  // its rows 64 wm .., columns kWgCols wn ..
  constexpr int kAhead = kStages - 2;       // steps of loads in flight ahead of the one computed
#pragma unroll
  for (int s = 0; s < kAhead; ++s) {
    if (s < KT) load_stage(s, int64_t(s));
    cp_async_commit();  // possibly empty: keeps the group count uniform
  }
  // the descriptors of stage 0, k16 slice 0 (A: this warpgroup's 64 rows; B: wgmma i's 128)
  const uint64_t desc_a0 = base_desc<kAMn>(sm.as_addr, 64 * wm);
  uint64_t desc_b0[kInsts];
#pragma unroll
  for (int i = 0; i < kInsts; ++i) desc_b0[i] = base_desc<kBMn>(sm.bs_addr, G::kWgCols * wn + kInstN * i);
  int stage = 0, write_stage = kAhead;
  for (int64_t kt = 0; kt < KT; ++kt) {
    // groups committed so far: kAhead + kt; at most kAhead - 1 pending => step kt landed
    cp_async_wait<kAhead - 1>();
    fence_proxy_async();
    __syncthreads();  // step kt is in shared memory; step kt - 2's wgmmas are done everywhere
    const uint64_t da = desc_a0 + uint64_t(stage * (G::kAElems * 2 / 16));
    const uint64_t db = uint64_t(stage * (G::kBElems * 2 / 16));
#pragma unroll
    for (int i = 0; i < kInsts; ++i) fence_regs(acc[i]);
    wgmma_fence();
#pragma unroll
    for (int ks = 0; ks < BK / 16; ++ks)
#pragma unroll
      for (int i = 0; i < kInsts; ++i)
        wgmma_m64n128k16<kAMn ? 1 : 0, kBMn ? 1 : 0>(acc[i], da + ks * (kSliceStep<kAMn> / 16),
                                                     desc_b0[i] + db + ks * (kSliceStep<kBMn> / 16));
    wgmma_commit();
    // the copies of step kt + kAhead go to the stage of step kt - 2 (free, see above)
    if (kt + kAhead < KT) load_stage(write_stage, kt + kAhead);
    cp_async_commit();
    wgmma_wait<1>();  // step kt - 1's group is done (this warpgroup)
#pragma unroll
    for (int i = 0; i < kInsts; ++i) fence_regs(acc[i]);
    stage = stage + 1 == kStages ? 0 : stage + 1;
    write_stage = write_stage + 1 == kStages ? 0 : write_stage + 1;
  }
  wgmma_wait<0>();
#pragma unroll
  for (int i = 0; i < kInsts; ++i) fence_regs(acc[i]);
  cp_async_wait<0>();  // only empty groups can be pending; leave none behind
  __syncthreads();     // every warpgroup is done with the stages: the scratch reuses them
}

// Hands the accumulators to store(int r, int c, const float (&v)[4]): tile-local row r, columns
// c .. c + 3 (c a multiple of 4), every element of the tile once. Warp w of a warpgroup with
// rows 64 wm .. and columns c0 = kWgCols wn .. holds rows r0 + g and r0 + g + 8
// (r0 = 64 wm + 16 (w % 4), g = lane / 4) of every 8-column group j of its columns:
// acc[j / 16][4 (j % 16) + e], columns c0 + 8 j + 2 t (+1 for odd e), t = lane % 4, the +8 row
// for e >= 2 (the m16n8 accumulator layout, repeated). Pieces of 16 rows x 64 columns go
// through the warp's scratch (in `smem`, after mainloop's final barrier) and come back as 4
// consecutive columns per lane: a warp's 32 lanes cover two rows of 64 columns per call round.
template <int BM, int BN, class Store>
__device__ __forceinline__ void epilogue(float (&acc)[Geo<BM, BN>::kInsts][64], unsigned char* smem, Store& store) {
  using G = Geo<BM, BN>;
  const int wgi = int(threadIdx.x) / 128, wm = wgi % G::kWgM, wn = wgi / G::kWgM;
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
  const int row0 = 64 * wm + 16 * (warp % 4), col0 = G::kWgCols * wn;
  float* scratch = reinterpret_cast<float*>(smem) + warp * 16 * kScratchLd;
  const int g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int piece = 0; piece < G::kWgCols / 64; ++piece) {
#pragma unroll
    for (int jl = 0; jl < 8; ++jl) {
      const int j = piece * 8 + jl, i = j / 16, b = 4 * (j % 16);
      *reinterpret_cast<float2*>(scratch + g * kScratchLd + jl * 8 + 2 * t) = make_float2(acc[i][b], acc[i][b + 1]);
      *reinterpret_cast<float2*>(scratch + (g + 8) * kScratchLd + jl * 8 + 2 * t) =
          make_float2(acc[i][b + 2], acc[i][b + 3]);
    }
    __syncwarp();
#pragma unroll 1
    for (int it = 0; it < 8; ++it) {
      const int r = it * 2 + (lane >> 4), c = (lane & 15) * 4;
      const float4 v4 = *reinterpret_cast<const float4*>(scratch + r * kScratchLd + c);
      const float v[4] = {v4.x, v4.y, v4.z, v4.w};
      store(row0 + r, col0 + piece * 64 + c, v);
    }
    __syncwarp();  // the next piece overwrites the scratch
  }
}
#endif  // CLIPCU_HAS_WGMMA

}  // namespace clipcu::cuda::tc
