// What the kernel tests share: the SIMD levels this CPU runs, test data, and comparisons that
// count and print failures.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "juanji/runtime.hpp"

namespace kernel_check {

inline int failures = 0;
inline long checks = 0;

inline void expect(bool ok, const std::string& what) {
  ++checks;
  if (ok) return;
  if (++failures <= 40) std::printf("FAIL: %s\n", what.c_str());
}

// The levels at or below the detected one; the first call names those this CPU lacks.
inline const std::vector<juanji::SimdLevel>& supported_levels() {
  static const std::vector<juanji::SimdLevel> levels = [] {
    std::vector<juanji::SimdLevel> out;
    for (juanji::SimdLevel level : {juanji::SimdLevel::portable, juanji::SimdLevel::avx2, juanji::SimdLevel::avx512})
      if (level <= juanji::simd_detected())
        out.push_back(level);
      else
        std::printf("skipped %s: this CPU lacks it\n", juanji::simd_name(level));
    return out;
  }();
  return levels;
}

// Makes `level` the one in use: the public API's kernels follow it.
inline void use_level(juanji::SimdLevel level) {
  expect(juanji::set_simd_level(level) == level && juanji::simd_level() == level,
         std::string("set_simd_level selects ") + juanji::simd_name(level));
}

// Small integers (exact in float32 through every sum the tests make) or uniform values in [-1, 1).
enum class Values { integers, uniform };
inline const char* values_name(Values v) { return v == Values::integers ? "integer" : "uniform"; }

class Data {
 public:
  explicit Data(std::uint64_t seed) : engine_(seed) {}
  template <class T = float>
  std::vector<T> make(std::size_t n, Values values) {
    std::vector<T> out(n);
    std::uniform_int_distribution<int> integer(-3, 3);
    std::uniform_real_distribution<double> uniform(-1.0, 1.0);
    for (T& v : out) v = values == Values::integers ? T(integer(engine_)) : T(uniform(engine_));
    return out;
  }
  std::int64_t below(std::int64_t n) { return std::uniform_int_distribution<std::int64_t>(0, n - 1)(engine_); }

 private:
  std::mt19937_64 engine_;
};

// Bit for bit (so +0 and -0 differ, and NaNs match NaNs of the same bits).
template <class T>
bool same_bits(T a, T b) {
  return std::memcmp(&a, &b, sizeof(T)) == 0;
}

inline std::vector<double> widened(const std::vector<float>& v) { return {v.begin(), v.end()}; }
template <class T>
std::vector<T> absolute(const std::vector<T>& v) {
  std::vector<T> out(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) out[i] = std::fabs(v[i]);
  return out;
}

// A magnitude that lets got[i] be anything (where a contract allows a kernel to scribble).
constexpr double kAnyValue = std::numeric_limits<double>::infinity();

// got[i] against want[i] for i < n: with tolerance 0 bit for bit (want rounded to Got, exact
// for the integer-valued tests), otherwise within tolerance * magnitude[i], the sum of the
// absolute values of want[i]'s terms (a NaN matching a NaN). Prints the first mismatch.
template <class Got>
bool expect_close(const std::string& what, const Got* got, const double* want, const double* magnitude,
                  std::size_t n, double tolerance) {
  std::size_t bad = 0, first = 0;
  for (std::size_t i = 0; i < n; ++i) {
    if (magnitude[i] == kAnyValue) continue;
    const double g = got[i], w = want[i];
    const bool ok = tolerance == 0 ? same_bits(got[i], static_cast<Got>(want[i]))
                                   : (std::isnan(g) && std::isnan(w)) || std::fabs(g - w) <= tolerance * magnitude[i];
    if (!ok && bad++ == 0) first = i;
  }
  expect(bad == 0, what + ": " + std::to_string(bad) + " of " + std::to_string(n) + " differ, first at " +
                       std::to_string(first) + ": got " + std::to_string(n ? double(got[first]) : 0.0) +
                       ", want " + std::to_string(n ? want[first] : 0.0));
  return bad == 0;
}

// The same for integer-valued data (tolerance 0) or uniform data.
template <class Got>
bool expect_close(const std::string& what, const std::vector<Got>& got, const std::vector<double>& want,
                  const std::vector<double>& magnitude, Values values, double tolerance) {
  if (got.size() != want.size()) {
    expect(false, what + ": sizes differ");
    return false;
  }
  return expect_close(what + " (" + values_name(values) + " data)", got.data(), want.data(), magnitude.data(),
                      got.size(), values == Values::integers ? 0.0 : tolerance);
}

template <class T>
bool expect_same_bits(const std::string& what, const T* got, const T* want, std::size_t n) {
  std::size_t bad = 0, first = 0;
  for (std::size_t i = 0; i < n; ++i)
    if (!same_bits(got[i], want[i]) && bad++ == 0) first = i;
  expect(bad == 0, what + ": " + std::to_string(bad) + " of " + std::to_string(n) + " differ in their bits, first at " +
                       std::to_string(first) + ": got " + std::to_string(n ? double(got[first]) : 0.0) + ", want " +
                       std::to_string(n ? double(want[first]) : 0.0));
  return bad == 0;
}

template <class T>
bool expect_same_bits(const std::string& what, const std::vector<T>& got, const std::vector<T>& want) {
  if (got.size() != want.size()) {
    expect(false, what + ": sizes differ");
    return false;
  }
  return expect_same_bits(what, got.data(), want.data(), got.size());
}

inline int summary(const char* name) {
  std::printf("%s: %s (%ld checks, %d failure%s)\n", name, failures ? "FAILED" : "ok", checks, failures,
              failures == 1 ? "" : "s");
  return failures ? 1 : 0;
}

}  // namespace kernel_check
