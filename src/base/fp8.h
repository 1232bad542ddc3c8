// FP8 E4M3 (float8_e4m3fn): S EEEE MMM, bias 7, no infinities, NaN only at S.1111.111,
// largest finite ±448. Every value is exact in BF16 and FP32.
#pragma once
#include <array>
#include <cstdint>

namespace epserve {

constexpr float kFp8Max = 448.0f;

// Table of all 256 codes as floats (NaN codes give NaN).
const std::array<float, 256>& fp8_e4m3_table();

inline float fp8_e4m3_to_float(uint8_t code) { return fp8_e4m3_table()[code]; }

// Round to nearest even, saturating to ±448 (as torch's float8_e4m3fn cast with clamping does).
uint8_t float_to_fp8_e4m3(float f);

}  // namespace epserve
