// AVX-512 micro-kernels (this file alone is compiled with -mavx512f and friends).
#define JUANJI_VECTOR_BYTES 64
#define JUANJI_KERNEL_SET kernels_avx512
#include "cpu/microkernels.inc"
