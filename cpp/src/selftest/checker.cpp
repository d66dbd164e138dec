#include "selftest/checker.hpp"

#include <algorithm>
#include <cstdio>
#include <limits>

namespace juanji::selftest {

std::vector<SimdLevel> supported_levels() {
  std::vector<SimdLevel> out;
  for (SimdLevel level : {SimdLevel::portable, SimdLevel::avx2, SimdLevel::avx512})
    if (level <= simd_detected()) out.push_back(level);
  return out;
}

std::string describe(const Comparison& c, std::size_t n, double got_first, double want_first) {
  char text[160];
  std::snprintf(text, sizeof(text), "%zu of %zu differ, first at %zu: got %.9g, want %.9g", c.bad, n, c.first,
                got_first, want_first);
  return text;
}

SelftestRow& Checker::row(const std::string& op) {
  const std::string level = simd_name(simd_level());
  for (SelftestRow& r : rows_)
    if (r.op == op && r.level == level) return r;
  rows_.push_back({op, level, 0.0, 0.0, true, ""});
  worst_.push_back(0.0);
  return rows_.back();
}

// The row shows the check closest to its tolerance (the largest ratio of error to tolerance, a
// tolerance of 0 making any error infinitely far), or once one has failed, the failed check
// furthest past it. While every error is 0 it shows the largest tolerance.
void Checker::add(SelftestRow& r, double error, double tolerance, bool ok, const std::string& failure) {
  ++checks_;
  double& worst = worst_[static_cast<std::size_t>(&r - rows_.data())];
  const double ratio = error == 0 ? 0.0 : tolerance > 0 ? error / tolerance : std::numeric_limits<double>::infinity();
  const bool first_failure = !ok && r.ok;
  if (first_failure || (ok == r.ok && ratio > worst)) {
    worst = ratio;
    r.max_error = error;
    r.tolerance = tolerance;
  } else if (r.ok && worst == 0) {
    r.tolerance = std::max(r.tolerance, tolerance);
  }
  if (ok) return;
  ++failures_;
  if (first_failure) r.failure = failure;
  r.ok = false;
  if (on_failure) on_failure(failure);
}

bool Checker::record(const std::string& op, const std::string& what, const Comparison& c, std::size_t n,
                     double tolerance, double got_first, double want_first) {
  SelftestRow& r = row(op);
  const bool ok = c.bad == 0;
  add(r, c.max_error, tolerance, ok,
      ok ? std::string() : r.level + " " + what + ": " + describe(c, n, got_first, want_first));
  return ok;
}

bool Checker::expect(const std::string& op, bool ok, const std::string& what) {
  SelftestRow& r = row(op);
  add(r, ok ? 0.0 : std::numeric_limits<double>::infinity(), 0.0, ok, ok ? std::string() : r.level + " " + what);
  return ok;
}

void Checker::exception(const std::string& op, const std::string& what, const std::exception& e) {
  expect(op, false, what + " threw: " + e.what());
}

}  // namespace juanji::selftest
