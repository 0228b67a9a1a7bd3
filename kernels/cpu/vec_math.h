// Vectorizable float math for the CPU kernels: exp without a library call.
//
// glibc's expf is a function call per element, so a loop around it stays scalar (~15 ns per
// element measured in quick_gelu). exp_f32 below is branch-free inline code that the compiler
// turns into SIMD instructions inside `#pragma omp simd` loops.
//
// Algorithm (Cody-Waite range reduction + polynomial):
//   n = round(x / ln 2), r = x - n ln 2 in [-ln2/2, ln2/2] (ln 2 split in a short high part,
//   exact when multiplied by n, and a low part), e^r = 1 + r + r^2 q(r) with q a degree-4
//   polynomial fitted to (e^r - 1 - r) / r^2 (relative error 3e-9 in exact arithmetic),
//   e^x = e^r * 2^n, with 2^n built from the exponent bits in two halves so that results in
//   float's subnormal range and the overflow to +inf come out as from a correctly rounded exp.
// Accuracy: at most 1 ulp from the exact value over [-87, 88] (float arithmetic, no FMA,
// checked against float64 exp on 2e7 points; glibc's expf is within 0.5 ulp); exp(0) == 1
// exactly; x > 89 gives +inf, x < -104 gives +0, NaN stays NaN.
// float64 keeps std::exp: the finite-difference checks run in float64 and need its accuracy.
//
// Also here: CLIPCU_TARGET_AVX2 and cpu_has_avx2_fma(), for the few compute-heavy elementwise
// loops that keep an AVX2 + FMA copy of themselves beside the baseline (SSE2) one and pick it at
// run time. The build targets baseline x86-64, so the binary runs anywhere; the choice depends
// only on the CPU, so one machine always computes the same bits (FMA rounds differently from a
// separate multiply and add, so two kinds of CPU may differ in the last bit).
#pragma once
#include <bit>
#include <cmath>
#include <cstdint>

#if (defined(__x86_64__) || defined(_M_X64)) && defined(__GNUC__)
#define CLIPCU_TARGET_AVX2 __attribute__((target("avx2,fma")))
#define CLIPCU_HAS_AVX2_PATH 1
#else
#define CLIPCU_TARGET_AVX2
#define CLIPCU_HAS_AVX2_PATH 0
#endif

namespace clipcu::cpu {

// Whether the AVX2 + FMA copies may run on this CPU (always false off x86-64).
inline bool cpu_has_avx2_fma() {
#if CLIPCU_HAS_AVX2_PATH
  static const bool yes = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return yes;
#else
  return false;
#endif
}

inline float exp_f32(float x) {
  constexpr float kLog2e = 1.44269504088896341f;
  constexpr float kLn2Hi = 0.693359375f;     // 355 / 512: n * kLn2Hi is exact for |n| < 2^15
  constexpr float kLn2Lo = -2.12194440e-4f;  // ln 2 - kLn2Hi
  constexpr float kRound = 12582912.0f;      // 1.5 * 2^23: adding it rounds to an integer
  constexpr float c2 = 0.4999999404f, c3 = 0.1666652113f, c4 = 0.04166838527f, c5 = 0.008368710056f,
                  c6 = 0.001381464652f;
  const float t = x * kLog2e + kRound;
  const float n = t - kRound;  // round(x / ln 2), as a float
  // the same integer from the bits of t (unsigned arithmetic: no overflow for any x)
  const int32_t ni = int32_t(std::bit_cast<uint32_t>(t) - std::bit_cast<uint32_t>(kRound));
  float r = x - n * kLn2Hi;
  r = r - n * kLn2Lo;
  const float q = (((c6 * r + c5) * r + c4) * r + c3) * r + c2;
  const float er = (r * r) * q + r + 1.0f;
  // 2^n = 2^n1 * 2^n2 with both halves normal floats for n in [-150, 129] (n1 = floor(n / 2)).
  const int32_t n1 = ni >> 1;
  const uint32_t s1 = uint32_t(n1 + 127) << 23, s2 = uint32_t(ni - n1 + 127) << 23;
  uint32_t y = std::bit_cast<uint32_t>((er * std::bit_cast<float>(s1)) * std::bit_cast<float>(s2));
  // Outside [-104, 89] the result is +inf or +0 (exp(89) overflows, exp(-104) rounds to 0),
  // whatever the garbage computed above. Bit masks, not ?: on floats: GCC turns a float
  // clamp or select into branches here (jump threading) and then cannot vectorize the loop.
  const uint32_t over = 0u - uint32_t(x > 89.0f), under = 0u - uint32_t(x < -104.0f);
  y = (y & ~over) | (0x7f800000u & over);
  y &= ~under;
  return std::bit_cast<float>(y);
}

// e^x: the vectorizable approximation for float, the library's exp for double.
template <class T>
inline T exp_fast(T x) {
  if constexpr (sizeof(T) == sizeof(float)) {
    return exp_f32(x);
  } else {
    return std::exp(x);
  }
}

}  // namespace clipcu::cpu
