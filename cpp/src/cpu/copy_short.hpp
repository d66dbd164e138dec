// Copies of short runs (a row of a small image) with inline moves: a library memmove call costs
// more than such a copy (12% of cifar_c2's backward, 6% of a LeNet step were spent in its calls).
#pragma once

#include <cstdint>
#include <cstring>

namespace juanji::cpu {
// Internal linkage: the SIMD kernel files include this too, each compiled with its own flags,
// and must not share one out-of-line copy with the baseline files.
namespace {

// Always inlined: a call per row cost as much as the copy (pad_planes' rows of 7-14 floats, 1.6%
// of the ResNet step where GCC left it out of line).
template <class T>
inline __attribute__((always_inline)) void copy_short(const T* from, std::int64_t n, T* to) {
  std::int64_t i = 0;
  for (; i + 16 <= n; i += 16) std::memcpy(to + i, from + i, 16 * sizeof(T));
  if (n - i >= 8) {
    std::memcpy(to + i, from + i, 8 * sizeof(T));
    i += 8;
  }
  if (n - i >= 4) {
    std::memcpy(to + i, from + i, 4 * sizeof(T));
    i += 4;
  }
  if (n - i >= 2) {
    std::memcpy(to + i, from + i, 2 * sizeof(T));
    i += 2;
  }
  if (i < n) to[i] = from[i];
}

}  // namespace
}  // namespace juanji::cpu
