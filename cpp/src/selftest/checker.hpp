// What the self-test (run_selftest) and the C++ kernel tests share: the SIMD levels this CPU
// runs, test data, the comparison of a result with its reference, and a Checker that gathers
// comparisons into rows by op and SIMD level. Private to the library (the tests reach inside).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <exception>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "juanji/runtime.hpp"
#include "juanji/selftest.hpp"
#include "juanji/tensor.hpp"

namespace juanji::selftest {

// The levels at or below the detected one, lowest first.
std::vector<SimdLevel> supported_levels();

// Small integers (exact in float32 through every sum the checks make) or uniform values in [-1, 1).
enum class Values { integers, uniform };
inline const char* values_name(Values v) { return v == Values::integers ? "integer" : "uniform"; }
constexpr Values kBothValues[] = {Values::integers, Values::uniform};

// Seeded data: the same values on every machine for one seed.
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

template <class T>
std::vector<double> widened(const std::vector<T>& v) {
  return {v.begin(), v.end()};
}
template <class T>
std::vector<T> absolute(const std::vector<T>& v) {
  std::vector<T> out(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) out[i] = std::fabs(v[i]);
  return out;
}

// A magnitude that lets got[i] be anything (where a contract allows a kernel to scribble).
constexpr double kAnyValue = std::numeric_limits<double>::infinity();

// How n results compare with their references: how many are off, the first of them, and the
// largest error |got - want| / magnitude (0 where they match bit for bit or are both NaN,
// infinite where one is NaN or the magnitude is 0).
struct Comparison {
  std::size_t bad = 0, first = 0;
  double max_error = 0;
};

inline double error_of(double got, double want, double magnitude) {
  if (std::isnan(got) && std::isnan(want)) return 0;
  const double difference = std::fabs(got - want);
  if (difference == 0) return 0;
  if (std::isnan(difference) || !(magnitude > 0)) return std::numeric_limits<double>::infinity();
  return difference / magnitude;
}

// got[i] against want[i] for i < n: with tolerance 0 bit for bit (want rounded to Got, exact for
// integer-valued data), otherwise within tolerance * magnitude[i], a NaN matching a NaN.
template <class Got>
Comparison compare(const Got* got, const double* want, const double* magnitude, std::size_t n, double tolerance) {
  Comparison c;
  for (std::size_t i = 0; i < n; ++i) {
    if (magnitude[i] == kAnyValue) continue;
    const double g = got[i], w = want[i];
    const bool ok = tolerance == 0 ? same_bits(got[i], static_cast<Got>(want[i]))
                                   : (std::isnan(g) && std::isnan(w)) || std::fabs(g - w) <= tolerance * magnitude[i];
    if (ok && tolerance == 0) continue;  // exactly want rounded to Got: no error
    c.max_error = std::fmax(c.max_error, error_of(g, w, magnitude[i]));
    if (!ok && c.bad++ == 0) c.first = i;
  }
  return c;
}

// got[i] against want[i] bit for bit; the error is measured against |want[i]|.
template <class T>
Comparison compare_bits(const T* got, const T* want, std::size_t n) {
  Comparison c;
  for (std::size_t i = 0; i < n; ++i) {
    if (same_bits(got[i], want[i])) continue;
    c.max_error = std::fmax(c.max_error, error_of(double(got[i]), double(want[i]), std::fabs(double(want[i]))));
    if (c.bad++ == 0) c.first = i;
  }
  return c;
}

// "3 of 40 differ, first at 7: got 1.5, want 2"
std::string describe(const Comparison& c, std::size_t n, double got_first, double want_first);

// Gathers checks into rows by op and the SIMD level in use (SelftestRow), in the order they first
// appear; on_failure (if set) hears each failed check described.
class Checker {
 public:
  std::function<void(const std::string&)> on_failure;

  // A comparison made elsewhere, of n values held to `tolerance`.
  bool record(const std::string& op, const std::string& what, const Comparison& c, std::size_t n, double tolerance,
              double got_first, double want_first);
  // A check without an error measure (its error is 0, or infinite when it fails).
  bool expect(const std::string& op, bool ok, const std::string& what);
  // A check that threw: failed, with the exception's message.
  void exception(const std::string& op, const std::string& what, const std::exception& e);

  template <class Got>
  bool close(const std::string& op, const std::string& what, const Got* got, const double* want,
             const double* magnitude, std::size_t n, double tolerance) {
    const Comparison c = compare(got, want, magnitude, n, tolerance);
    return record(op, what, c, n, tolerance, n ? double(got[c.first]) : 0.0, n ? want[c.first] : 0.0);
  }
  // The same for data of `values`: integer-valued data bit for bit, uniform data within tolerance.
  template <class Got>
  bool close(const std::string& op, const std::string& what, const std::vector<Got>& got,
             const std::vector<double>& want, const std::vector<double>& magnitude, Values values,
             double tolerance) {
    if (got.size() != want.size() || got.size() != magnitude.size()) return expect(op, false, what + ": sizes differ");
    return close(op, what + " (" + values_name(values) + " data)", got.data(), want.data(), magnitude.data(),
                 got.size(), values == Values::integers ? 0.0 : tolerance);
  }
  // The same for vectors, uniform data or data of any kind compared bit for bit (tolerance 0).
  template <class Got>
  bool close(const std::string& op, const std::string& what, const std::vector<Got>& got,
             const std::vector<double>& want, const std::vector<double>& magnitude, double tolerance) {
    if (got.size() != want.size() || got.size() != magnitude.size()) return expect(op, false, what + ": sizes differ");
    return close(op, what, got.data(), want.data(), magnitude.data(), got.size(), tolerance);
  }
  template <class T>
  bool same_bits(const std::string& op, const std::string& what, const std::vector<T>& got,
                 const std::vector<T>& want) {
    if (got.size() != want.size()) return expect(op, false, what + ": sizes differ");
    const Comparison c = compare_bits(got.data(), want.data(), got.size());
    return record(op, what + " (bit for bit)", c, got.size(), 0.0, got.empty() ? 0.0 : double(got[c.first]),
                  want.empty() ? 0.0 : double(want[c.first]));
  }

  const std::vector<SelftestRow>& rows() const { return rows_; }
  long checks() const { return checks_; }
  long failures() const { return failures_; }

 private:
  SelftestRow& row(const std::string& op);
  void add(SelftestRow& row, double error, double tolerance, bool ok, const std::string& failure);

  std::vector<SelftestRow> rows_;
  std::vector<double> worst_;  // each row's largest error / tolerance
  long checks_ = 0, failures_ = 0;
};

// Tensors for the checks: contiguous CPU tensors from and to vectors.
template <class T>
constexpr DType kDType = std::is_same_v<T, float> ? DType::float32
                         : std::is_same_v<T, double> ? DType::float64
                                                     : DType::int64;
template <class T>
constexpr double kTolerance = sizeof(T) == 4 ? 1e-5 : 1e-12;

template <class T>
Tensor tensor_of(const Shape& shape, const std::vector<T>& values) {
  Tensor t = Tensor::empty(shape, kDType<T>);
  std::copy(values.begin(), values.end(), t.data<T>());
  return t;
}

template <class T>
std::vector<T> values_of(const Tensor& t) {
  return {t.data<T>(), t.data<T>() + t.numel()};
}

// "float32" or "float64".
template <class T>
std::string type_name() {
  return sizeof(T) == 4 ? "float32" : "float64";
}

}  // namespace juanji::selftest
