// Helpers shared by the convolution algorithms: padded copies, the correlation a pass runs, and
// the conditions of more than one algorithm.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "cpu/conv/algorithms.hpp"
#include "cpu/copy_short.hpp"

namespace juanji::cpu::conv {

namespace {
// The largest padded plane (floats) that pad_planes zeroes whole first.
constexpr std::int64_t kWholeZeroedPlane = 1024;
}  // namespace

void pad_planes(const float* src, std::int64_t planes, std::int64_t h, std::int64_t w, std::int64_t top,
                std::int64_t left, float* dst, std::int64_t dst_h, std::int64_t dst_w) {
  const std::int64_t j_begin = std::clamp<std::int64_t>(left, 0, dst_w);
  const std::int64_t j_end = std::clamp<std::int64_t>(left + w, j_begin, dst_w);
  // Small planes are zeroed whole, in one run of vector stores, before their rows are copied in:
  // each row's few columns of padding took a call of memset (128x64 planes of 7x7, 3x3 stride 2:
  // forward 1.27-1.35 -> 1.09-1.10 ms). Larger ones would write their values twice.
  if (dst_h * dst_w <= kWholeZeroedPlane) {
    const std::int64_t i_begin = std::clamp<std::int64_t>(top, 0, dst_h);
    const std::int64_t i_end = std::clamp<std::int64_t>(top + h, i_begin, dst_h);
    std::fill(dst, dst + planes * dst_h * dst_w, 0.0f);
    for (std::int64_t c = 0; c < planes; ++c)
      for (std::int64_t i = i_begin; i < i_end; ++i)
        cpu::copy_short(src + (c * h + i - top) * w + j_begin - left, j_end - j_begin,
                        dst + (c * dst_h + i) * dst_w + j_begin);
    return;
  }
  for (std::int64_t c = 0; c < planes; ++c)
    for (std::int64_t i = 0; i < dst_h; ++i) {
      float* out = dst + (c * dst_h + i) * dst_w;
      const std::int64_t si = i - top;
      if (si < 0 || si >= h) {
        std::fill(out, out + dst_w, 0.0f);
        continue;
      }
      const float* in = src + (c * h + si) * w - left;
      std::fill(out, out + j_begin, 0.0f);
      cpu::copy_short(in + j_begin, j_end - j_begin, out + j_begin);
      std::fill(out + j_end, out + dst_w, 0.0f);
    }
}

Correlation forward_correlation(const ConvGeometry& g) {
  return {g.N, g.groups, g.C, g.H, g.W, g.K, g.P, g.Q, g.R, g.S,
          g.stride_h, g.stride_w, g.dil_h, g.dil_w, g.pad_top, g.pad_left};
}

Correlation data_grad_correlation(const ConvGeometry& g) {
  return {g.N, g.groups, g.K, g.P, g.Q, g.C, g.H, g.W, g.R, g.S,
          1, 1, g.dil_h, g.dil_w, g.dil_h * (g.R - 1) - g.pad_top, g.dil_w * (g.S - 1) - g.pad_left};
}

// The float32 paths (direct, Winograd, filter blocks) copy the input or the error into padded
// planes: worth it for a network's few pixels of padding, not where padding or a dilated kernel
// dwarfs the image (a 1x1 input with padding 25000 would take 10 GB of planes). Such layers take
// the GEMM path, whose scratch is bounded by the sizes of the input and the output.
bool padding_is_modest(const ConvGeometry& g) {
  const auto modest = [](std::int64_t in, std::int64_t out, std::int64_t extra) { return extra <= 4 * (in + out) + 64; };
  return modest(g.H, g.P, 2 * g.pad_top + g.dil_h * (g.R - 1)) && modest(g.W, g.Q, 2 * g.pad_left + g.dil_w * (g.S - 1));
}

// The direct data gradient reads the padded error's zeros at the edges of its blocks, which adds
// nothing to its sums unless a weight is infinite or NaN (inf * 0 = NaN where the definition has
// no product): such weights take GEMM + col2im, which multiplies the error's values only.
bool all_finite(const float* values, std::int64_t count) {
  bool finite = true;
  for (std::int64_t i = 0; i < count; ++i) finite &= std::isfinite(values[i]);
  return finite;
}

}  // namespace juanji::cpu::conv
