// What the kernel tests share: the library's self-test pieces (selftest/checker.hpp: the SIMD
// levels this CPU runs, test data, comparisons), and checks that count and print failures.
#pragma once

#include <cstdio>
#include <string>
#include <vector>

#include "juanji/runtime.hpp"
#include "selftest/checker.hpp"

namespace kernel_check {

using juanji::selftest::absolute;
using juanji::selftest::Data;
using juanji::selftest::kAnyValue;
using juanji::selftest::same_bits;
using juanji::selftest::Values;
using juanji::selftest::values_name;

inline int failures = 0;
inline long checks = 0;

inline void expect(bool ok, const std::string& what) {
  ++checks;
  if (ok) return;
  if (++failures <= 40) std::printf("FAIL: %s\n", what.c_str());
}

// A self-test Checker whose failures print and count as expect's do (and its checks count).
inline juanji::selftest::Checker printing_checker() {
  juanji::selftest::Checker checker;
  checker.on_failure = [](const std::string& what) {
    if (++failures <= 40) std::printf("FAIL: %s\n", what.c_str());
  };
  return checker;
}

// The levels at or below the detected one; the first call names those this CPU lacks.
inline const std::vector<juanji::SimdLevel>& supported_levels() {
  static const std::vector<juanji::SimdLevel> levels = [] {
    for (juanji::SimdLevel level : {juanji::SimdLevel::portable, juanji::SimdLevel::avx2, juanji::SimdLevel::avx512})
      if (level > juanji::simd_detected()) std::printf("skipped %s: this CPU lacks it\n", juanji::simd_name(level));
    return juanji::selftest::supported_levels();
  }();
  return levels;
}

// Makes `level` the one in use: the public API's kernels follow it.
inline void use_level(juanji::SimdLevel level) {
  expect(juanji::set_simd_level(level) == level && juanji::simd_level() == level,
         std::string("set_simd_level selects ") + juanji::simd_name(level));
}

inline std::vector<double> widened(const std::vector<float>& v) { return {v.begin(), v.end()}; }

// got[i] against want[i] for i < n (selftest::compare): with tolerance 0 bit for bit, otherwise
// within tolerance * magnitude[i]. Prints the first mismatch.
template <class Got>
bool expect_close(const std::string& what, const Got* got, const double* want, const double* magnitude,
                  std::size_t n, double tolerance) {
  const juanji::selftest::Comparison c = juanji::selftest::compare(got, want, magnitude, n, tolerance);
  expect(c.bad == 0, what + ": " + describe(c, n, n ? double(got[c.first]) : 0.0, n ? want[c.first] : 0.0));
  return c.bad == 0;
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
  const juanji::selftest::Comparison c = juanji::selftest::compare_bits(got, want, n);
  expect(c.bad == 0, what + ": " + std::to_string(c.bad) + " of " + std::to_string(n) +
                         " differ in their bits, first at " + std::to_string(c.first) + ": got " +
                         std::to_string(n ? double(got[c.first]) : 0.0) + ", want " +
                         std::to_string(n ? double(want[c.first]) : 0.0));
  return c.bad == 0;
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
