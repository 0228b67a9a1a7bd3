// Element types of tensors and safetensors files, and host conversions between them.
#pragma once
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

namespace clipcu {

enum class DType : uint8_t { F32, BF16, F16, F64, I32, I64, U8 };

size_t dtype_size(DType t);
// Names as safetensors writes them: "F32", "BF16", "F16", "F64", "I32", "I64", "U8".
std::string_view dtype_name(DType t);
// Parses a safetensors dtype name; false for a name this engine does not know.
bool dtype_from_name(std::string_view name, DType* out);
inline bool is_floating(DType t) { return t == DType::F32 || t == DType::BF16 || t == DType::F16 || t == DType::F64; }

// bf16 / f16 <-> f32 on the host. bf16 rounds to nearest even; NaN stays NaN.
inline float bf16_to_f32(uint16_t h) {
  uint32_t u = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint16_t f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}
float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);

// Converts n elements of type `from` at src into type `to` at dst (host memory).
// Integer targets from floating sources truncate toward zero.
void convert_host(void* dst, DType to, const void* src, DType from, size_t n);

}  // namespace clipcu
