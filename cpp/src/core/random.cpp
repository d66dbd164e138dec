// One global xoshiro256** generator (core/xoshiro256.hpp). Draws are serial, so a seed gives
// the same numbers whatever the thread count.
#include <cmath>
#include <cstring>
#include <mutex>

#include "core/xoshiro256.hpp"
#include "juanji/tensor.hpp"

namespace juanji {
namespace {

std::mutex generator_mutex;

// The upper 16 bits of a float32: the bfloat16 it truncates to.
std::uint16_t upper_half_bits(float value) {
  std::uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  return static_cast<std::uint16_t>(bits >> 16);
}

Xoshiro256& generator() {
  static Xoshiro256 gen = [] {
    Xoshiro256 g;
    g.seed(0);
    return g;
  }();
  return gen;
}

template <class T, class Draw>
void draw_into(const Tensor& t, Draw& draw) {
  T* out = t.data<T>();
  std::lock_guard<std::mutex> lock(generator_mutex);
  auto& gen = generator();
  for (std::int64_t i = 0, n = t.numel(); i < n; ++i) out[i] = static_cast<T>(draw(gen));
}

// bfloat16 values are the float64 draws rounded once (to nearest even).
template <class Draw>
Tensor generate(const Shape& shape, DType dtype, Draw draw) {
  check_type(dtype != DType::int64, "random tensors are float32, float64 or bfloat16, got int64");
  Tensor t = Tensor::empty(shape, dtype);
  switch (dtype) {
    case DType::float32: draw_into<float>(t, draw); break;
    case DType::float64: draw_into<double>(t, draw); break;
    case DType::bfloat16: draw_into<bfloat16>(t, draw); break;
    case DType::int64: break;  // refused above, before allocating
  }
  return t;
}

}  // namespace

void manual_seed(std::uint64_t seed) {
  std::lock_guard<std::mutex> lock(generator_mutex);
  generator().seed(seed);
}

std::uint64_t random_u64() {
  std::lock_guard<std::mutex> lock(generator_mutex);
  return generator().next();
}

Tensor rand(const Shape& shape, DType dtype) {
  if (dtype == DType::bfloat16) {
    // The float32 draws truncated, not rounded: rounding to nearest could give 1.0 and break
    // [0, 1). Each bfloat16 b then comes with the probability of [b, next above b).
    const Tensor draws = rand(shape, DType::float32);
    Tensor t = Tensor::empty(shape, DType::bfloat16);
    const float* in = draws.data<float>();
    bfloat16* out = t.data<bfloat16>();
    for (std::int64_t i = 0, n = t.numel(); i < n; ++i) out[i] = bfloat16::from_bits(upper_half_bits(in[i]));
    return t;
  }
  // float32 gets 24-bit draws: rounding a 53-bit draw could give 1.0f and break [0, 1).
  if (dtype == DType::float32)
    return generate(shape, dtype, [](Xoshiro256& g) { return (g.next() >> 40) * 0x1.0p-24; });
  return generate(shape, dtype, [](Xoshiro256& g) { return g.uniform(); });
}

Tensor uniform(const Shape& shape, double low, double high, DType dtype) {
  check(low <= high, "uniform: low ", low, " is above high ", high);
  return generate(shape, dtype, [=](Xoshiro256& g) { return low + (high - low) * g.uniform(); });
}

Tensor randn(const Shape& shape, DType dtype) {
  return generate(shape, dtype, [](Xoshiro256& g) {
    // Box-Muller, one value per pair of uniforms: simple and exactly repeatable.
    const double u1 = 1.0 - g.uniform();  // (0, 1]
    const double u2 = g.uniform();
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
  });
}

}  // namespace juanji
