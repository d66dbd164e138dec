#include "cpu/ref/reference.hpp"

namespace juanji::cpu::ref {

template <class T>
void gemm(std::int64_t M, std::int64_t N, std::int64_t K, const T* a, std::int64_t a_row_stride,
          std::int64_t a_col_stride, const T* b, std::int64_t b_row_stride, std::int64_t b_col_stride, T* c,
          std::int64_t ldc, bool accumulate) {
  for (std::int64_t i = 0; i < M; ++i)
    for (std::int64_t j = 0; j < N; ++j) {
      T sum = 0;
      for (std::int64_t k = 0; k < K; ++k)
        sum += a[i * a_row_stride + k * a_col_stride] * b[k * b_row_stride + j * b_col_stride];
      c[i * ldc + j] = accumulate ? c[i * ldc + j] + sum : sum;
    }
}

template void gemm(std::int64_t, std::int64_t, std::int64_t, const float*, std::int64_t, std::int64_t, const float*,
                   std::int64_t, std::int64_t, float*, std::int64_t, bool);
template void gemm(std::int64_t, std::int64_t, std::int64_t, const double*, std::int64_t, std::int64_t, const double*,
                   std::int64_t, std::int64_t, double*, std::int64_t, bool);

}  // namespace juanji::cpu::ref
