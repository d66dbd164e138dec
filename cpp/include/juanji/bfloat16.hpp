// bfloat16: the upper half of an IEEE float32 (sign, 8 exponent bits, 7 mantissa bits), the
// format of AVX512-BF16, of ml_dtypes.bfloat16 and of torch.bfloat16. Conversions from float32
// and float64 round to nearest, ties to even; NaN stays NaN (quiet, sign kept), infinities and
// subnormals convert as such, and a finite value past the largest bfloat16 rounds to infinity.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

// The bit conversions are also the CUDA backend's (cuda/fill.cu), so both round alike.
#if defined(__CUDACC__)
#define JUANJI_HOST_DEVICE __host__ __device__
#else
#define JUANJI_HOST_DEVICE
#endif

namespace juanji {

JUANJI_HOST_DEVICE inline std::uint16_t bfloat16_bits_from_float(float value) {
  std::uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((bits >> 16) | 0x0040u);
  // Adding 0x7fff, plus one where the kept part is odd, carries into it exactly when the dropped
  // half is above one half, or at one half with an odd kept part.
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<std::uint16_t>(bits >> 16);
}

JUANJI_HOST_DEVICE inline float float_from_bfloat16_bits(std::uint16_t half) {
  const std::uint32_t bits = static_cast<std::uint32_t>(half) << 16;
  float value;
  std::memcpy(&value, &bits, sizeof value);
  return value;
}

// float64 -> float32 rounding to odd (truncate, then set the last bit if anything was dropped):
// a float32 with 16 bits more than bfloat16 keeps what the second rounding needs, so
// float64 -> bfloat16 through it rounds once, as directly.
inline float float_rounded_to_odd(double value) {
  if (std::isnan(value) || std::isinf(value)) return static_cast<float>(value);
  constexpr double kLargest = 3.4028234663852886e38;  // FLT_MAX, whose last bit is already odd
  if (std::fabs(value) > kLargest) return static_cast<float>(std::copysign(kLargest, value));
  float nearest = static_cast<float>(value);
  if (static_cast<double>(nearest) == value) return nearest;
  if (std::fabs(static_cast<double>(nearest)) > std::fabs(value))
    nearest = std::nextafter(nearest, 0.0f);  // toward zero: the truncation
  std::uint32_t bits;
  std::memcpy(&bits, &nearest, sizeof bits);
  bits |= 1u;
  std::memcpy(&nearest, &bits, sizeof nearest);
  return nearest;
}

struct bfloat16 {
  std::uint16_t bits = 0;

  bfloat16() = default;
  explicit bfloat16(float value) : bits(bfloat16_bits_from_float(value)) {}
  explicit bfloat16(double value) : bits(bfloat16_bits_from_float(float_rounded_to_odd(value))) {}
  explicit bfloat16(std::int64_t value) : bfloat16(static_cast<double>(value)) {}
  static bfloat16 from_bits(std::uint16_t bits) {
    bfloat16 b;
    b.bits = bits;
    return b;
  }
  // Exact: every bfloat16 is a float32.
  operator float() const { return float_from_bfloat16_bits(bits); }
};
static_assert(sizeof(bfloat16) == 2, "bfloat16 must be two bytes, as arrays of it are stored");

// The bfloat16 nearest each float32 of src, as a float32 (its exact value): dst[i] =
// float(bfloat16(src[i])). dst may be src.
inline void round_to_bfloat16(const float* src, float* dst, std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i) dst[i] = float_from_bfloat16_bits(bfloat16_bits_from_float(src[i]));
}

}  // namespace juanji
