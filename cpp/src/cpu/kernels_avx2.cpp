// AVX2 + FMA micro-kernels (this file alone is compiled with -mavx2 -mfma).
#define JUANJI_VECTOR_BYTES 32
#define JUANJI_KERNEL_SET kernels_avx2
#include "cpu/microkernels.inc"
