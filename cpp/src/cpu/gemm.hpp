// Packed, blocked GEMM: C (M x N, row stride ldc) = A (M x K) * B (K x N) [+ C].
// A and B are addressed through a row and a column stride, so transposed operands cost nothing.
// Each C tile is computed by one thread with a k-order fixed by the blocking alone, so results
// do not depend on the thread count.
#pragma once

#include <algorithm>
#include <cstdint>

#include "cpu/microkernels.hpp"
#include "cpu/parallel.hpp"
#include "cpu/workspace.hpp"

namespace juanji::cpu {

template <class T>
struct Matrix {
  const T* data;
  std::int64_t row_stride, col_stride;
  T at(std::int64_t r, std::int64_t c) const { return data[r * row_stride + c * col_stride]; }
};

// What becomes of each element v of C once its sum is complete, while its tile is in cache:
// v + row_bias[row] (where row_bias is set), then v < 0 ? 0 : v (NaN stays) where relu is.
template <class T>
struct GemmEpilogue {
  const T* row_bias = nullptr;
  bool relu = false;
  bool active() const { return row_bias != nullptr || relu; }
  // Rows [row, row + rows) and columns [0, cols) of the tile at c (row stride ldc).
  void apply(T* c, std::int64_t ldc, std::int64_t row, std::int64_t rows, std::int64_t cols) const {
    for (std::int64_t r = 0; r < rows; ++r) {
      const T bias = row_bias ? row_bias[row + r] : T(0);
      for (T* v = c + r * ldc; v != c + r * ldc + cols; ++v) {
        const T sum = row_bias ? *v + bias : *v;
        *v = relu && sum < T(0) ? T(0) : sum;
      }
    }
  }
};

// threaded: split the tiles of C over the OpenMP team (call it outside parallel regions);
// otherwise run on the calling thread only.
template <class T>
void gemm(std::int64_t M, std::int64_t N, std::int64_t K, Matrix<T> A, Matrix<T> B, T* C,
          std::int64_t ldc, bool accumulate, bool threaded, GemmEpilogue<T> epilogue = {});

namespace detail {

// Cache blocking: an MC x KC block of A stays in L2 while KC x NR panels of B stream from L1.
constexpr std::int64_t kBlockK = 256;
constexpr std::int64_t kBlockMPanels = 24;
constexpr std::int64_t kBlockNPanels = 64;

template <class T>
void pack_a(Matrix<T> A, std::int64_t i0, std::int64_t rows, std::int64_t k0, std::int64_t kc,
            int mr, T* out) {
  if (A.col_stride == 1) {
    // Rows contiguous along k: read each row once.
    for (int i = 0; i < mr; ++i) {
      if (i >= rows) {
        for (std::int64_t k = 0; k < kc; ++k) out[k * mr + i] = T(0);
        continue;
      }
      const T* src = A.data + (i0 + i) * A.row_stride + k0;
      for (std::int64_t k = 0; k < kc; ++k) out[k * mr + i] = src[k];
    }
    return;
  }
  for (std::int64_t k = 0; k < kc; ++k)
    for (int i = 0; i < mr; ++i) out[k * mr + i] = i < rows ? A.at(i0 + i, k0 + k) : T(0);
}

inline const MicroKernelInfo<float>& kernel_for(const KernelSet& set, float*) { return set.gemm_f32; }
inline const MicroKernelInfo<double>& kernel_for(const KernelSet& set, double*) { return set.gemm_f64; }


}  // namespace detail

// The same GEMM with B supplied by a packer instead of a matrix, so an operand that is never
// materialised (the im2col matrix of a convolution) can be packed straight from its source:
// pack_b(k0, kc, j0, cols, nr, out) writes rows [k0, k0+kc) of columns [j0, j0+cols) as a
// kc x nr panel (out[k*nr + j], zero past cols).
template <class T, class PackB>
void gemm_with_packer(std::int64_t M, std::int64_t N, std::int64_t K, Matrix<T> A, const PackB& pack_b,
                      T* C, std::int64_t ldc, bool accumulate, bool threaded, GemmEpilogue<T> epilogue = {}) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {
    if (!accumulate)
      for (std::int64_t i = 0; i < M; ++i) std::fill(C + i * ldc, C + i * ldc + N, T(0));
    if (epilogue.active()) epilogue.apply(C, ldc, 0, M, N);
    return;
  }
  const auto& kernel = detail::kernel_for(active_kernels(), static_cast<T*>(nullptr));
  const int mr = kernel.mr, nr = kernel.nr;
  const std::int64_t block_m = detail::kBlockMPanels * mr, block_n = detail::kBlockNPanels * nr;
  const std::int64_t kc_max = std::min(K, detail::kBlockK);
  const std::int64_t mc_max = std::min(M, block_m), nc_max = std::min(N, block_n);
  const std::int64_t a_panels_max = (mc_max + mr - 1) / mr, b_panels_max = (nc_max + nr - 1) / nr;
  T* a_pack = workspace<T>(WorkspaceSlot::gemm_a, a_panels_max * mr * kc_max);
  T* b_pack = workspace<T>(WorkspaceSlot::gemm_b, b_panels_max * nr * kc_max);
  // Threads only pay off when there is enough work per fork.
  const bool parallel = threaded && static_cast<double>(M) * N * K > 2e5;

#pragma omp parallel num_threads(::juanji::team_size()) if (parallel)
  for (std::int64_t jc = 0; jc < N; jc += block_n) {
    const std::int64_t nc = std::min(block_n, N - jc);
    const std::int64_t b_panels = (nc + nr - 1) / nr;
    for (std::int64_t pc = 0; pc < K; pc += detail::kBlockK) {
      const std::int64_t kc = std::min(detail::kBlockK, K - pc);
      const bool add = accumulate || pc > 0;
      for (std::int64_t ic = 0; ic < M; ic += block_m) {
        const std::int64_t mc = std::min(block_m, M - ic);
        const std::int64_t a_panels = (mc + mr - 1) / mr;
        // B's panels (with the first block of A) split as the tiles below are, so that each
        // thread packs the panels it then multiplies, in its own cache (a single image's
        // pointwise GEMM, 64 x 3136 x 64, scaled 1.2x on two threads when the panels went to
        // whichever thread came first); then A's panels, which every thread reads.
        if (ic == 0) {
#pragma omp for schedule(static) nowait
          for (std::int64_t p = 0; p < b_panels; ++p)
            pack_b(pc, kc, jc + p * nr, std::min<std::int64_t>(nr, nc - p * nr), nr, b_pack + p * nr * kc);
        }
#pragma omp for schedule(static)
        for (std::int64_t a = 0; a < a_panels; ++a)
          detail::pack_a(A, ic + a * mr, std::min<std::int64_t>(mr, mc - a * mr), pc, kc, mr, a_pack + a * mr * kc);
#pragma omp for schedule(static) collapse(2)
        for (std::int64_t jp = 0; jp < b_panels; ++jp)
          for (std::int64_t ip = 0; ip < a_panels; ++ip) {
            const std::int64_t i = ic + ip * mr, j = jc + jp * nr;
            const std::int64_t rows = std::min<std::int64_t>(mr, M - i), cols = std::min<std::int64_t>(nr, N - j);
            kernel.run(kc, a_pack + ip * mr * kc, b_pack + jp * nr * kc, C + i * ldc + j, ldc, rows, cols, add);
            if (epilogue.active() && pc + kc == K) epilogue.apply(C + i * ldc + j, ldc, i, rows, cols);
          }
      }
    }
  }
}


}  // namespace juanji::cpu
