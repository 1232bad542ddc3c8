#include "base/fp8.h"

#include <cmath>

namespace epserve {

namespace {
float decode(uint8_t code) {
  const int sign = code >> 7, exponent = (code >> 3) & 15, mantissa = code & 7;
  if (exponent == 15 && mantissa == 7) return NAN;
  const float magnitude = exponent == 0 ? std::ldexp(float(mantissa), -9)
                                        : std::ldexp(1.0f + mantissa / 8.0f, exponent - 7);
  return sign ? -magnitude : magnitude;
}
}  // namespace

const std::array<float, 256>& fp8_e4m3_table() {
  static const std::array<float, 256> table = [] {
    std::array<float, 256> t{};
    for (int c = 0; c < 256; ++c) t[c] = decode(uint8_t(c));
    return t;
  }();
  return table;
}

uint8_t float_to_fp8_e4m3(float f) {
  if (std::isnan(f)) return 0x7f;
  const uint8_t sign = std::signbit(f) ? 0x80 : 0;
  float a = std::fabs(f);
  if (a >= kFp8Max) return sign | 0x7e;  // saturate at 448
  // Find the nearest code by its position on the grid: spacing 2^(e-3) in binade e, 2^-9 below 2^-6.
  int e;
  std::frexp(a, &e);  // a = m * 2^e, m in [0.5, 1)
  int binade = e - 1;  // a in [2^binade, 2^(binade+1))
  if (binade < -6) binade = -6;  // subnormal grid continues the smallest normal binade's spacing
  const float step = std::ldexp(1.0f, binade - 3);
  const float units = std::nearbyint(a / step);  // round half to even under the default rounding mode
  const float rounded = units * step;
  // Re-encode the rounded magnitude (it may have carried into the next binade).
  if (rounded >= kFp8Max) return sign | 0x7e;
  if (rounded < std::ldexp(1.0f, -6)) return sign | uint8_t(std::lround(rounded / std::ldexp(1.0f, -9)));
  int re;
  const float m = std::frexp(rounded, &re);  // rounded = m * 2^re, m in [0.5,1)
  const int exponent = re - 1 + 7;
  const int mantissa = int(std::lround((m * 2 - 1) * 8));
  return sign | uint8_t(exponent << 3) | uint8_t(mantissa);
}

}  // namespace epserve
