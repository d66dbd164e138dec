// Size arithmetic on user-supplied int64 values that reports overflow instead of wrapping:
// signed overflow is undefined behaviour, and a wrapped size can pass every later range check.
// An operand that already overflowed (nullopt) makes the result nullopt, so expressions chain:
// checked_add(n, checked_mul(2, pad)).
#pragma once

#include <cstdint>
#include <limits>
#include <optional>

#include "juanji/tensor.hpp"

namespace juanji {

using MaybeSize = std::optional<std::int64_t>;

inline MaybeSize checked_add(MaybeSize a, MaybeSize b) {
  std::int64_t sum;
  if (!a || !b || __builtin_add_overflow(*a, *b, &sum)) return std::nullopt;
  return sum;
}

inline MaybeSize checked_mul(MaybeSize a, MaybeSize b) {
  std::int64_t product;
  if (!a || !b || __builtin_mul_overflow(*a, *b, &product)) return std::nullopt;
  return product;
}

// The most elements a tensor may hold, so that its size in bytes (at most 16 per element) and
// every offset into it fit in int64.
constexpr std::int64_t kMaxNumel = std::numeric_limits<std::int64_t>::max() / 16;

// The element count of a shape of non-negative sizes where it (and every partial product) is at
// most kMaxNumel; nullopt otherwise.
inline MaybeSize allocatable_numel(const Shape& shape) {
  MaybeSize n = 1;
  for (auto s : shape) {
    n = s >= 0 ? checked_mul(n, s) : std::nullopt;
    if (!n || *n > kMaxNumel) return std::nullopt;
  }
  return n;
}

// The largest padded extent of a pooling or convolution dim. Kernels add up to three such
// extents (a window's start, its kernel size and a stride capped at the padded extent), which
// then still fit in int64.
constexpr std::int64_t kMaxSpatialExtent = (std::int64_t{1} << 61) - 1;

}  // namespace juanji
