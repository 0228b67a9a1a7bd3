// Vectorizable float math for the CPU kernels: exp and erfc without a library call.
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

// Bitwise select: a where mask is all ones, b where it is zero (see exp_f32 on why not ?:).
inline float select_f32(uint32_t mask, float a, float b) {
  return std::bit_cast<float>((std::bit_cast<uint32_t>(a) & mask) | (std::bit_cast<uint32_t>(b) & ~mask));
}

// erfc(x) without a library call, for exact GELU: glibc's erfcf is a call per element (a ViT-B/32
// training step on the CPU spent 10% of its time in it). Branch-free inline code like exp_f32.
// With a = |x| (clamped to 10.5, where erfc has underflowed to 0: keeps inf - inf out below):
//   a < 0.5:  erfc = 1 - a P(a^2), P a degree-5 least-squares fit of erf(a) / a on [0, 0.5]
//             (relative error 4e-11 in exact arithmetic; erfc >= 0.47 there: no cancellation);
//   a >= 0.5: erfc = e^(-a^2) t Q(t) with t = 1 / (1 + a / 2), Q a degree-9 least-squares fit of
//             erfc(a) e^(a^2) / t on [0.5, 10.5] (relative error 1.4e-8 in exact arithmetic).
//             e^(-a^2) = e^(-h^2) e^(-l (a + h)) with h = a with its low 12 mantissa bits
//             cleared (so h^2 is exact) and l = a - h: rounding a^2 itself would cost up to
//             a^2 * 6e-8 relative (7e-6 at a = 10);
//   x < 0:    erfc(x) = 2 - erfc(-x).
// (Coefficients fitted with numpy against float64 erfc, then rounded to float.)
// Accuracy: within 8 ulp of the exact value wherever it is a normal float (checked against
// float64 erfc over [-4, 10] in tests/test_activation.cpp; typically under 1 ulp). erfc(0) = 1,
// erfc(+inf) = 0, erfc(-inf) = 2, NaN stays NaN.
inline float erfc_f32(float x) {
  const float a0 = std::fabs(x);
  const float a = select_f32(0u - uint32_t(a0 > 10.5f), 10.5f, a0);  // NaN > 10.5 is false: stays NaN
  const float s = a * a;
  const float p = ((((-7.727515185e-04f * s + 5.202311091e-03f) * s - 2.686352096e-02f) * s + 1.128377691e-01f) * s -
                   3.761263788e-01f) * s + 1.128379226e+00f;
  const float near = 1.0f - a * p;
  const float t = 1.0f / (1.0f + 0.5f * a);
  const float q =
      ((((((((-3.969229385e-02f * t + 1.058071852e-01f) * t - 7.286933251e-03f) * t - 2.001233697e-01f) * t +
            1.065818593e-01f) * t + 3.719573095e-02f) * t + 1.881116778e-01f) * t + 2.450262755e-01f) * t +
       2.822485268e-01f) * t + 2.820892036e-01f;
  const float h = std::bit_cast<float>(std::bit_cast<uint32_t>(a) & 0xFFFFF000u);
  const float l = a - h;
  const float far = (exp_f32(-(h * h)) * exp_f32(-(l * (a + h))) * t) * q;
  const float r = select_f32(0u - uint32_t(a < 0.5f), near, far);
  return select_f32(0u - uint32_t(x < 0.0f), 2.0f - r, r);
}

// erfc: the vectorizable approximation for float, the library's erfc for double.
template <class T>
inline T erfc_fast(T x) {
  if constexpr (sizeof(T) == sizeof(float)) {
    return erfc_f32(x);
  } else {
    return std::erfc(x);
  }
}

}  // namespace clipcu::cpu
