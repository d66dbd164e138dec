// One global xoshiro256** generator (core/xoshiro256.hpp). Draws are serial, so a seed gives
// the same numbers whatever the thread count.
#include <cmath>
#include <mutex>

#include "core/xoshiro256.hpp"
#include "juanji/tensor.hpp"

namespace juanji {
namespace {

std::mutex generator_mutex;
Xoshiro256& generator() {
  static Xoshiro256 gen = [] {
    Xoshiro256 g;
    g.seed(0);
    return g;
  }();
  return gen;
}

template <class Draw>
Tensor generate(const Shape& shape, DType dtype, Draw draw) {
  check_type(dtype != DType::int64, "random tensors are float32 or float64, got int64");
  Tensor t = Tensor::empty(shape, dtype);
  const std::int64_t n = t.numel();
  std::lock_guard<std::mutex> lock(generator_mutex);
  auto& gen = generator();
  if (dtype == DType::float32) {
    float* out = t.data<float>();
    for (std::int64_t i = 0; i < n; ++i) out[i] = static_cast<float>(draw(gen));
  } else {
    double* out = t.data<double>();
    for (std::int64_t i = 0; i < n; ++i) out[i] = draw(gen);
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
