#include "engine/dtype.h"

#include <cmath>

#include "engine/error.h"

namespace clipcu {

size_t dtype_size(DType t) {
  switch (t) {
    case DType::F32: return 4;
    case DType::BF16: return 2;
    case DType::F16: return 2;
    case DType::F64: return 8;
    case DType::I32: return 4;
    case DType::I64: return 8;
    case DType::U8: return 1;
  }
  return 0;
}

std::string_view dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "F32";
    case DType::BF16: return "BF16";
    case DType::F16: return "F16";
    case DType::F64: return "F64";
    case DType::I32: return "I32";
    case DType::I64: return "I64";
    case DType::U8: return "U8";
  }
  return "?";
}

bool dtype_from_name(std::string_view name, DType* out) {
  for (DType t : {DType::F32, DType::BF16, DType::F16, DType::F64, DType::I32, DType::I64, DType::U8}) {
    if (dtype_name(t) == name) {
      *out = t;
      return true;
    }
  }
  return false;
}

float f16_to_f32(uint16_t h) {
  uint32_t sign = uint32_t(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t man = h & 0x3ffu;
  uint32_t u;
  if (exp == 0) {
    if (man == 0) {
      u = sign;
    } else {  // subnormal: renormalize
      int e = -1;
      do {
        ++e;
        man <<= 1;
      } while ((man & 0x400u) == 0);
      u = sign | uint32_t(127 - 15 - e) << 23 | (man & 0x3ffu) << 13;
    }
  } else if (exp == 31) {
    u = sign | 0x7f800000u | man << 13;
  } else {
    u = sign | (exp + 127 - 15) << 23 | man << 13;
  }
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

uint16_t f32_to_f16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  uint32_t sign = (u >> 16) & 0x8000u;
  uint32_t absu = u & 0x7fffffffu;
  if (absu > 0x7f800000u) return uint16_t(sign | 0x7e00u);  // NaN
  if (absu >= 0x477ff000u) return uint16_t(sign | 0x7c00u);  // rounds to infinity
  if (absu < 0x38800000u) {  // subnormal or zero in half
    float a;
    std::memcpy(&a, &absu, 4);
    // a * 2^24 rounded to nearest even gives the subnormal mantissa
    return uint16_t(sign | uint32_t(std::nearbyint(a * 16777216.0f)));
  }
  uint32_t r = absu + 0xfffu + ((absu >> 13) & 1u);  // round to nearest even at bit 13
  return uint16_t(sign | ((r - (112u << 23)) >> 13));
}

namespace {
double load(const void* src, DType t, size_t i) {
  switch (t) {
    case DType::F32: return static_cast<const float*>(src)[i];
    case DType::F64: return static_cast<const double*>(src)[i];
    case DType::BF16: return bf16_to_f32(static_cast<const uint16_t*>(src)[i]);
    case DType::F16: return f16_to_f32(static_cast<const uint16_t*>(src)[i]);
    case DType::I32: return static_cast<const int32_t*>(src)[i];
    case DType::I64: return double(static_cast<const int64_t*>(src)[i]);
    case DType::U8: return static_cast<const uint8_t*>(src)[i];
  }
  return 0;
}
void store(void* dst, DType t, size_t i, double v) {
  switch (t) {
    case DType::F32: static_cast<float*>(dst)[i] = float(v); break;
    case DType::F64: static_cast<double*>(dst)[i] = v; break;
    case DType::BF16: static_cast<uint16_t*>(dst)[i] = f32_to_bf16(float(v)); break;
    case DType::F16: static_cast<uint16_t*>(dst)[i] = f32_to_f16(float(v)); break;
    case DType::I32: static_cast<int32_t*>(dst)[i] = int32_t(v); break;
    case DType::I64: static_cast<int64_t*>(dst)[i] = int64_t(v); break;
    case DType::U8: static_cast<uint8_t*>(dst)[i] = uint8_t(v); break;
  }
}
}  // namespace

void convert_host(void* dst, DType to, const void* src, DType from, size_t n) {
  if (to == from) {
    std::memcpy(dst, src, n * dtype_size(to));
    return;
  }
  // int64 -> int64-like paths must not go through double when values exceed 2^53; ids never do.
  for (size_t i = 0; i < n; ++i) store(dst, to, i, load(src, from, i));
}

}  // namespace clipcu
