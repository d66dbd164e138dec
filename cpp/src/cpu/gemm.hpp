// Packed, blocked GEMM: C (M x N, row stride ldc) = A (M x K) * B (K x N) [+ C].
// A and B are addressed through a row and a column stride, so transposed operands cost nothing.
// Each C tile is computed by one thread with a k-order fixed by the blocking alone, so results
// do not depend on the thread count.
#pragma once

#include <cstdint>

namespace juanji::cpu {

template <class T>
struct Matrix {
  const T* data;
  std::int64_t row_stride, col_stride;
  T at(std::int64_t r, std::int64_t c) const { return data[r * row_stride + c * col_stride]; }
};

// threaded: split the tiles of C over the OpenMP team (call it outside parallel regions);
// otherwise run on the calling thread only.
template <class T>
void gemm(std::int64_t M, std::int64_t N, std::int64_t K, Matrix<T> A, Matrix<T> B, T* C,
          std::int64_t ldc, bool accumulate, bool threaded);

}  // namespace juanji::cpu
