// Portable micro-kernels: 16-byte vectors, which every 64-bit target has (SSE2, NEON) or the
// compiler lowers to scalar code.
#define JUANJI_VECTOR_BYTES 16
#define JUANJI_KERNEL_SET kernels_portable
#include "cpu/microkernels.inc"

namespace juanji::cpu {

#ifndef JUANJI_HAVE_X86_KERNELS
const KernelSet& kernels_avx2() { return kernels_portable(); }
const KernelSet& kernels_avx512() { return kernels_portable(); }
#endif

const KernelSet& active_kernels() {
  switch (simd_level()) {
    case SimdLevel::avx512: return kernels_avx512();
    case SimdLevel::avx2: return kernels_avx2();
    case SimdLevel::portable: break;
  }
  return kernels_portable();
}

}  // namespace juanji::cpu
