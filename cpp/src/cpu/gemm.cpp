#include "cpu/gemm.hpp"

#include <cstring>

namespace juanji::cpu {
namespace {

// One row of a panel, nr values, by a copy of fixed size that the compiler inlines: a call to
// memmove per row took a third of a pointwise layer's GEMM on NumPy's 16-byte-aligned rows
// (8x256x56x56 -> 64, 2 threads: 8.7 -> 7.6 ms; 7.0 on 64-byte-aligned rows either way).
template <class T>
inline void copy_panel_row(const T* src, int nr, T* dst) {
  switch (nr * sizeof(T)) {
    case 32: std::memcpy(dst, src, 32); return;
    case 64: std::memcpy(dst, src, 64); return;
    case 128: std::memcpy(dst, src, 128); return;
    default: std::copy(src, src + nr, dst);
  }
}

template <class T>
void pack_b(Matrix<T> B, std::int64_t k0, std::int64_t kc, std::int64_t j0, std::int64_t cols,
            int nr, T* out) {
  if (B.row_stride == 1 && B.col_stride != 1) {
    // A transposed operand: read each column along k, where it is contiguous, float32 by
    // vector transposes.
    if constexpr (std::is_same_v<T, float>)
      return active_kernels().pack_transposed_panel_f32(B.data + j0 * B.col_stride + k0, B.col_stride, cols, kc, out);
    for (int j = 0; j < nr; ++j) {
      if (j >= cols) {
        for (std::int64_t k = 0; k < kc; ++k) out[k * nr + j] = T(0);
        continue;
      }
      const T* src = B.data + (j0 + j) * B.col_stride + k0;
      for (std::int64_t k = 0; k < kc; ++k) out[k * nr + j] = src[k];
    }
    return;
  }
  for (std::int64_t k = 0; k < kc; ++k) {
    T* row = out + k * nr;
    if (B.col_stride == 1 && cols == nr) {
      copy_panel_row(B.data + (k0 + k) * B.row_stride + j0, nr, row);
    } else {
      for (int j = 0; j < nr; ++j) row[j] = j < cols ? B.at(k0 + k, j0 + j) : T(0);
    }
  }
}

}  // namespace

template <class T>
void gemm(std::int64_t M, std::int64_t N, std::int64_t K, Matrix<T> A, Matrix<T> B, T* C,
          std::int64_t ldc, bool accumulate, bool threaded, GemmEpilogue<T> epilogue) {
  gemm_with_packer(M, N, K, A,
                   [B](std::int64_t k0, std::int64_t kc, std::int64_t j0, std::int64_t cols, int nr, T* out) {
                     pack_b(B, k0, kc, j0, cols, nr, out);
                   },
                   C, ldc, accumulate, threaded, epilogue);
}

template void gemm<float>(std::int64_t, std::int64_t, std::int64_t, Matrix<float>, Matrix<float>,
                          float*, std::int64_t, bool, bool, GemmEpilogue<float>);
template void gemm<double>(std::int64_t, std::int64_t, std::int64_t, Matrix<double>,
                           Matrix<double>, double*, std::int64_t, bool, bool, GemmEpilogue<double>);

}  // namespace juanji::cpu
