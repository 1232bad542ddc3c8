// BF16: the upper 16 bits of an IEEE float. Conversion rounds to nearest even (NaN stays NaN).
#pragma once
#include <bit>
#include <cstdint>
#include <cstring>

namespace epserve {

struct bf16 {
  uint16_t bits = 0;
};

inline float bf16_to_float(bf16 v) { return std::bit_cast<float>(uint32_t(v.bits) << 16); }

inline bf16 float_to_bf16(float f) {
  uint32_t u = std::bit_cast<uint32_t>(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return bf16{uint16_t((u >> 16) | 0x40)};  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return bf16{uint16_t(u >> 16)};
}

// The float nearest to f that BF16 can hold: how a BF16 output or cache entry is emulated in FP32.
inline float round_to_bf16(float f) { return bf16_to_float(float_to_bf16(f)); }

}  // namespace epserve
