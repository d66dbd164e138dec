// Vectorisable building blocks for the element-wise and reduction ops. Private to the library.
// - Branch-free float32 exp and tanh (libm's expf and tanhf are opaque calls that keep a loop
//   scalar). Accuracy is a few ulp (Cephes polynomials); NaN propagates, overflow gives inf and
//   underflow 0.
// - Sums with kSumTerms interleaved partial sums combined in a fixed order: they vectorise and
//   escape the serial add latency (four chains of 8 doubles), yet give the same bits on every
//   run, SIMD level and thread count. max_lanes keeps kLanes partial results.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "cpu/microkernels.hpp"

namespace juanji::cpu {

inline float bits_to_float(std::int32_t i) {
  float f;
  std::memcpy(&f, &i, sizeof f);
  return f;
}

inline std::int32_t float_to_bits(float f) {
  std::int32_t i;
  std::memcpy(&i, &f, sizeof i);
  return i;
}

// exp(x) = 2^n * exp(r), n = round(x / ln 2), |r| <= ln(2)/2, exp(r) by a degree-7 polynomial.
inline float exp_f32(float x) {
  constexpr float hi = 88.72283f;   // above: overflow to inf
  constexpr float lo = -87.33654f;  // below: 2^n would leave the normal range; flush to 0
  const float xc = x > hi ? hi : (x < lo ? lo : x);
  // Adding 1.5 * 2^23 rounds to an integer, which then sits in the low mantissa bits.
  constexpr float shifter = 12582912.0f;
  const float t = xc * 1.44269504088896341f + shifter;
  const float n = t - shifter;
  const std::int32_t ni = float_to_bits(t) - float_to_bits(shifter);
  float r = xc - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  float result = p * bits_to_float((ni + 127) << 23);
  result = x > hi ? INFINITY : result;
  result = x < lo ? 0.0f : result;
  return x != x ? x : result;
}

// 1 / (1 + e^-x), from e^-|x| so nothing overflows.
inline float sigmoid_f32(float x) {
  const float e = exp_f32(-std::fabs(x));
  const float s = 1.0f / (1.0f + e);
  return x >= 0 ? s : e * s;
}

// Odd polynomial near 0 (where 1 - 2/(e^2x + 1) would cancel), the exp form elsewhere.
inline float tanh_f32(float x) {
  const float a = std::fabs(x);
  const float z = x * x;
  float p = -5.70498872745e-3f;
  p = p * z + 2.06390887954e-2f;
  p = p * z - 5.37397155531e-2f;
  p = p * z + 1.33314422036e-1f;
  p = p * z - 3.33332819422e-1f;
  const float small = p * z * x + x;
  const float big = 1.0f - 2.0f / (exp_f32(2.0f * a) + 1.0f);
  const float signed_big = x < 0 ? -big : big;
  return a < 0.625f ? small : signed_big;
}

constexpr std::int64_t kLanes = 8;

// Term i of a sum goes to partial sum i % kSumTerms; the partial sums j, j + 8, j + 16, j + 24
// are added as (j + (j + 8)) + ((j + 16) + (j + 24)), then those eight in order. The SIMD
// kernels (microkernels.inc) keep the same order in four chains of 8-double vectors.
inline double combine_partial_sums(const double* acc) {
  double total = 0;
  for (std::int64_t j = 0; j < 8; ++j) total += (acc[j] + acc[j + 8]) + (acc[j + 16] + acc[j + 24]);
  return total;
}

// sum of term(i) over i in [0, n), in double; term returns a double.
template <class F>
double sum_lanes(std::int64_t n, F term) {
  double acc[kSumTerms] = {};
  for (std::int64_t i = 0; i < n; ++i) acc[i % kSumTerms] += term(i);
  return combine_partial_sums(acc);
}

// Adds term(image, k, i) of every plane of a grid (images x channels of n terms, as the
// kernels' ChannelPlanes) to channel k's partial sums (partials + k * channel_partials), term i
// to partial i % kSumTerms, the images in order.
template <class F>
void add_to_partials(std::int64_t images, std::int64_t channels, std::int64_t n, std::int64_t channel_partials,
                     F term, double* partials) {
  for (std::int64_t image = 0; image < images; ++image)
    for (std::int64_t k = 0; k < channels; ++k) {
      double* acc = partials + k * channel_partials;
      for (std::int64_t i = 0; i < n; ++i) acc[i % kSumTerms] += term(image, k, i);
    }
}

// Channel k's values as doubles into its partials (partials + k * kSumTerms); float32 through the
// active SIMD kernel (same bits).
template <class T>
void sum_into_partials(const ChannelPlanesOf<T>& v, double* partials) {
  if constexpr (std::is_same_v<T, float>) {
    active_kernels().sum_f32(v, partials);
  } else {
    add_to_partials(v.images, v.channels, v.n, kSumTerms,
                    [&v](std::int64_t image, std::int64_t k, std::int64_t i) { return double(v.plane(image, k)[i]); },
                    partials);
  }
}

// sum_lanes of v[0, n) as doubles.
template <class T>
double sum_elements(const T* v, std::int64_t n) {
  double partials[kSumTerms] = {};
  sum_into_partials(ChannelPlanesOf<T>{v, 0, 0, 1, 1, n}, partials);
  return combine_partial_sums(partials);
}

// The same of (v - centers[k])^2.
template <class T>
void squared_deviation_into_partials(const ChannelPlanesOf<T>& v, const double* centers, double* partials) {
  if constexpr (std::is_same_v<T, float>) {
    active_kernels().sum_squared_deviation_f32(v, centers, partials);
  } else {
    add_to_partials(v.images, v.channels, v.n, kSumTerms,
                    [&v, centers](std::int64_t image, std::int64_t k, std::int64_t i) {
                      const double d = v.plane(image, k)[i] - centers[k];
                      return d * d;
                    },
                    partials);
  }
}

// Channel k's sums of g and of g * (v - centers[k]) in one read of g, into partials + 2k *
// kSumTerms and the kSumTerms after them.
template <class T>
void grad_and_product_into_partials(const ChannelPlanesOf<T>& g, const ChannelPlanesOf<T>& v, const double* centers,
                                    double* partials) {
  if constexpr (std::is_same_v<T, float>) {
    active_kernels().sum_grad_and_product_f32(g, v, centers, partials);
  } else {
    add_to_partials(v.images, v.channels, v.n, 2 * kSumTerms,
                    [&g](std::int64_t image, std::int64_t k, std::int64_t i) { return double(g.plane(image, k)[i]); },
                    partials);
    add_to_partials(v.images, v.channels, v.n, 2 * kSumTerms,
                    [&](std::int64_t image, std::int64_t k, std::int64_t i) {
                      return double(g.plane(image, k)[i]) * (v.plane(image, k)[i] - centers[k]);
                    },
                    partials + kSumTerms);
  }
}

// Largest of v[0, n), n >= 1, ignoring NaN (callers let NaN propagate through exp instead).
template <class T>
T max_lanes(const T* v, std::int64_t n) {
  T acc[kLanes];
  for (std::int64_t j = 0; j < kLanes; ++j) acc[j] = v[0];
  std::int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (std::int64_t j = 0; j < kLanes; ++j) acc[j] = v[i + j] > acc[j] ? v[i + j] : acc[j];
  for (; i < n; ++i) acc[0] = v[i] > acc[0] ? v[i] : acc[0];
  T best = acc[0];
  for (std::int64_t j = 1; j < kLanes; ++j) best = acc[j] > best ? acc[j] : best;
  return best;
}

}  // namespace juanji::cpu
