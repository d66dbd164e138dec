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

// Direct stride-1 convolution of zero-padded planes, for layers with few channels where im2col
// traffic would cost more than the arithmetic:
//   out[k][p][q] = bias[k] + sum_{c,r,s} weights[k][c][r][s] * src[c][p + r*dil_h][q + s*dil_w]
// src rows are readable up to column round_up(out_w, 2 * lanes) + dil_w*(S-1) (zero slack).
struct DirectConvArgs {
  const float* src;  // (in_channels, src_h, src_w)
  std::int64_t in_channels, src_h, src_w;
  const float* weights;  // (out_channels, in_channels, R, S)
  std::int64_t R, S, dil_h, dil_w;
  const float* bias;  // (out_channels) or null
  float* out;         // (out_channels, out_h, out_w)
  std::int64_t out_channels, out_h, out_w;
};
using DirectConv = void (*)(const DirectConvArgs& args);

// Weight gradient of the direct convolution, for one filter, one input channel and one image:
//   grad_weights[r][s] += sum_{p,q} grad_out[p][q] * src[p + r*dil_h][q + s*dil_w]
// grad_out rows are padded to a multiple of `lanes` columns with zeros (out_stride); src as for
// DirectConv. Lanes past out_w are masked out of the products, so a NaN in src reaches exactly
// the taps the definition says it does.
struct DirectWeightGradArgs {
  const float* src;  // (src_h, src_w) of one input channel
  std::int64_t src_w;
  const float* grad_out;  // (out_h, out_stride)
  std::int64_t out_h, out_w, out_stride;
  std::int64_t R, S, dil_h, dil_w;
  float* grad_weights;  // (R, S), accumulated
};
using DirectWeightGrad = void (*)(const DirectWeightGradArgs& args);

struct KernelSet {
  MicroKernelInfo<float> gemm_f32;
  MicroKernelInfo<double> gemm_f64;
  DirectConv direct_conv_f32;
  DirectWeightGrad direct_weight_grad_f32;
  int direct_conv_lanes;  // columns per vector: the padded width is a multiple of twice this
};

const KernelSet& kernels_portable();
const KernelSet& kernels_avx2();
const KernelSet& kernels_avx512();
// The set for the SIMD level in use (juanji::simd_level()).
const KernelSet& active_kernels();

}  // namespace juanji::cpu
