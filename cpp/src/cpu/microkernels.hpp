// Register-blocked GEMM micro-kernels, one set per instruction set (kernels_<isa>.cpp, each
// compiled with its own flags). A micro-kernel multiplies a packed MR x kc panel of A by a packed
// kc x NR panel of B and writes or adds the MR x NR result into C.
#pragma once

#include <cstdint>

#include "juanji/runtime.hpp"

namespace juanji::cpu {

template <class T>
using MicroKernel = void (*)(std::int64_t kc, const T* a_panel, const T* b_panel, T* c,
                             std::int64_t ldc, std::int64_t rows, std::int64_t cols,
                             bool accumulate);

template <class T>
struct MicroKernelInfo {
  int mr, nr;
  MicroKernel<T> run;
};

struct KernelSet {
  MicroKernelInfo<float> gemm_f32;
  MicroKernelInfo<double> gemm_f64;
};

const KernelSet& kernels_portable();
const KernelSet& kernels_avx2();
const KernelSet& kernels_avx512();
// The set for the SIMD level in use (juanji::simd_level()).
const KernelSet& active_kernels();

}  // namespace juanji::cpu
