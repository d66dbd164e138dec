// CNN convolution on the CPU by lowering to GEMM:
//   forward      y[n,g] (Kg x PQ)   = W[g] (Kg x CRSg) * col[n,g] (CRSg x PQ) + b
//   data grad    dcol[n,g]          = W[g]^T * dy[n,g], scattered back (col2im) into dx: the
//                                     seeds' full convolution of the error with the rotated kernel
//   weight grad  dW[g]              = sum_n dy[n,g] * col[n,g]^T
// col is the im2col matrix of one image and group; a 1x1 stride-1 unpadded convolution uses the
// input itself. Work is split so that every output element is summed by one thread in a fixed
// order: results do not depend on the thread count.
#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "core/checked_math.hpp"
#include "cpu/copy_short.hpp"
#include "cpu/gemm.hpp"
#include "cpu/microkernels.hpp"
#include "cpu/op_support.hpp"
#include "cpu/vec_math.hpp"
#include "cpu/workspace.hpp"
#include "juanji/ops/conv.hpp"
#include "juanji/runtime.hpp"
#if JUANJI_WITH_CUDA
#include "cuda/ops.hpp"
#endif

namespace juanji {
namespace {

std::vector<std::int64_t> per_dim(const std::vector<std::int64_t>& values, int dims, const char* name) {
  check(values.size() == 1 || static_cast<int>(values.size()) == dims, name, ": expected 1 or ",
        dims, " values, got ", values.size());
  return values.size() == 1 ? std::vector<std::int64_t>(dims, values[0]) : values;
}

// One spatial dim resolved: its before/after padding, padded size and output size.
struct Resolved {
  std::int64_t pad_before, pad_after, padded, out;
};

// n and span (the dilated kernel's extent) are at most kMaxSpatialExtent; s is any stride.
// Returns nullopt where the padded size would exceed kMaxSpatialExtent.
std::optional<Resolved> resolve_dim(std::int64_t n, std::int64_t span, std::int64_t s,
                                    const PaddingSpec& padding, std::int64_t explicit_pad) {
  std::int64_t before = 0, after = 0;
  switch (padding.kind) {
    case PaddingSpec::Kind::same: {
      // TensorFlow's rule: out = ceil(n / s), the extra padding going after when odd. Then
      // (out - 1) * s < n: no overflow, whatever the stride.
      const std::int64_t out = (n - 1) / s + 1;
      const std::int64_t total = std::max<std::int64_t>((out - 1) * s + span - n, 0);
      before = total / 2;
      after = total - before;
      break;
    }
    case PaddingSpec::Kind::valid: break;
    case PaddingSpec::Kind::explicit_sizes: before = after = explicit_pad; break;
  }
  const MaybeSize padded = checked_add(n, checked_add(before, after));
  if (!padded || *padded > kMaxSpatialExtent) return std::nullopt;
  return Resolved{before, after, *padded, *padded >= span ? (*padded - span) / s + 1 : 0};
}

void check_conv_operands(const Tensor& x, const Tensor& w, const Tensor& bias, int dims) {
  check_float(x, "x");
  check_float(w, "weight");
  check_same_dtype(x, "x", w, "weight");
  check_same_device(x, "x", w, "weight");
  if (bias.defined()) {
    check_float(bias, "bias");
    check_same_dtype(x, "x", bias, "bias");
    check_same_device(x, "x", bias, "bias");
    check(bias.dim() == 1 && bias.size(0) == w.size(0), "bias: expected shape (", w.size(0),
          ",) to match weight ", shape_text(w.shape()), ", got ", shape_text(bias.shape()));
  }
  cpu::require_supported_device(x, dims == 1 ? "conv1d" : "conv2d", "x");
}

Tensor as_2d_input(const Tensor& t, int dims) {
  // conv1d is conv2d with a height of 1: (N, C, L) -> (N, C, 1, L), a view.
  return dims == 1 ? t.reshape({t.size(0), t.size(1), 1, t.size(2)}) : t;
}

// Output columns [begin, end) whose input column q*stride_w + w_shift lies inside [0, W).
std::pair<std::int64_t, std::int64_t> inside_columns(const ConvGeometry& g, std::int64_t w_shift) {
  std::int64_t begin = w_shift >= 0 ? 0 : (-w_shift + g.stride_w - 1) / g.stride_w;
  std::int64_t end = g.W - w_shift > 0 ? (g.W - w_shift + g.stride_w - 1) / g.stride_w : 0;
  begin = std::min(begin, g.Q);
  return {begin, std::clamp(end, begin, g.Q)};
}

template <class T>
void im2col(const ConvGeometry& g, const T* x, T* col, std::int64_t ld) {
  // x: one image's channels of one group (Cg, H, W); col: (Cg*R*S, P*Q) with row stride ld
  const std::int64_t Cg = g.C / g.groups;
  for (std::int64_t c = 0; c < Cg; ++c)
    for (std::int64_t r = 0; r < g.R; ++r)
      for (std::int64_t s = 0; s < g.S; ++s) {
        T* row = col + ((c * g.R + r) * g.S + s) * ld;
        const std::int64_t w_shift = s * g.dil_w - g.pad_left;
        const auto [q_begin, q_end] = inside_columns(g, w_shift);
        for (std::int64_t p = 0; p < g.P; ++p) {
          T* out = row + p * g.Q;
          const std::int64_t ih = p * g.stride_h - g.pad_top + r * g.dil_h;
          if (ih < 0 || ih >= g.H) {
            std::fill(out, out + g.Q, T(0));
            continue;
          }
          // Pointers are formed for columns inside the row only: with a large dilation or padding
          // w_shift alone lies far outside it.
          const T* in = x + (c * g.H + ih) * g.W;
          std::fill(out, out + q_begin, T(0));
          if (g.stride_w == 1) {
            if (q_end > q_begin) std::copy(in + (q_begin + w_shift), in + (q_end + w_shift), out + q_begin);
          } else {
            for (std::int64_t q = q_begin; q < q_end; ++q) out[q] = in[q * g.stride_w + w_shift];
          }
          std::fill(out + q_end, out + g.Q, T(0));
        }
      }
}

template <class T>
void col2im(const ConvGeometry& g, const T* col, std::int64_t ld, T* x) {
  // Adds col (Cg*R*S, P*Q; row stride ld) back into one image's group channels x (Cg, H, W),
  // which it zeroes first.
  const std::int64_t Cg = g.C / g.groups;
  std::fill(x, x + Cg * g.H * g.W, T(0));
  for (std::int64_t c = 0; c < Cg; ++c)
    for (std::int64_t r = 0; r < g.R; ++r)
      for (std::int64_t s = 0; s < g.S; ++s) {
        const T* row = col + ((c * g.R + r) * g.S + s) * ld;
        const std::int64_t w_shift = s * g.dil_w - g.pad_left;
        const auto [q_begin, q_end] = inside_columns(g, w_shift);
        for (std::int64_t p = 0; p < g.P; ++p) {
          const std::int64_t ih = p * g.stride_h - g.pad_top + r * g.dil_h;
          if (ih < 0 || ih >= g.H) continue;
          const T* in = row + p * g.Q;
          T* out = x + (c * g.H + ih) * g.W;  // columns by index: w_shift may lie outside the row
          for (std::int64_t q = q_begin; q < q_end; ++q) out[q * g.stride_w + w_shift] += in[q];
        }
      }
}

bool is_pointwise(const ConvGeometry& g) {
  return g.R == 1 && g.S == 1 && g.stride_h == 1 && g.stride_w == 1 && g.pad_top == 0 &&
         g.pad_left == 0 && g.P == g.H && g.Q == g.W;
}

// Images per GEMM: small images are batched side by side along the GEMM's N dimension
// (columns n*PQ + pq) so that packing and tile edges are paid once per batch, not per image.
// A function of the shapes only: summation orders never depend on the thread count.
std::int64_t images_per_gemm(const ConvGeometry& g) {
  constexpr std::int64_t kTargetColumns = 2048;
  const std::int64_t PQ = g.P * g.Q;
  return std::clamp<std::int64_t>((kTargetColumns + PQ - 1) / PQ, 1, g.N);
}

// Runs body(first_image, images, threaded_gemm) over batches of `per_batch` images: batches in
// parallel when there are enough of them, otherwise one after another with threaded GEMMs.
// Either way each output has one writer.
template <class Body>
void for_each_batch(std::int64_t N, std::int64_t per_batch, Body body) {
  const std::int64_t batches = (N + per_batch - 1) / per_batch;
  const int threads = team_size();
  auto run = [&](std::int64_t b, bool threaded) {
    const std::int64_t first = b * per_batch;
    body(first, std::min(per_batch, N - first), threaded);
  };
  if (batches >= threads && threads > 1) {
    cpu::RegionErrors errors;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (std::int64_t b = 0; b < batches; ++b) errors.guard([&] { run(b, false); });
    errors.rethrow();
  } else {
    for (std::int64_t b = 0; b < batches; ++b) run(b, true);
  }
}

// Copies a batch of images' (rows, PQ) blocks into one (rows, images*PQ) matrix and back.
template <class T>
void gather_images(const T* src, std::int64_t image_stride, std::int64_t images, std::int64_t rows,
                   std::int64_t PQ, T* dst) {
  for (std::int64_t i = 0; i < images; ++i)
    for (std::int64_t r = 0; r < rows; ++r)
      std::copy(src + i * image_stride + r * PQ, src + i * image_stride + (r + 1) * PQ,
                dst + r * images * PQ + i * PQ);
}

template <class T>
void scatter_images(const T* src, std::int64_t images, std::int64_t rows, std::int64_t PQ, T* dst,
                    std::int64_t image_stride) {
  for (std::int64_t i = 0; i < images; ++i)
    for (std::int64_t r = 0; r < rows; ++r)
      std::copy(src + r * images * PQ + i * PQ, src + r * images * PQ + (i + 1) * PQ,
                dst + i * image_stride + r * PQ);
}

// The im2col matrix of a batch of images (one group): (Cg*R*S, images*PQ), or the input itself
// for a single image of a pointwise convolution.
template <class T>
const T* batch_columns(const ConvGeometry& g, const T* x, std::int64_t first, std::int64_t images,
                       std::int64_t grp, bool pointwise, T* col) {
  const std::int64_t Cg = g.C / g.groups, HW = g.H * g.W, PQ = g.P * g.Q;
  const T* xg = x + (first * g.C + grp * Cg) * HW;
  if (pointwise && images == 1) return xg;
  if (pointwise) {
    gather_images(xg, g.C * HW, images, Cg, PQ, col);
  } else {
    for (std::int64_t i = 0; i < images; ++i) im2col(g, xg + i * g.C * HW, col + i * PQ, images * PQ);
  }
  return col;
}

// Zero-padded copy of planes: dst[c][i][j] = src[c][i - top][j - left], zero outside src.
// top/left may be negative (cropping).
void pad_planes(const float* src, std::int64_t planes, std::int64_t h, std::int64_t w, std::int64_t top,
                std::int64_t left, float* dst, std::int64_t dst_h, std::int64_t dst_w) {
  const std::int64_t j_begin = std::clamp<std::int64_t>(left, 0, dst_w);
  const std::int64_t j_end = std::clamp<std::int64_t>(left + w, j_begin, dst_w);
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

// The direct kernel pays off where im2col would move more data than the arithmetic needs:
// stride 1 and few input channels per output (measured: 2-3x GEMM's speed at 1-3 channels,
// on par at 6, behind from 16 on).
constexpr std::int64_t kDirectMaxChannels = 4;
bool use_direct(const ConvGeometry& g, std::int64_t in_channels_per_group) {
  return g.stride_h == 1 && g.stride_w == 1 && in_channels_per_group <= kDirectMaxChannels;
}

// One correlation the direct kernel runs over a job's padded source planes: its weights
// (groups x out_g x in_g x R x S), dilation, where the source sits in its padded planes (top and
// left; negative crops) and its output size.
struct DirectPass {
  const float* weights;
  std::int64_t R, S, dil_h, dil_w, top, left, out_h, out_w;
};

// Runs the direct kernel for every (image, group) job and pass. A job pads its source planes once
// into a per-thread buffer that holds every pass's padding: pass i reads it from row
// max(top) - top_i and column max(left) - left_i on, where it finds what a padded copy of its own
// would hold. Pass i writes (out_g, out_h, out_w) to out_for(n, grp, i), then done(n, grp, i, out)
// runs. With skip_padding_rows the kernel skips the padding's rows where it can (the data
// gradient's full correlation: its padding holds no products by definition).
template <class OutFor, class Done>
void direct_conv_passes(const ConvGeometry& g, const float* src, std::int64_t src_channels, std::int64_t src_h,
                        std::int64_t src_w, const DirectPass* passes, std::int64_t count, const float* bias,
                        std::int64_t out_channels, bool relu, bool skip_padding_rows, OutFor out_for, Done done) {
  const cpu::KernelSet& kernels = cpu::active_kernels();
  const std::int64_t in_g = src_channels / g.groups, out_g = out_channels / g.groups;
  const std::int64_t lanes = kernels.direct_conv_lanes;
  std::int64_t top = 0, left = 0, padded_h = 0, padded_w = 0;
  for (std::int64_t i = 0; i < count; ++i) {
    top = std::max(top, passes[i].top);
    left = std::max(left, passes[i].left);
  }
  for (std::int64_t i = 0; i < count; ++i) {
    const DirectPass& pass = passes[i];
    padded_h = std::max(padded_h, top - pass.top + std::max(pass.out_h, cpu::kDirectBlockRows) + pass.dil_h * (pass.R - 1));
    padded_w = std::max(padded_w, left - pass.left + (pass.out_w + lanes - 1) / lanes * lanes + pass.dil_w * (pass.S - 1));
  }
  const std::int64_t jobs = g.N * g.groups;
  cpu::RegionErrors errors;
#pragma omp parallel for num_threads(::juanji::team_size()) schedule(static) if (jobs > 1)
  for (std::int64_t job = 0; job < jobs; ++job) errors.guard([&] {
    const std::int64_t n = job / g.groups, grp = job % g.groups;
    float* padded = cpu::workspace<float>(cpu::WorkspaceSlot::columns, in_g * padded_h * padded_w);
    pad_planes(src + (n * src_channels + grp * in_g) * src_h * src_w, in_g, src_h, src_w, top, left,
               padded, padded_h, padded_w);
    for (std::int64_t i = 0; i < count; ++i) {
      const DirectPass& pass = passes[i];
      const std::int64_t view_rows = padded_h - (top - pass.top);
      float* out = out_for(n, grp, i);
      const cpu::DirectConvArgs args{padded + (top - pass.top) * padded_w + left - pass.left, in_g, padded_h, padded_w,
                                     pass.weights + grp * out_g * in_g * pass.R * pass.S, pass.R, pass.S,
                                     pass.dil_h, pass.dil_w, bias ? bias + grp * out_g : nullptr, out, out_g,
                                     pass.out_h, pass.out_w, relu,
                                     skip_padding_rows ? std::max<std::int64_t>(pass.top, 0) : 0,
                                     skip_padding_rows ? std::clamp<std::int64_t>(pass.top + src_h, 0, view_rows) : view_rows};
      kernels.direct_conv_f32(args);
      done(n, grp, i, out);
    }
  });
  errors.rethrow();
}

// direct_conv_passes with one pass writing straight into out (out_channels, out_h, out_w).
void direct_conv_all(const ConvGeometry& g, const float* src, std::int64_t src_channels, std::int64_t src_h,
                     std::int64_t src_w, const DirectPass& pass, const float* bias, float* out,
                     std::int64_t out_channels, bool relu, bool skip_padding_rows) {
  const std::int64_t out_g = out_channels / g.groups;
  direct_conv_passes(
      g, src, src_channels, src_h, src_w, &pass, 1, bias, out_channels, relu, skip_padding_rows,
      [&](std::int64_t n, std::int64_t grp, std::int64_t) { return out + (n * out_channels + grp * out_g) * pass.out_h * pass.out_w; },
      [](std::int64_t, std::int64_t, std::int64_t, float*) {});
}

void direct_forward(const ConvGeometry& g, const float* x, const float* w, const float* bias, float* y,
                    bool relu) {
  const DirectPass pass{w, g.R, g.S, g.dil_h, g.dil_w, g.pad_top, g.pad_left, g.P, g.Q};
  direct_conv_all(g, x, g.C, g.H, g.W, pass, bias, y, g.K, relu, false);
}

// The data gradient's weights for the direct kernel, (group, channel, filter, tap), each kernel
// rotated by 180 degrees; tap(kc, r, s) is tap (r, s) of kernel kc = filter * Cg + channel.
template <class Tap>
void rotate_for_data_grad(const ConvGeometry& g, Tap tap, float* out) {
  const std::int64_t Cg = g.C / g.groups, Kg = g.K / g.groups, taps = g.R * g.S;
  for (std::int64_t grp = 0; grp < g.groups; ++grp)
    for (std::int64_t k = 0; k < Kg; ++k)
      for (std::int64_t c = 0; c < Cg; ++c)
        for (std::int64_t r = 0; r < g.R; ++r)
          for (std::int64_t s = 0; s < g.S; ++s)
            out[((grp * Cg + c) * Kg + k) * taps + taps - 1 - (r * g.S + s)] = tap((grp * Kg + k) * Cg + c, r, s);
}

// The seeds' rule: the input gradient is the full convolution of the error with the 180-degree
// rotated kernel, i.e. a stride-1 correlation of the padded error with rotated, transposed weights.
DirectPass direct_data_grad_pass(const ConvGeometry& g, const float* rotated) {
  return {rotated, g.R, g.S, g.dil_h, g.dil_w, g.dil_h * (g.R - 1) - g.pad_top, g.dil_w * (g.S - 1) - g.pad_left,
          g.H, g.W};
}

// The direct data gradient with the batch in the lanes, for planes narrower than a vector: a job
// takes a group of `lanes` images (and a range of output rows where there are too few groups to
// share), moves their error into the lanes, correlates and moves the result back. Every pixel of
// every image is a lane of work, where lanes along a row would idle past the plane's width and
// past the error's (lenet_c2's 10 of 16 lanes: 340 -> 231 us; LeNet step 1.47 -> 1.41 ms).
bool use_image_lanes(const ConvGeometry& g, const DirectPass& pass) {
  const std::int64_t lanes = cpu::active_kernels().direct_conv_lanes;
  return g.groups == 1 && g.W < lanes && g.Q <= lanes && pass.left >= 0 && 2 * g.N >= lanes;
}

void image_lane_backward_data(const ConvGeometry& g, const float* dy, const DirectPass& pass, float* dx) {
  const cpu::KernelSet& kernels = cpu::active_kernels();
  const std::int64_t lanes = kernels.direct_conv_lanes, PQ = g.P * g.Q, HW = g.H * g.W;
  const std::int64_t src_w = std::max(pass.left + g.Q, g.W + g.dil_w * (g.S - 1));
  const std::int64_t image_groups = (g.N + lanes - 1) / lanes, threads = team_size();
  const std::int64_t row_ranges = std::clamp<std::int64_t>((2 * threads + image_groups - 1) / image_groups, 1, g.H);
  cpu::RegionErrors errors;
#pragma omp parallel for num_threads(::juanji::team_size()) schedule(static) if (image_groups * row_ranges > 1)
  for (std::int64_t job = 0; job < image_groups * row_ranges; ++job) errors.guard([&] {
    const std::int64_t first = job / row_ranges * lanes, images = std::min(lanes, g.N - first);
    const std::int64_t range = job % row_ranges;
    const std::int64_t row_begin = g.H * range / row_ranges, row_end = g.H * (range + 1) / row_ranges;
    float* src = cpu::workspace<float>(cpu::WorkspaceSlot::columns, g.K * g.P * src_w * lanes);
    float* out = cpu::workspace<float>(cpu::WorkspaceSlot::batch_out, g.C * HW * lanes);
    kernels.to_image_lanes_f32({dy + first * g.K * PQ, g.K * PQ, images, g.K, g.P, g.Q, src, 0, pass.left, g.P, src_w});
    const cpu::ImageLaneConvArgs args{src, g.K, g.P, src_w, pass.left, pass.left + g.Q,
                                      pass.weights, g.R, g.S, g.dil_h, g.dil_w, pass.top,
                                      out, g.C, g.H, g.W, row_begin, row_end};
    kernels.image_lane_conv_f32(args);
    for (std::int64_t c = 0; c < g.C; ++c)
      kernels.from_image_lanes_f32(out + (c * g.H + row_begin) * g.W * lanes, row_end - row_begin, g.W, images,
                                   g.C * HW, dx + (first * g.C + c) * HW + row_begin * g.W);
  });
  errors.rethrow();
}

void direct_backward_data(const ConvGeometry& g, const float* dy, const float* w, float* dx) {
  float* rotated = cpu::workspace<float>(cpu::WorkspaceSlot::partials, g.K * (g.C / g.groups) * g.R * g.S);
  rotate_for_data_grad(g, [&](std::int64_t kc, std::int64_t r, std::int64_t s) { return w[(kc * g.R + r) * g.S + s]; },
                       rotated);
  const DirectPass pass = direct_data_grad_pass(g, rotated);
  if (use_image_lanes(g, pass)) return image_lane_backward_data(g, dy, pass, dx);
  direct_conv_all(g, dy, g.K, g.P, g.Q, pass, nullptr, dx, g.C, false, true);
}

// The direct kernel also takes the data gradient of layers with too few input channels for filter
// blocks when the error has few channels (lenet_c1, 6: 473 -> 245 us), the rows fit one vector
// (lenet_c2, 16 channels on 14-wide planes: 535 -> 436 us), or there are 3+ input channels
// (cifar_c1, 32 error channels: 1.65 -> 0.89 ms; the stem's stride phases: 8.1 -> 5.7 ms). With
// one input channel and 32 error channels (convnet_c1) a block's vectors each meet one filter, a
// load per multiply-add: 0.64 ms against GEMM + col2im's 0.47.
bool use_direct_data_grad(const ConvGeometry& g) {
  if (use_direct(g, g.K / g.groups)) return true;
  const std::int64_t Cg = g.C / g.groups;
  const bool few_errors = g.K / g.groups <= 8, one_vector_rows = g.W <= cpu::active_kernels().direct_conv_lanes;
  return g.stride_h == 1 && g.stride_w == 1 && Cg < cpu::kFilterBlock / 2 && (few_errors || one_vector_rows || Cg >= 3);
}

// The same with the images in the lanes, where there are at least half a vector of them: a job
// takes a group of `lanes` images and a range of filters, moves the group's input (zero-padded)
// and the filters' error into the lanes and sums every tap's products over the pixels, a lane per
// image; the groups' sums are then added in order. Every product is a lane of work, where the
// direct kernel's rows of 28 in 32 lanes read padded copies of the error (lenet_c1 with its bias
// gradient: 232 -> 141 us; LeNet step 1.38 -> 1.29 ms).
void image_lane_backward_weight(const ConvGeometry& g, const float* dy, const float* x, float* dw) {
  const cpu::KernelSet& kernels = cpu::active_kernels();
  const std::int64_t lanes = kernels.direct_conv_lanes, taps = g.C * g.R * g.S, PQ = g.P * g.Q, HW = g.H * g.W;
  const std::int64_t src_h = std::max(g.P + g.dil_h * (g.R - 1), g.pad_top + g.H);
  const std::int64_t src_w = std::max(g.Q + g.dil_w * (g.S - 1), g.pad_left + g.W);
  const std::int64_t image_groups = (g.N + lanes - 1) / lanes, threads = team_size();
  const std::int64_t filter_ranges = std::clamp<std::int64_t>((2 * threads + image_groups - 1) / image_groups, 1, g.K);
  float* partials = cpu::workspace<float>(cpu::WorkspaceSlot::partials, image_groups * g.K * taps);
  cpu::RegionErrors errors;
#pragma omp parallel num_threads(::juanji::team_size())
  {
#pragma omp for schedule(static)
    for (std::int64_t job = 0; job < image_groups * filter_ranges; ++job) errors.guard([&] {
      const std::int64_t first = job / filter_ranges * lanes, images = std::min(lanes, g.N - first);
      const std::int64_t range = job % filter_ranges;
      const std::int64_t k_begin = g.K * range / filter_ranges, k_end = g.K * (range + 1) / filter_ranges;
      float* src = cpu::workspace<float>(cpu::WorkspaceSlot::columns, g.C * src_h * src_w * lanes);
      float* errors = cpu::workspace<float>(cpu::WorkspaceSlot::batch_out, g.K * PQ * lanes);
      kernels.to_image_lanes_f32({x + first * g.C * HW, g.C * HW, images, g.C, g.H, g.W, src, g.pad_top, g.pad_left,
                                  src_h, src_w});
      kernels.to_image_lanes_f32({dy + (first * g.K + k_begin) * PQ, g.K * PQ, images, k_end - k_begin, g.P, g.Q,
                                  errors + k_begin * PQ * lanes, 0, 0, g.P, g.Q});
      kernels.image_lane_weight_grad_f32({src, g.C, src_h, src_w, errors, g.P, g.Q, g.R, g.S, g.dil_h, g.dil_w, k_begin,
                                          k_end - k_begin, partials + job / filter_ranges * g.K * taps});
    });
    // After a failed job (and the barrier above) every thread skips the sums, which would read
    // partials it never wrote.
#pragma omp for schedule(static)
    for (std::int64_t i = 0; i < (errors.failed() ? 0 : g.K * taps); ++i) {
      float sum = partials[i];
      for (std::int64_t group = 1; group < image_groups; ++group) sum += partials[group * g.K * taps + i];
      dw[i] = sum;
    }
  }
  errors.rethrow();
}

// Weight gradient for few input channels and too few filters for filter blocks (LeNet's first
// layer, 6): in the image lanes, or with fewer images or in groups every (filter, channel) pair
// sums its images in order with the direct kernel over zero-padded copies of x and of the error.
void direct_backward_weight(const ConvGeometry& g, const float* dy, const float* x, float* dw) {
  const cpu::KernelSet& kernels = cpu::active_kernels();
  const std::int64_t lanes = kernels.direct_conv_lanes;
  if (g.groups == 1 && 2 * g.N >= lanes) return image_lane_backward_weight(g, dy, x, dw);
  const std::int64_t Cg = g.C / g.groups, Kg = g.K / g.groups, taps = g.R * g.S;
  const std::int64_t out_stride = (g.Q + lanes - 1) / lanes * lanes;
  const std::int64_t padded_h = g.P + g.dil_h * (g.R - 1), padded_w = out_stride + g.dil_w * (g.S - 1);
  const std::int64_t x_plane = padded_h * padded_w, dy_plane = g.P * out_stride;
  float* padded_x = cpu::workspace<float>(cpu::WorkspaceSlot::columns, g.N * g.C * x_plane);
  float* padded_dy = cpu::workspace<float>(cpu::WorkspaceSlot::batch_out, g.N * g.K * dy_plane);
#pragma omp parallel num_threads(::juanji::team_size())
  {
#pragma omp for schedule(static) nowait
    for (std::int64_t plane = 0; plane < g.N * g.C; ++plane)
      pad_planes(x + plane * g.H * g.W, 1, g.H, g.W, g.pad_top, g.pad_left, padded_x + plane * x_plane,
                 padded_h, padded_w);
#pragma omp for schedule(static)
    for (std::int64_t plane = 0; plane < g.N * g.K; ++plane)
      pad_planes(dy + plane * g.P * g.Q, 1, g.P, g.Q, 0, 0, padded_dy + plane * dy_plane, g.P, out_stride);
#pragma omp for schedule(static)
    for (std::int64_t job = 0; job < g.K * Cg; ++job) {
      const std::int64_t k = job / Cg, c = (k / Kg) * Cg + job % Cg;
      float* out = dw + job * taps;
      std::fill(out, out + taps, 0.0f);
      const cpu::DirectWeightGradArgs args{padded_x + c * x_plane, padded_w, padded_dy + k * dy_plane,
                                           g.P, g.Q, out_stride, g.R, g.S, g.dil_h, g.dil_w,
                                           g.N, g.C * x_plane, g.K * dy_plane, out};
      kernels.direct_weight_grad_f32(args);
    }
  }
}

// A strided, dilated correlation of a batch of images in groups, with padding that may be negative
// (cropping): the shape of the forward pass and, at stride 1, of the data gradient (the seeds' full
// convolution of the error with the rotated kernel).
struct Correlation {
  std::int64_t N, groups;
  std::int64_t in_channels, in_h, in_w;
  std::int64_t out_channels, out_h, out_w;
  std::int64_t R, S, stride_h, stride_w, dil_h, dil_w, pad_top, pad_left;

  std::int64_t in_per_group() const { return in_channels / groups; }
  std::int64_t out_per_group() const { return out_channels / groups; }
  std::int64_t taps() const { return in_per_group() * R * S; }
  std::int64_t blocks() const { return (out_per_group() + cpu::kFilterBlock - 1) / cpu::kFilterBlock; }
};

Correlation forward_correlation(const ConvGeometry& g) {
  return {g.N, g.groups, g.C, g.H, g.W, g.K, g.P, g.Q, g.R, g.S,
          g.stride_h, g.stride_w, g.dil_h, g.dil_w, g.pad_top, g.pad_left};
}

Correlation data_grad_correlation(const ConvGeometry& g) {
  return {g.N, g.groups, g.K, g.P, g.Q, g.C, g.H, g.W, g.R, g.S,
          1, 1, g.dil_h, g.dil_w, g.dil_h * (g.R - 1) - g.pad_top, g.dil_w * (g.S - 1) - g.pad_left};
}

// The filter-vectorised kernels hold 16 filters per vector block: they need 8 or more output
// channels per group to fill half a block. They beat im2col + GEMM on every such layer measured
// (one thread: lenet_c2 forward 33 -> 100 GF/s, res_64 67 -> 107, stem 54 -> 95; weight gradients
// 22 -> 88, 60 -> 101, 52 -> 78), since they read each input value straight from the image.
bool use_filter_blocks(const Correlation& c) { return c.out_per_group() >= cpu::kFilterBlock / 2; }

constexpr std::int64_t kL2Bytes = std::int64_t{1} << 20;

// Where the taps read: the image itself when it needs no padding, else a zero-padded (or cropped)
// copy in the calling thread's workspace; tap t = (c, r, s) reads at tap_offsets[t] from an
// output pixel's origin.
struct TapSource {
  std::int64_t height, width;
  bool padded;
  std::int64_t* tap_offsets;

  TapSource(const Correlation& c, std::int64_t* offsets) : tap_offsets(offsets) {
    const std::int64_t needed_h = (c.out_h - 1) * c.stride_h + (c.R - 1) * c.dil_h + 1;
    const std::int64_t needed_w = (c.out_w - 1) * c.stride_w + (c.S - 1) * c.dil_w + 1;
    padded = c.pad_top != 0 || c.pad_left != 0 || needed_h > c.in_h || needed_w > c.in_w;
    height = padded ? needed_h : c.in_h;
    width = padded ? needed_w : c.in_w;
    for (std::int64_t ch = 0; ch < c.in_per_group(); ++ch)
      for (std::int64_t r = 0; r < c.R; ++r)
        for (std::int64_t s = 0; s < c.S; ++s)
          offsets[(ch * c.R + r) * c.S + s] = (ch * height + r * c.dil_h) * width + s * c.dil_w;
  }

  const float* planes(const Correlation& c, const float* src, std::int64_t n, std::int64_t grp) const {
    const std::int64_t channels = c.in_per_group();
    const float* image = src + (n * c.in_channels + grp * channels) * c.in_h * c.in_w;
    if (!padded) return image;
    float* out = cpu::workspace<float>(cpu::WorkspaceSlot::columns, channels * height * width);
    pad_planes(image, channels, c.in_h, c.in_w, c.pad_top, c.pad_left, out, height, width);
    return out;
  }
};

// Weights as (group, block, block_size floats), zero past a group's last filter. fill(grp, kb, out)
// writes one block, e.g. out[t * 16 + k] for tap t of filter kb * 16 + k of the group (the zeros
// are done).
template <class Fill>
const float* pack_filter_blocks(const Correlation& c, std::int64_t block_size, Fill fill) {
  const std::int64_t blocks = c.blocks(), jobs = c.groups * blocks;
  float* packed = cpu::workspace<float>(cpu::WorkspaceSlot::gemm_a, jobs * block_size);
#pragma omp parallel for num_threads(::juanji::team_size()) schedule(static) if (jobs > 1 && jobs * block_size >= cpu::kParallelGrain)
  for (std::int64_t job = 0; job < jobs; ++job) {
    float* out = packed + job * block_size;
    std::fill(out, out + block_size, 0.0f);
    fill(job / blocks, job % blocks, out);
  }
  return packed;
}

// Jobs of a filter-block pass: every (image or image chunk, group) with its blocks of filters
// split into as few ranges as keep the threads busy, since each job pads its images anew.
struct FilterBlockJobs {
  std::int64_t outer, blocks, splits;
  FilterBlockJobs(std::int64_t outer_jobs, std::int64_t filter_blocks) : outer(outer_jobs), blocks(filter_blocks) {
    const std::int64_t wanted = 4 * team_size();
    splits = std::clamp<std::int64_t>((wanted + outer - 1) / outer, 1, blocks);
  }
  std::int64_t count() const { return outer * splits; }
  std::int64_t outer_of(std::int64_t job) const { return job / splits; }
  std::int64_t first_block(std::int64_t job) const { return blocks * (job % splits) / splits; }
  std::int64_t end_block(std::int64_t job) const { return blocks * (job % splits + 1) / splits; }
};

// out = correlation of src with packed weights (+ bias); each output is written by one job.
void filter_block_correlate(const Correlation& c, const float* src, const float* packed, const float* bias,
                            float* out, bool relu) {
  const cpu::KernelSet& kernels = cpu::active_kernels();
  const std::int64_t blocks = c.blocks(), taps = c.taps(), per_group = c.out_per_group();
  const std::int64_t out_plane = c.out_h * c.out_w;
  const TapSource source(c, cpu::workspace<std::int64_t>(cpu::WorkspaceSlot::gemm_b, taps));
  const FilterBlockJobs jobs(c.N * c.groups, blocks);
  // A job's blocks of filters take each block of pixels in turn, while its taps' source values
  // are in L1, when the source planes outgrow L2 (pw's 256 channels of 56x56: swept block by
  // block they were read from L3 four times: 6.4 -> 5.0 ms). Smaller sources stay in L2 across
  // block-by-block sweeps, which keep a block's weights in L1 and write 16 planes at a time (the
  // stem and pw's data gradient ran 8% and 15% slower interleaved).
  const bool interleave = c.in_per_group() * source.height * source.width * std::int64_t{sizeof(float)} > kL2Bytes;
  cpu::RegionErrors errors;
#pragma omp parallel for num_threads(::juanji::team_size()) schedule(static) if (jobs.count() > 1)
  for (std::int64_t job = 0; job < jobs.count(); ++job) errors.guard([&] {
    const std::int64_t n = jobs.outer_of(job) / c.groups, grp = jobs.outer_of(job) % c.groups;
    const float* planes = source.planes(c, src, n, grp);
    const std::int64_t step = interleave ? jobs.end_block(job) - jobs.first_block(job) : 1;
    for (std::int64_t kb = jobs.first_block(job); kb < jobs.end_block(job); kb += step) {
      const std::int64_t first = grp * per_group + kb * cpu::kFilterBlock;
      const cpu::FilterBlockConvArgs args{planes,
                                          source.tap_offsets,
                                          taps,
                                          c.stride_h * source.width,
                                          c.stride_w,
                                          packed + (grp * blocks + kb) * taps * cpu::kFilterBlock,
                                          step,
                                          bias ? bias + first : nullptr,
                                          out + (n * c.out_channels + first) * out_plane,
                                          std::min((kb + step) * cpu::kFilterBlock, per_group) - kb * cpu::kFilterBlock,
                                          c.out_h,
                                          c.out_w,
                                          relu};
      kernels.filter_block_conv_f32(args);
    }
  });
  errors.rethrow();
}

void filter_block_forward(const ConvGeometry& g, const float* x, const float* w, const float* bias, float* y,
                          bool relu) {
  const Correlation c = forward_correlation(g);
  const std::int64_t taps = c.taps(), Kg = c.out_per_group();
  const float* packed = pack_filter_blocks(c, taps * cpu::kFilterBlock, [&](std::int64_t grp, std::int64_t kb, float* out) {
    for (std::int64_t k = 0; k < std::min<std::int64_t>(cpu::kFilterBlock, Kg - kb * cpu::kFilterBlock); ++k) {
      const float* filter = w + (grp * Kg + kb * cpu::kFilterBlock + k) * taps;
      for (std::int64_t t = 0; t < taps; ++t) out[t * cpu::kFilterBlock + k] = filter[t];
    }
  });
  filter_block_correlate(c, x, packed, bias, y, relu);
}

// Stride 1 only: dx is the correlation of the padded error with the rotated, transposed kernel.
void filter_block_backward_data(const ConvGeometry& g, const float* dy, const float* w, float* dx) {
  const Correlation c = data_grad_correlation(g);
  const std::int64_t Cg = g.C / g.groups, Kg = g.K / g.groups, RS = g.R * g.S;
  // Tap (k, r, s) of output channel ch is weight (k, ch, R-1-r, S-1-s). Written without a division
  // per element: the gather took 1.4 ms of res_256's 19 ms data gradient on one core.
  const float* packed = pack_filter_blocks(c, c.taps() * cpu::kFilterBlock, [&](std::int64_t grp, std::int64_t cb, float* out) {
    for (std::int64_t k = 0; k < Kg; ++k)
      for (std::int64_t lane = 0; lane < std::min<std::int64_t>(cpu::kFilterBlock, Cg - cb * cpu::kFilterBlock); ++lane) {
        const float* kernel = w + ((grp * Kg + k) * Cg + cb * cpu::kFilterBlock + lane) * RS;
        for (std::int64_t rs = 0; rs < RS; ++rs) out[(k * RS + RS - 1 - rs) * cpu::kFilterBlock + lane] = kernel[rs];
      }
  });
  filter_block_correlate(c, dy, packed, nullptr, dx, false);
}

// Winograd F(2x2, 3x3) (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks"): each
// 2x2 block of outputs (a tile) of a stride-1 3x3 correlation is A^T [sum_c U_kc . V_c] A, with
// U_kc = G g_kc G^T the transformed filter, V_c = B^T d_c B the transformed 4x4 input patch and
// . the elementwise product: 16 multiplies per channel and tile where the definition takes 36.
// G's entries are 0, 1 and 1/2: integer-valued weights give multiples of 1/4, integer inputs
// integer V, so integer-valued data stays exact (and equal to the direct sum). Rounding differs
// from the direct sum's otherwise (its error bound is a small multiple of the direct one); an
// infinite input can turn an output that the definition makes infinite into NaN.
constexpr std::int64_t kWinogradMinChannels = 16;
// A chunk's transformed input (16 x channels x tiles floats) stays within half of a 1 MiB L2.
constexpr std::int64_t kWinogradChunkFloats = std::int64_t{1} << 17;
constexpr std::int64_t kWinogradMaxChunkTiles = 128;

// The 16 products cost a third of the direct sum's multiply-adds but the transforms read and
// write every input and output again: it pays off from 16 channels in and out per group.
bool use_winograd(const Correlation& c) {
  return winograd_enabled() && c.R == 3 && c.S == 3 && c.stride_h == 1 && c.stride_w == 1 && c.dil_h == 1 && c.dil_w == 1 &&
         c.in_per_group() >= kWinogradMinChannels && c.out_per_group() >= kWinogradMinChannels;
}

// Transformed filters as (group, block, e, channel, 16 filters): u[e][c][k] = (G g G^T)[e / 4][e % 4]
// for the 3x3 kernel g = kernel(grp, filter, channel), rotated by 180 degrees if asked.
template <class Kernel>
const float* pack_winograd_filters(const Correlation& c, bool rotate, Kernel kernel) {
  const std::int64_t in = c.in_per_group(), per_group = c.out_per_group();
  return pack_filter_blocks(c, 16 * in * cpu::kFilterBlock, [&](std::int64_t grp, std::int64_t kb, float* out) {
    const std::int64_t filters = std::min<std::int64_t>(cpu::kFilterBlock, per_group - kb * cpu::kFilterBlock);
    for (std::int64_t ch = 0; ch < in; ++ch) {
      float u[16][cpu::kFilterBlock] = {};  // (e, filter): written to out as whole rows
      for (std::int64_t lane = 0; lane < filters; ++lane) {
        const float* g = kernel(grp, kb * cpu::kFilterBlock + lane, ch);
        float gg[4][3];  // G g
        for (int s = 0; s < 3; ++s) {
          const float g0 = g[rotate ? 8 - s : s], g1 = g[rotate ? 5 - s : 3 + s], g2 = g[rotate ? 2 - s : 6 + s];
          gg[0][s] = g0;
          gg[1][s] = (g0 + g1 + g2) * 0.5f;
          gg[2][s] = (g0 - g1 + g2) * 0.5f;
          gg[3][s] = g2;
        }
        for (int a = 0; a < 4; ++a) {  // (G g) G^T
          u[4 * a][lane] = gg[a][0];
          u[4 * a + 1][lane] = (gg[a][0] + gg[a][1] + gg[a][2]) * 0.5f;
          u[4 * a + 2][lane] = (gg[a][0] - gg[a][1] + gg[a][2]) * 0.5f;
          u[4 * a + 3][lane] = gg[a][2];
        }
      }
      for (int e = 0; e < 16; ++e) std::copy(u[e], u[e] + cpu::kFilterBlock, out + (e * in + ch) * cpu::kFilterBlock);
    }
  });
}

// The tiles of a correlation's output, numbered image by image, row by row.
struct WinogradTiles {
  std::int64_t h, w, total;
  std::int64_t width;  // an input row, zero-padded, as wide as whole vectors of tiles from any column read
  std::int64_t used_h, used_w;  // input rows and columns some output reads (the rest stays zero)

  explicit WinogradTiles(const Correlation& c)
      : h((c.out_h + 1) / 2), w((c.out_w + 1) / 2), total(c.N * h * w),
        width(2 * ((w + cpu::kFilterBlock - 1) / cpu::kFilterBlock * cpu::kFilterBlock + cpu::kFilterBlock) + 2),
        used_h(std::min(c.in_h, c.out_h + 2 - c.pad_top)), used_w(std::min(c.in_w, c.out_w + 2 - c.pad_left)) {}

  // Padded input rows that one image's part of `tiles` consecutive tiles spans at most.
  std::int64_t rows_for(std::int64_t tiles) const { return 2 * std::min(h, (tiles + w - 1) / w + 1) + 2; }
};

// Calls fn(n, ty, tx_begin, tx_end, offset) for each run of tiles of one tile row among the tiles
// [begin, end); offset counts from begin.
template <class Fn>
void for_each_tile_run(const WinogradTiles& tiles, std::int64_t begin, std::int64_t end, Fn fn) {
  // Divisions for the first tile only: the transforms call this per channel, and three divisions
  // per run cost as much as a short run's transforms.
  std::int64_t n = begin / (tiles.h * tiles.w), ty = begin / tiles.w % tiles.h, tx = begin % tiles.w;
  for (std::int64_t t = begin; t < end;) {
    const std::int64_t run = std::min(tiles.w - tx, end - t);
    fn(n, ty, tx, tx + run, t - begin);
    t += run;
    tx = 0;
    if (++ty == tiles.h) {
      ty = 0;
      ++n;
    }
  }
}

// for_each_tile_run with start_image(n, first_row, last_row) called before each image's first run
// (its tile rows [first_row, last_row] hold the image's tiles among [begin, end)) and fn given the
// tile row counted from first_row.
template <class StartImage, class Fn>
void for_each_tile_run_by_image(const WinogradTiles& tiles, std::int64_t begin, std::int64_t end,
                                StartImage start_image, Fn fn) {
  std::int64_t image = -1, first_row = 0;
  for_each_tile_run(tiles, begin, end, [&](std::int64_t n, std::int64_t ty, std::int64_t tx0, std::int64_t tx1,
                                           std::int64_t offset) {
    if (n != image) {
      image = n;
      first_row = ty;
      start_image(n, ty, std::min(tiles.h - 1, (end - 1 - n * tiles.h * tiles.w) / tiles.w));
    }
    fn(ty - first_row, tx0, tx1, offset);
  });
}

// Input transforms of channel ch (of group grp) for the tiles [begin, end), the transforms' rows
// [first_row, end_row) (WinogradInputRow): v[e * v_stride + ch * v_row + t - begin]. Each image's
// rows are padded once into `rows` (tiles.rows_for(end - begin) x tiles.width floats), which the
// caller zeroed before its first call: this writes the data columns only (lanes that are thrown
// away read past them).
void winograd_input_chunk(const Correlation& c, const WinogradTiles& tiles, const float* src, std::int64_t grp,
                          std::int64_t ch, std::int64_t begin, std::int64_t end, float* rows, float* v,
                          std::int64_t v_row, std::int64_t v_stride, int first_row = 0, int end_row = 4) {
  const cpu::KernelSet& kernels = cpu::active_kernels();
  // Only the rows and columns the outputs read: a NaN elsewhere stays out of the sums. The
  // columns around them are the zero padding of every row, never written after the caller zeroed
  // them; a row outside the image gets its data columns zeroed.
  const std::int64_t j_begin = std::max<std::int64_t>(0, -c.pad_left), j_end = std::max(j_begin, tiles.used_w);
  auto pad_image = [&](std::int64_t n, std::int64_t first_row, std::int64_t last_row) {
    const float* plane = src + ((n * c.in_channels + grp * c.in_per_group() + ch) * c.in_h) * c.in_w;
    for (std::int64_t r = 0; r < 2 * (last_row - first_row) + 4; ++r) {
      float* out = rows + r * tiles.width + j_begin + c.pad_left;
      const std::int64_t i = 2 * first_row + r - c.pad_top;
      if (i < 0 || i >= tiles.used_h) {
        std::fill(out, out + (j_end - j_begin), 0.0f);
      } else {
        cpu::copy_short(plane + i * c.in_w + j_begin, j_end - j_begin, out);
      }
    }
  };
  // Rows of at most half a vector of tiles go two by two (convnet_c2's 7-tile rows: its forward
  // 5-7% faster on one core): a full row waits for the next.
  const bool pairs = 2 * tiles.w <= kernels.direct_conv_lanes;
  std::int64_t waiting_row = -1, waiting_offset = 0;
  auto flush = [&] {
    if (waiting_row < 0) return;
    kernels.winograd_input_row_f32(rows + 2 * waiting_row * tiles.width, tiles.width, tiles.w,
                                   v + ch * v_row + waiting_offset, v_stride, first_row, end_row);
    waiting_row = -1;
  };
  auto start_image = [&](std::int64_t n, std::int64_t first_row, std::int64_t last_row) {
    flush();
    pad_image(n, first_row, last_row);
  };
  for_each_tile_run_by_image(tiles, begin, end, start_image, [&](std::int64_t row, std::int64_t tx0, std::int64_t tx1,
                                                                 std::int64_t offset) {
    const bool full = tx0 == 0 && tx1 == tiles.w;
    if (pairs && full && waiting_row >= 0 && waiting_row + 1 == row) {
      kernels.winograd_input_row_pair_f32(rows + 2 * waiting_row * tiles.width, tiles.width, tiles.w,
                                          v + ch * v_row + waiting_offset, v_stride, first_row, end_row);
      waiting_row = -1;
      return;
    }
    flush();
    if (pairs && full) {
      waiting_row = row;
      waiting_offset = offset;
      return;
    }
    kernels.winograd_input_row_f32(rows + 2 * row * tiles.width + 2 * tx0, tiles.width, tx1 - tx0,
                                   v + ch * v_row + offset, v_stride, first_row, end_row);
  });
  flush();
}

// out = correlation of src with the transformed filters (+ bias, then ReLU if asked). A job takes
// a chunk of the batch's tiles in one group: it transforms the chunk's input once, then per block
// of 16 filters sums the products and transforms them back. Every output is written by one job,
// and its value does not depend on the chunking.
void winograd_correlate(const Correlation& c, const float* src, const float* packed, const float* bias,
                        float* out, bool relu) {
  const cpu::KernelSet& kernels = cpu::active_kernels();
  const std::int64_t in = c.in_per_group(), per_group = c.out_per_group(), blocks = c.blocks();
  const WinogradTiles all(c);
  // Chunks as many as a multiple of the thread count, their bounds on whole 16-tile blocks.
  const std::int64_t wanted = std::clamp<std::int64_t>(kWinogradChunkFloats / (16 * in), 16, kWinogradMaxChunkTiles);
  const std::int64_t threads = team_size();
  const std::int64_t chunks = ((all.total + wanted - 1) / wanted + threads - 1) / threads * threads;
  auto chunk_bound = [&](std::int64_t i) {
    return i == chunks ? all.total : std::min(all.total, (all.total * i / chunks + 8) / 16 * 16);
  };
  const std::int64_t max_rows = all.rows_for((all.total + chunks - 1) / chunks + 16);
  const std::int64_t out_plane = c.out_h * c.out_w;
  const FilterBlockJobs jobs(c.groups * chunks, blocks);
  cpu::RegionErrors errors;
#pragma omp parallel for num_threads(::juanji::team_size()) schedule(static) if (jobs.count() > 1)
  for (std::int64_t job = 0; job < jobs.count(); ++job) errors.guard([&] {
    const std::int64_t grp = jobs.outer_of(job) / chunks, chunk = jobs.outer_of(job) % chunks;
    const std::int64_t begin = chunk_bound(chunk), end = chunk_bound(chunk + 1), tiles = end - begin;
    if (tiles == 0) return;
    const std::int64_t v_stride = in * tiles + 16, m_stride = tiles * cpu::kFilterBlock + 16;
    float* v = cpu::workspace<float>(cpu::WorkspaceSlot::columns, 16 * v_stride + max_rows * all.width);
    float* rows = v + 16 * v_stride;
    std::fill(rows, rows + max_rows * all.width, 0.0f);
    for (std::int64_t ch = 0; ch < in; ++ch) winograd_input_chunk(c, all, src, grp, ch, begin, end, rows, v, tiles, v_stride);
    float* m = cpu::workspace<float>(cpu::WorkspaceSlot::batch_out, 16 * m_stride);
    for (std::int64_t kb = jobs.first_block(job); kb < jobs.end_block(job); ++kb) {
      const std::int64_t first = grp * per_group + kb * cpu::kFilterBlock;
      const std::int64_t filters = std::min<std::int64_t>(cpu::kFilterBlock, per_group - kb * cpu::kFilterBlock);
      float block_bias[cpu::kFilterBlock] = {};
      if (bias) std::copy(bias + first, bias + first + filters, block_bias);
      kernels.winograd_products_f32({packed + (grp * blocks + kb) * 16 * in * cpu::kFilterBlock, v, in, tiles,
                                     v_stride, m, m_stride});
      for_each_tile_run(all, begin, end, [&](std::int64_t n, std::int64_t ty, std::int64_t tx0, std::int64_t tx1,
                                             std::int64_t offset) {
        float* origin = out + (n * c.out_channels + first) * out_plane + 2 * ty * c.out_w + 2 * tx0;
        kernels.winograd_output_f32({m + offset * cpu::kFilterBlock, m_stride, tx1 - tx0, block_bias, relu, origin,
                                     filters, out_plane, c.out_w, std::min<std::int64_t>(2, c.out_h - 2 * ty),
                                     std::min(2 * tx1, c.out_w) - 2 * tx0});
      });
    }
  });
  errors.rethrow();
}

void winograd_forward(const ConvGeometry& g, const float* x, const float* w, const float* bias, float* y, bool relu) {
  const Correlation c = forward_correlation(g);
  const std::int64_t Cg = c.in_per_group(), Kg = c.out_per_group();
  const float* packed = pack_winograd_filters(c, false, [&](std::int64_t grp, std::int64_t k, std::int64_t ch) {
    return w + ((grp * Kg + k) * Cg + ch) * 9;
  });
  winograd_correlate(c, x, packed, bias, y, relu);
}

// dx is the correlation of the padded error with the rotated, transposed kernel.
void winograd_backward_data(const ConvGeometry& g, const float* dy, const float* w, float* dx) {
  const Correlation c = data_grad_correlation(g);
  const std::int64_t Cg = g.C / g.groups, Kg = g.K / g.groups;
  const float* packed = pack_winograd_filters(c, true, [&](std::int64_t grp, std::int64_t ch, std::int64_t k) {
    return w + ((grp * Kg + k) * Cg + ch) * 9;
  });
  winograd_correlate(c, dy, packed, nullptr, dx, false);
}

// The weight gradient of the same tiles: dW_kc = G^T [sum_tiles (A dy A^T) . V_c] G, dy being a
// tile's 2x2 output gradient (zero past the output's edge). The sums over tiles run in chunks of
// the batch fixed by the shape, each added in order to the transformed gradient: a result of the
// shape alone. Integer-valued data stays exact (the 1/2s of G^T apply to integer sums). A NaN or
// infinity in x or dy reaches all 9 taps of the filters whose tiles it lies in. db (or null) gets
// the bias gradient as filter_block_backward_weight sums it: each error plane summed when its
// image's first rows are read.

// One group's buffers for chunks of at most max_chunk tiles: v[e][c][t], z[e][block][t][k] and
// du[e][block][c][k], the transformed gradient.
struct WinogradGradLayout {
  std::int64_t in, per_group, blocks, chunks, max_chunk;
  std::int64_t v_row, v_stride, z_block, z_stride, du_block, du_stride;
  std::int64_t error_row, padded_rows;  // pixels per row of a block's pixel-major gradient; input rows of one image in a chunk

  WinogradGradLayout(const Correlation& c, const WinogradTiles& all, std::int64_t chunk_tiles)
      : in(c.in_per_group()), per_group(c.out_per_group()), blocks(c.blocks()),
        chunks((all.total + chunk_tiles - 1) / chunk_tiles), max_chunk((all.total + chunks - 1) / chunks),
        v_row(max_chunk + 16), v_stride(in * v_row + 16), z_block(max_chunk * cpu::kFilterBlock),
        z_stride(blocks * z_block + 16), du_block(in * cpu::kFilterBlock), du_stride(blocks * du_block),
        error_row(2 * all.w), padded_rows(all.rows_for(max_chunk)) {}

  std::int64_t chunk_begin(const WinogradTiles& all, std::int64_t chunk) const { return all.total * chunk / chunks; }
  std::int64_t errors_size() const { return (padded_rows - 2) * error_row * cpu::kFilterBlock; }
};

// The error transforms of block kb over the tiles [begin, end), rows [first_row, end_row) of
// them (WinogradGradRow), into z: each image's part of the chunk has its block's gradient rows
// made pixel-major in `errors` (zero past the output's edge and the group's last filter), then
// transformed run by run. With plane_sums, the block's error planes of the images whose first
// tile the chunk holds are summed into it.
void winograd_grad_block(const ConvGeometry& g, const WinogradTiles& all, const WinogradGradLayout& l,
                         const float* dy, std::int64_t grp, std::int64_t kb, std::int64_t begin, std::int64_t end,
                         int first_row, int end_row, float* errors, float* z, double* plane_sums) {
  const cpu::KernelSet& kernels = cpu::active_kernels();
  const std::int64_t filters = std::min<std::int64_t>(cpu::kFilterBlock, l.per_group - kb * cpu::kFilterBlock);
  auto fill_errors = [&](std::int64_t n, std::int64_t first_tile_row, std::int64_t last_tile_row) {
    const std::int64_t first_filter = n * g.K + grp * l.per_group + kb * cpu::kFilterBlock;
    const float* planes = dy + first_filter * g.P * g.Q;
    if (plane_sums && n * all.h * all.w >= begin)
      for (std::int64_t f = 0; f < filters; ++f)
        plane_sums[first_filter + f] = cpu::sum_elements(planes + f * g.P * g.Q, g.P * g.Q);
    for (std::int64_t p = 2 * first_tile_row; p < 2 * last_tile_row + 2; ++p) {
      float* row = errors + (p - 2 * first_tile_row) * l.error_row * cpu::kFilterBlock;
      if (p < g.P) {
        kernels.pixel_major_row_f32(planes + p * g.Q, g.P * g.Q, filters, g.Q, l.error_row, row);
      } else {
        std::fill(row, row + l.error_row * cpu::kFilterBlock, 0.0f);
      }
    }
  };
  for_each_tile_run_by_image(all, begin, end, fill_errors, [&](std::int64_t row, std::int64_t tx0, std::int64_t tx1,
                                                               std::int64_t offset) {
    kernels.winograd_grad_row_f32(errors + (2 * row * l.error_row + 2 * tx0) * cpu::kFilterBlock, l.error_row, tx1 - tx0,
                                  z + kb * l.z_block + offset * cpu::kFilterBlock, l.z_stride, first_row, end_row);
  });
}

// dW = G^T dU G for one group, G^T = [1 1/2 1/2 0; 0 1/2 -1/2 0; 0 1/2 1/2 1], and db from the
// plane sums (or no db).
void winograd_weight_from_transformed(const ConvGeometry& g, const WinogradGradLayout& l, std::int64_t grp,
                                      const float* du, const double* plane_sums, float* dw, float* db) {
#pragma omp parallel for num_threads(::juanji::team_size()) schedule(static)
  for (std::int64_t k = 0; k < l.per_group; ++k) {
    if (db) {
      double bias = 0;
      for (std::int64_t n = 0; n < g.N; ++n) bias += plane_sums[n * g.K + grp * l.per_group + k];
      db[grp * l.per_group + k] = static_cast<float>(bias);
    }
    for (std::int64_t ch = 0; ch < l.in; ++ch) {
      const float* m = du + (k / cpu::kFilterBlock) * l.du_block + ch * cpu::kFilterBlock + k % cpu::kFilterBlock;
      float s[3][4];
      for (int b = 0; b < 4; ++b) {
        const float m0 = m[b * l.du_stride], m1 = m[(4 + b) * l.du_stride], m2 = m[(8 + b) * l.du_stride],
                    m3 = m[(12 + b) * l.du_stride];
        s[0][b] = m0 + (m1 + m2) * 0.5f;
        s[1][b] = (m1 - m2) * 0.5f;
        s[2][b] = (m1 + m2) * 0.5f + m3;
      }
      float* out = dw + ((grp * l.per_group + k) * l.in + ch) * 9;
      for (int r = 0; r < 3; ++r) {
        out[3 * r] = s[r][0] + (s[r][1] + s[r][2]) * 0.5f;
        out[3 * r + 1] = (s[r][1] - s[r][2]) * 0.5f;
        out[3 * r + 2] = (s[r][1] + s[r][2]) * 0.5f + s[r][3];
      }
    }
  }
}

// Few channels: the cells (e, block of 16 filters) of the transformed gradient are shared out as
// jobs (the top or bottom half of the e = 4a + b, block), each thread taking a run of them. With
// two threads each makes the input and error transforms of its half only, chunk after chunk, and
// sums its own products, without a barrier; chunks of kWinogradGradMinHalfChunk+ tiles keep a
// thread's half of the transforms in L2. Both threads pad the input and make the error
// pixel-major: longer chunks repay that (cifar_c2's backward 4.9 -> 4.3 ms; res_64, 192-tile
// chunks, ran 4% slower than through L3).
constexpr std::int64_t kWinogradGradL2Bytes = std::int64_t{768} << 10;
constexpr std::int64_t kWinogradGradMinHalfChunk = 256;

std::int64_t winograd_half_chunk_tiles(const Correlation& c) {
  const std::int64_t half_tile_bytes = 8 * std::int64_t{sizeof(float)} * (c.in_per_group() + c.blocks() * cpu::kFilterBlock);
  return kWinogradGradL2Bytes / half_tile_bytes / 16 * 16;
}

void winograd_weight_grad_by_halves(const ConvGeometry& g, const Correlation& c, const float* dy, const float* x,
                                    float* dw, float* db) {
  const cpu::KernelSet& kernels = cpu::active_kernels();
  const WinogradTiles all(c);
  const WinogradGradLayout l(c, all, winograd_half_chunk_tiles(c));
  float* du = cpu::workspace<float>(cpu::WorkspaceSlot::partials, 16 * l.du_stride);
  double* plane_sums = db ? cpu::workspace<double>(cpu::WorkspaceSlot::plane_sums, g.N * g.K) : nullptr;
  const std::int64_t jobs = 2 * l.blocks;  // job = half * blocks + block
  const std::int64_t parts = std::min<std::int64_t>(jobs, team_size());
  for (std::int64_t grp = 0; grp < g.groups; ++grp) {
    cpu::RegionErrors errors;
#pragma omp parallel for num_threads(::juanji::team_size()) schedule(static) if (parts > 1)
    for (std::int64_t part = 0; part < parts; ++part) errors.guard([&] {
      const std::int64_t first_job = jobs * part / parts, end_job = jobs * (part + 1) / parts;
      float* v = cpu::workspace<float>(cpu::WorkspaceSlot::gemm_a, 16 * l.v_stride);
      float* z = cpu::workspace<float>(cpu::WorkspaceSlot::gemm_b, 16 * l.z_stride);
      float* rows = cpu::workspace<float>(cpu::WorkspaceSlot::columns, l.padded_rows * all.width);
      std::fill(rows, rows + l.padded_rows * all.width, 0.0f);
      float* errors = cpu::workspace<float>(cpu::WorkspaceSlot::batch_out, l.errors_size());
      const int first_row = first_job < l.blocks ? 0 : 2, end_row = end_job > l.blocks ? 4 : 2;
      for (std::int64_t chunk = 0; chunk < l.chunks; ++chunk) {
        const std::int64_t begin = l.chunk_begin(all, chunk), end = l.chunk_begin(all, chunk + 1);
        for (std::int64_t ch = 0; ch < l.in; ++ch)
          winograd_input_chunk(c, all, x, grp, ch, begin, end, rows, v, l.v_row, l.v_stride, first_row, end_row);
        for (std::int64_t kb = 0; kb < l.blocks; ++kb) {
          const bool top = first_job <= kb && kb < end_job, bottom = first_job <= l.blocks + kb && l.blocks + kb < end_job;
          if (!top && !bottom) continue;
          const int block_first_row = top ? 0 : 2, block_end_row = bottom ? 4 : 2;
          winograd_grad_block(g, all, l, dy, grp, kb, begin, end, block_first_row, block_end_row, errors, z,
                              top ? plane_sums : nullptr);
          for (std::int64_t e = 4 * block_first_row; e < 4 * block_end_row; ++e)
            kernels.winograd_weight_products_f32({z + e * l.z_stride + kb * l.z_block, v + e * l.v_stride, end - begin,
                                                  l.v_row, l.in, du + e * l.du_stride + kb * l.du_block, chunk > 0});
        }
      }
    });
    errors.rethrow();
    winograd_weight_from_transformed(g, l, grp, du, plane_sums, dw, db);
  }
}

// More channels: each chunk's transforms are shared out by channel and block, then its products
// by (e, block), through chunks that stay in the last-level cache and are long enough to pay for
// adding their sums into the gradient and for the barrier each takes (L2-sized chunks of 1-2 MiB
// ran 10-20% slower).
constexpr std::int64_t kWinogradGradChunkBytes = std::int64_t{8} << 20;
constexpr std::int64_t kWinogradGradMinChunk = 256;

void winograd_weight_grad_shared(const ConvGeometry& g, const Correlation& c, const float* dy, const float* x,
                                 float* dw, float* db) {
  const cpu::KernelSet& kernels = cpu::active_kernels();
  const WinogradTiles all(c);
  const std::int64_t bytes_per_tile = 64 * (c.in_per_group() + c.blocks() * cpu::kFilterBlock);
  const WinogradGradLayout l(c, all, std::max(kWinogradGradMinChunk, kWinogradGradChunkBytes / bytes_per_tile));
  // Two buffers of transforms: a chunk's are made while the previous chunk's products may still
  // run, so each chunk costs one barrier (the one after its transforms), not three.
  float* v_buffers = cpu::workspace<float>(cpu::WorkspaceSlot::gemm_a, 2 * 16 * l.v_stride);
  float* z_buffers = cpu::workspace<float>(cpu::WorkspaceSlot::gemm_b, 2 * 16 * l.z_stride);
  float* du = cpu::workspace<float>(cpu::WorkspaceSlot::partials, 16 * l.du_stride);
  double* plane_sums = db ? cpu::workspace<double>(cpu::WorkspaceSlot::plane_sums, g.N * g.K) : nullptr;
  for (std::int64_t grp = 0; grp < g.groups; ++grp) {
    cpu::RegionErrors region_errors;
#pragma omp parallel num_threads(::juanji::team_size())
    {
      float* rows = nullptr;
      float* errors = nullptr;
      region_errors.guard([&] {
        rows = cpu::workspace<float>(cpu::WorkspaceSlot::columns, l.padded_rows * all.width);
        std::fill(rows, rows + l.padded_rows * all.width, 0.0f);
        errors = cpu::workspace<float>(cpu::WorkspaceSlot::batch_out, l.errors_size());
      });
      // After the barrier every thread sees the same verdict, so all of them skip the work (and
      // its barriers) together.
#pragma omp barrier
      for (std::int64_t chunk = 0; chunk < (region_errors.failed() ? 0 : l.chunks); ++chunk) {
        const std::int64_t begin = l.chunk_begin(all, chunk), end = l.chunk_begin(all, chunk + 1);
        float* v = v_buffers + chunk % 2 * 16 * l.v_stride;
        float* z = z_buffers + chunk % 2 * 16 * l.z_stride;
#pragma omp for schedule(static) nowait
        for (std::int64_t ch = 0; ch < l.in; ++ch) winograd_input_chunk(c, all, x, grp, ch, begin, end, rows, v, l.v_row, l.v_stride);
#pragma omp for schedule(static)
        for (std::int64_t kb = 0; kb < l.blocks; ++kb)
          winograd_grad_block(g, all, l, dy, grp, kb, begin, end, 0, 4, errors, z, plane_sums);
        // The same (e, block) jobs go to the same thread every chunk (a static schedule of the same
        // loop): each gradient element is added to in chunk order by one thread.
#pragma omp for schedule(static) nowait
        for (std::int64_t job = 0; job < 16 * l.blocks; ++job) {
          const std::int64_t e = job / l.blocks, kb = job % l.blocks;
          kernels.winograd_weight_products_f32({z + e * l.z_stride + kb * l.z_block, v + e * l.v_stride, end - begin,
                                                l.v_row, l.in, du + e * l.du_stride + kb * l.du_block, chunk > 0});
        }
      }
    }
    region_errors.rethrow();
    winograd_weight_from_transformed(g, l, grp, du, plane_sums, dw, db);
  }
}

void winograd_backward_weight(const ConvGeometry& g, const float* dy, const float* x, float* dw, float* db) {
  const Correlation c = forward_correlation(g);
  if (winograd_half_chunk_tiles(c) >= kWinogradGradMinHalfChunk) return winograd_weight_grad_by_halves(g, c, dy, x, dw, db);
  winograd_weight_grad_shared(g, c, dy, x, dw, db);
}

// Image chunks accumulate their images in order into partial gradients, which are then added in
// chunk order. The chunk count is a function of the shape alone (never of the thread count): as
// many as it takes to give (chunk, group, block) jobs enough to share, since every chunk's partial
// is a full copy of the gradient (res_256 with 8 chunks wrote and re-read 19 MB of partials).
std::int64_t weight_grad_chunks(const ConvGeometry& g, std::int64_t blocks) {
  constexpr std::int64_t kWantedJobs = 16;
  const std::int64_t per_chunk = g.groups * blocks;
  return std::clamp<std::int64_t>((kWantedJobs + per_chunk - 1) / per_chunk, 1, std::min<std::int64_t>(g.N, 8));
}

// db (or null) gets the bias gradient: each error plane summed while the block reads it, the
// plane sums then added image by image, as bias_grad adds them.
void filter_block_backward_weight(const ConvGeometry& g, const float* dy, const float* x, float* dw,
                                  float* db) {
  const cpu::KernelSet& kernels = cpu::active_kernels();
  const Correlation c = forward_correlation(g);
  const std::int64_t taps = c.taps(), blocks = c.blocks(), Kg = c.out_per_group(), PQ = g.P * g.Q;
  const std::int64_t block_size = taps * cpu::kFilterBlock, chunk_size = g.groups * blocks * block_size;
  const std::int64_t chunks = weight_grad_chunks(g, blocks);
  const TapSource source(c, cpu::workspace<std::int64_t>(cpu::WorkspaceSlot::gemm_b, taps));
  float* partials = cpu::workspace<float>(cpu::WorkspaceSlot::partials, chunks * chunk_size);
  double* plane_sums = db ? cpu::workspace<double>(cpu::WorkspaceSlot::plane_sums, g.N * g.K) : nullptr;
  const FilterBlockJobs jobs(chunks * g.groups, blocks);
  cpu::RegionErrors errors;
#pragma omp parallel for num_threads(::juanji::team_size()) schedule(static) if (jobs.count() > 1)
  for (std::int64_t job = 0; job < jobs.count(); ++job) errors.guard([&] {
    const std::int64_t chunk = jobs.outer_of(job) / g.groups, grp = jobs.outer_of(job) % g.groups;
    const std::int64_t kb_begin = jobs.first_block(job), kb_end = jobs.end_block(job);
    float* partial = partials + chunk * chunk_size + grp * blocks * block_size;
    std::fill(partial + kb_begin * block_size, partial + kb_end * block_size, 0.0f);
    float* errors = cpu::workspace<float>(cpu::WorkspaceSlot::batch_out, PQ * cpu::kFilterBlock);
    for (std::int64_t n = g.N * chunk / chunks; n < g.N * (chunk + 1) / chunks; ++n) {
      const float* planes = source.planes(c, x, n, grp);
      for (std::int64_t kb = kb_begin; kb < kb_end; ++kb) {
        // The block's errors, pixel-major, zero past the group's last filter.
        const std::int64_t first_filter = n * g.K + grp * Kg + kb * cpu::kFilterBlock;
        const std::int64_t filters = std::min<std::int64_t>(cpu::kFilterBlock, Kg - kb * cpu::kFilterBlock);
        kernels.pixel_major_row_f32(dy + first_filter * PQ, PQ, filters, PQ, PQ, errors);
        if (plane_sums)
          for (std::int64_t f = 0; f < filters; ++f)
            plane_sums[first_filter + f] = cpu::sum_elements(dy + (first_filter + f) * PQ, PQ);
        const cpu::FilterBlockWeightGradArgs args{planes, source.tap_offsets, taps, g.stride_h * source.width,
                                                  g.stride_w, errors, g.P, g.Q, partial + kb * block_size};
        kernels.filter_block_weight_grad_f32(args);
      }
    }
  });
  errors.rethrow();
#pragma omp parallel for num_threads(::juanji::team_size()) schedule(static)
  for (std::int64_t filter = 0; filter < g.K; ++filter) {
    const std::int64_t grp = filter / Kg, kb = filter % Kg / cpu::kFilterBlock, k = filter % Kg % cpu::kFilterBlock;
    const float* first = partials + (grp * blocks + kb) * block_size + k;
    for (std::int64_t t = 0; t < taps; ++t) {
      float sum = first[t * cpu::kFilterBlock];
      for (std::int64_t chunk = 1; chunk < chunks; ++chunk) sum += first[chunk * chunk_size + t * cpu::kFilterBlock];
      dw[filter * taps + t] = sum;
    }
    if (db) {
      double bias = 0;
      for (std::int64_t n = 0; n < g.N; ++n) bias += plane_sums[n * g.K + filter];
      db[filter] = static_cast<float>(bias);
    }
  }
}

constexpr std::int64_t kImplicitMinColumnElements = std::int64_t{1} << 20;

// Writes the block [first_row, first_row + rows) x [first_col, first_col + cols) of the virtual
// im2col matrix of a batch of images (rows (c, r, s), columns image*P*Q + p*Q + q) straight from
// x to out[row * row_stride + col * col_stride]: what a materialised matrix would cost in a write
// and a re-read of C*R*S*P*Q values per image, packing does in one pass.
template <class T>
void pack_virtual_columns(const ConvGeometry& g, const T* x, std::int64_t first_row, std::int64_t rows,
                          std::int64_t first_col, std::int64_t cols, T* out, std::int64_t row_stride,
                          std::int64_t col_stride) {
  const std::int64_t PQ = g.P * g.Q, HW = g.H * g.W;
  for (std::int64_t kk = 0; kk < rows; ++kk) {
    const std::int64_t k = first_row + kk, c = k / (g.R * g.S), r = (k / g.S) % g.R, s = k % g.S;
    const std::int64_t w_shift = s * g.dil_w - g.pad_left;
    const auto [q_inside, q_outside] = inside_columns(g, w_shift);
    T* row = out + kk * row_stride;
    // Walk the block's columns one output row (fixed image and p) at a time.
    for (std::int64_t j = 0; j < cols;) {
      const std::int64_t column = first_col + j, image = column / PQ, pq = column % PQ;
      const std::int64_t p = pq / g.Q, q = pq % g.Q, run = std::min(cols - j, g.Q - q);
      T* dst = row + j * col_stride;
      j += run;
      const std::int64_t ih = p * g.stride_h - g.pad_top + r * g.dil_h;
      const std::int64_t begin = ih < 0 || ih >= g.H ? q + run : std::clamp(q_inside, q, q + run);
      const std::int64_t end = ih < 0 || ih >= g.H ? q + run : std::clamp(q_outside, begin, q + run);
      // The plane's pointer, and offsets into it: a row outside the image or a large shift would
      // make a pointer far outside the plane, which is undefined even unread.
      const T* plane = x + image * g.C * HW + c * HW;
      const std::int64_t offset = ih * g.W + w_shift;
      for (std::int64_t t = q; t < begin; ++t) dst[(t - q) * col_stride] = T(0);
      if (g.stride_w == 1 && col_stride == 1) {
        if (end > begin) std::copy(plane + (offset + begin), plane + (offset + end), dst + (begin - q));
      } else {
        for (std::int64_t t = begin; t < end; ++t) dst[(t - q) * col_stride] = plane[offset + t * g.stride_w];
      }
      for (std::int64_t t = end; t < q + run; ++t) dst[(t - q) * col_stride] = T(0);
    }
  }
}

// GEMM's B operand of the forward pass: rows (c, r, s), columns of the batch.
template <class T>
struct ImplicitColumns {
  const ConvGeometry& g;
  const T* x;  // the batch's first image, at its group's first channel

  void operator()(std::int64_t k0, std::int64_t kc, std::int64_t j0, std::int64_t cols, int nr, T* out) const {
    pack_virtual_columns(g, x, k0, kc, j0, cols, out, nr, 1);
    for (std::int64_t kk = 0; kk < kc; ++kk) std::fill(out + kk * nr + cols, out + (kk + 1) * nr, T(0));
  }
};

// GEMM's B operand of the weight gradient, the transpose: rows are columns of the batch,
// columns (c, r, s).
template <class T>
struct ImplicitColumnsTransposed {
  const ConvGeometry& g;
  const T* x;

  void operator()(std::int64_t k0, std::int64_t kc, std::int64_t j0, std::int64_t cols, int nr, T* out) const {
    pack_virtual_columns(g, x, j0, cols, k0, kc, out, 1, nr);
    for (std::int64_t kk = 0; kk < kc; ++kk) std::fill(out + kk * nr + cols, out + (kk + 1) * nr, T(0));
  }
};

// The float32 paths (direct, Winograd, filter blocks) copy the input or the error into padded
// planes: worth it for a network's few pixels of padding, not where padding or a dilated kernel
// dwarfs the image (a 1x1 input with padding 25000 would take 10 GB of planes). Such layers take
// the GEMM path, whose scratch is bounded by the sizes of the input and the output.
bool padding_is_modest(const ConvGeometry& g) {
  const auto modest = [](std::int64_t in, std::int64_t out, std::int64_t extra) { return extra <= 4 * (in + out) + 64; };
  return modest(g.H, g.P, 2 * g.pad_top + g.dil_h * (g.R - 1)) && modest(g.W, g.Q, 2 * g.pad_left + g.dil_w * (g.S - 1));
}

// im2col (or implicit columns) + GEMM: every problem, float32 or float64.
template <class T>
void gemm_forward(const ConvGeometry& g, const T* x, const T* w, const T* bias, T* y) {
  const std::int64_t Cg = g.C / g.groups, Kg = g.K / g.groups;
  const std::int64_t PQ = g.P * g.Q, CRSg = Cg * g.R * g.S;
  const bool pointwise = is_pointwise(g);
  const std::int64_t per_batch = images_per_gemm(g);
  for_each_batch(g.N, per_batch, [&](std::int64_t first, std::int64_t images, bool threaded) {
    const std::int64_t cols = images * PQ;
    // Packing straight from x pays off once the im2col matrix outgrows the caches (measured:
    // +8% to +30% on res_64..res_256 and the stem); below that, im2col's long row copies win
    // (lenet_c2 and cifar_c2 ran 2x and 1.2x slower implicitly).
    const bool implicit = !pointwise && CRSg * cols > kImplicitMinColumnElements;
    T* col = implicit ? nullptr : cpu::workspace<T>(cpu::WorkspaceSlot::columns, CRSg * cols);
    T* out = images > 1 ? cpu::workspace<T>(cpu::WorkspaceSlot::batch_out, Kg * cols) : nullptr;
    for (std::int64_t grp = 0; grp < g.groups; ++grp) {
      T* yg = y + (first * g.K + grp * Kg) * PQ;
      T* c = images > 1 ? out : yg;
      if (bias)
        for (std::int64_t k = 0; k < Kg; ++k) std::fill(c + k * cols, c + (k + 1) * cols, bias[grp * Kg + k]);
      const cpu::Matrix<T> weights{w + grp * Kg * CRSg, CRSg, 1};
      if (implicit) {
        const ImplicitColumns<T> columns{g, x + (first * g.C + grp * Cg) * g.H * g.W};
        cpu::gemm_with_packer<T>(Kg, cols, CRSg, weights, columns, c, cols, bias != nullptr, threaded);
      } else {
        const T* columns = batch_columns(g, x, first, images, grp, pointwise, col);
        cpu::gemm<T>(Kg, cols, CRSg, weights, {columns, cols, 1}, c, cols, bias != nullptr, threaded);
      }
      if (images > 1) scatter_images(out, images, Kg, PQ, yg, g.K * PQ);
    }
  });
}

// The direct data gradient reads the padded error's zeros at the edges of its blocks, which adds
// nothing to its sums unless a weight is infinite or NaN (inf * 0 = NaN where the definition has
// no product): such weights take GEMM + col2im, which multiplies the error's values only.
bool all_finite(const float* values, std::int64_t count) {
  bool finite = true;
  for (std::int64_t i = 0; i < count; ++i) finite &= std::isfinite(values[i]);
  return finite;
}

// The data gradient of a strided convolution by phases. Input row h receives the error only
// through the taps r for which h + pad_top - r*dil_h is a multiple of stride_h: for the rows of
// one residue a = (h + pad_top) mod stride_h, the taps with r*dil_h = a (mod stride_h), i.e.
// every step-th tap (step = stride_h / gcd(stride_h, dil_h)) from the first such one, r0. Row
// h = first + i*stride_h then gets sum_j dy[i + padding - j*dilation] * w[r0 + j*step], with
// dilation = dil_h / gcd and padding = (first + pad_top - r0*dil_h) / stride_h: the stride-1
// data gradient of a smaller convolution, whose kernel is the phase's taps.
struct StridePhase {
  std::int64_t first, count;  // the phase's rows: first + i * stride for i < count
  std::int64_t first_tap, taps, tap_step, dilation, padding;
};

StridePhase stride_phase(std::int64_t size, std::int64_t kernel, std::int64_t stride, std::int64_t dil,
                         std::int64_t pad, std::int64_t residue) {
  StridePhase phase{};
  phase.first = ((residue - pad) % stride + stride) % stride;
  phase.count = phase.first < size ? (size - 1 - phase.first) / stride + 1 : 0;
  const std::int64_t common = std::gcd(stride, dil);
  phase.tap_step = stride / common;
  phase.dilation = dil / common;
  // Residues of r*dil repeat every tap_step taps: the first tap_step hold r0 if any tap does.
  phase.first_tap = kernel;
  for (std::int64_t r = std::min(kernel, phase.tap_step) - 1; r >= 0; --r)
    if (r * dil % stride == residue) phase.first_tap = r;
  phase.taps = phase.first_tap < kernel ? (kernel - 1 - phase.first_tap) / phase.tap_step + 1 : 0;
  phase.padding = (phase.first + pad - phase.first_tap * dil) / stride;
  return phase;
}

// The stride-1 convolution whose data gradient gives one (row, column) phase.
ConvGeometry phase_geometry(const ConvGeometry& g, const StridePhase& rows, const StridePhase& cols) {
  ConvGeometry sub = g;
  sub.H = rows.count, sub.W = cols.count, sub.R = rows.taps, sub.S = cols.taps;
  sub.stride_h = sub.stride_w = 1;
  sub.dil_h = rows.dilation, sub.dil_w = cols.dilation;
  sub.pad_top = rows.padding, sub.pad_left = cols.padding;
  return sub;
}

// Tap (r, s) of a phase's kernel kc is tap (first_tap + r * tap_step, ...) of kernel kc.
float phase_tap(const ConvGeometry& g, const float* w, const StridePhase& rows, const StridePhase& cols,
                std::int64_t kc, std::int64_t r, std::int64_t s) {
  return w[(kc * g.R + rows.first_tap + r * rows.tap_step) * g.S + cols.first_tap + s * cols.tap_step];
}

// Writes `planes` compact phase planes (rows.count x cols.count) into their rows and columns of
// the dx planes from `to` on.
void spread_phase(const ConvGeometry& g, const float* phase, std::int64_t planes, const StridePhase& rows,
                  const StridePhase& cols, float* to) {
  for (std::int64_t plane = 0; plane < planes; ++plane)
    for (std::int64_t i = 0; i < rows.count; ++i) {
      const float* from = phase + (plane * rows.count + i) * cols.count;
      float* row = to + (plane * g.H + rows.first + i * g.stride_h) * g.W + cols.first;
      for (std::int64_t j = 0; j < cols.count; ++j) row[j * g.stride_w] = from[j];
    }
}

// A stride-1 float32 data gradient by the algorithm the table picks for it (never a forced one).
void default_data_grad_f32(const ConvGeometry& g, const float* dy, const float* w, float* dx);

// Phases that all take the direct kernel run as passes of one job per (image, group): the error
// is padded once for all of them (the stem's 4 phases copied it 4 times: 15% of the time) and
// each phase's planes are spread into dx while in cache.
constexpr std::int64_t kMaxDirectPhases = 16;

void direct_phases_backward_data(const ConvGeometry& g, const float* dy, const float* w, float* dx) {
  const std::int64_t Cg = g.C / g.groups, kernels = g.K * Cg;
  std::array<StridePhase, kMaxDirectPhases> row_phases, col_phases;
  std::array<DirectPass, kMaxDirectPhases> passes;
  std::int64_t count = 0, largest_plane = 0;
  // Each tap belongs to one phase: the phases' kernels take R*S taps in all.
  float* rotated = cpu::workspace<float>(cpu::WorkspaceSlot::phase_weights, kernels * g.R * g.S);
  for (std::int64_t a = 0; a < g.stride_h; ++a)
    for (std::int64_t b = 0; b < g.stride_w; ++b) {
      const StridePhase rows = stride_phase(g.H, g.R, g.stride_h, g.dil_h, g.pad_top, a);
      const StridePhase cols = stride_phase(g.W, g.S, g.stride_w, g.dil_w, g.pad_left, b);
      if (rows.count * cols.count == 0 || rows.taps * cols.taps == 0) continue;
      const ConvGeometry sub = phase_geometry(g, rows, cols);
      rotate_for_data_grad(
          sub, [&](std::int64_t kc, std::int64_t r, std::int64_t s) { return phase_tap(g, w, rows, cols, kc, r, s); },
          rotated);
      row_phases[count] = rows, col_phases[count] = cols;
      passes[count++] = direct_data_grad_pass(sub, rotated);
      rotated += kernels * sub.R * sub.S;
      largest_plane = std::max(largest_plane, rows.count * cols.count);
    }
  direct_conv_passes(
      g, dy, g.K, g.P, g.Q, passes.data(), count, nullptr, g.C, false, true,
      [&](std::int64_t, std::int64_t, std::int64_t) {
        return cpu::workspace<float>(cpu::WorkspaceSlot::phase_grad, Cg * largest_plane);
      },
      [&](std::int64_t n, std::int64_t grp, std::int64_t i, float* out) {
        spread_phase(g, out, Cg, row_phases[i], col_phases[i], dx + (n * g.C + grp * Cg) * g.H * g.W);
      });
}

// Every (row, column) phase through the stride-1 paths (direct, Winograd, filter blocks) into a
// compact buffer, then spread into dx; a phase without taps is zero. Each value of dx is the sum
// of one phase's stride-1 data gradient, so it is as deterministic as those.
void strided_backward_data(const ConvGeometry& g, const float* dy, const float* w, float* dx) {
  const std::int64_t planes = g.N * g.C, kernels = g.K * (g.C / g.groups);
  bool all_direct = g.stride_h * g.stride_w <= kMaxDirectPhases && all_finite(w, kernels * g.R * g.S);
  for (std::int64_t a = 0; a < g.stride_h; ++a)
    for (std::int64_t b = 0; b < g.stride_w; ++b) {
      const StridePhase rows = stride_phase(g.H, g.R, g.stride_h, g.dil_h, g.pad_top, a);
      const StridePhase cols = stride_phase(g.W, g.S, g.stride_w, g.dil_w, g.pad_left, b);
      const std::int64_t phase_plane = rows.count * cols.count;
      if (phase_plane == 0) continue;
      if (rows.taps == 0 || cols.taps == 0) {  // no tap reaches these rows and columns
#pragma omp parallel for num_threads(::juanji::team_size()) schedule(static) if (planes * phase_plane >= cpu::kParallelGrain)
        for (std::int64_t plane = 0; plane < planes; ++plane)
          for (std::int64_t i = 0; i < rows.count; ++i)
            for (std::int64_t j = 0; j < cols.count; ++j)
              dx[(plane * g.H + rows.first + i * g.stride_h) * g.W + cols.first + j * g.stride_w] = 0.0f;
        continue;
      }
      all_direct = all_direct && use_direct_data_grad(phase_geometry(g, rows, cols));
    }
  if (all_direct) return direct_phases_backward_data(g, dy, w, dx);
  for (std::int64_t a = 0; a < g.stride_h; ++a)
    for (std::int64_t b = 0; b < g.stride_w; ++b) {
      const StridePhase rows = stride_phase(g.H, g.R, g.stride_h, g.dil_h, g.pad_top, a);
      const StridePhase cols = stride_phase(g.W, g.S, g.stride_w, g.dil_w, g.pad_left, b);
      const std::int64_t phase_plane = rows.count * cols.count;
      if (phase_plane == 0 || rows.taps == 0 || cols.taps == 0) continue;
      const ConvGeometry sub = phase_geometry(g, rows, cols);
      float* sub_w = cpu::workspace<float>(cpu::WorkspaceSlot::phase_weights, kernels * sub.R * sub.S);
      for (std::int64_t kc = 0; kc < kernels; ++kc)
        for (std::int64_t r = 0; r < sub.R; ++r)
          for (std::int64_t s = 0; s < sub.S; ++s) sub_w[(kc * sub.R + r) * sub.S + s] = phase_tap(g, w, rows, cols, kc, r, s);
      float* phase = cpu::workspace<float>(cpu::WorkspaceSlot::phase_grad, planes * phase_plane);
      default_data_grad_f32(sub, dy, sub_w, phase);
#pragma omp parallel for num_threads(::juanji::team_size()) schedule(static) if (planes * phase_plane >= cpu::kParallelGrain)
      for (std::int64_t plane = 0; plane < planes; ++plane)
        spread_phase(g, phase + plane * phase_plane, 1, rows, cols, dx + plane * g.H * g.W);
    }
}

// A pointwise layer's data gradient is a GEMM straight into dx per image. It beats the filter
// blocks where an image's gradient outgrows L2 and there are 64+ error channels to sum (data +
// weight gradient, ms: 8x256x56x56 -> 64 10.5 -> 9.4, 4x128x56x56 -> 64 2.41 -> 2.30, 2x512x56x56
// -> 128 9.0 -> 8.3), not below either (8x256x28x28 -> 64: 2.28 -> 3.0; 4x256x64x64 -> 32: 3.8 -> 4.1).
bool pointwise_data_grad_by_gemm(const ConvGeometry& g) {
  return is_pointwise(g) && g.K / g.groups >= 64 &&
         g.C / g.groups * g.H * g.W * std::int64_t{sizeof(float)} > kL2Bytes;
}

// GEMM + col2im: every problem, float32 or float64.
template <class T>
void gemm_backward_data(const ConvGeometry& g, const T* dy, const T* w, T* dx) {
  const std::int64_t Cg = g.C / g.groups, Kg = g.K / g.groups;
  const std::int64_t HW = g.H * g.W, PQ = g.P * g.Q, CRSg = Cg * g.R * g.S;
  const bool pointwise = is_pointwise(g);
  const std::int64_t per_batch = images_per_gemm(g);
  for_each_batch(g.N, per_batch, [&](std::int64_t first, std::int64_t images, bool threaded) {
    const std::int64_t cols = images * PQ;
    T* col = cpu::workspace<T>(cpu::WorkspaceSlot::columns, CRSg * cols);
    T* grads = images > 1 ? cpu::workspace<T>(cpu::WorkspaceSlot::batch_out, Kg * cols) : nullptr;
    for (std::int64_t grp = 0; grp < g.groups; ++grp) {
      const T* dyg = dy + (first * g.K + grp * Kg) * PQ;
      T* dxg = dx + (first * g.C + grp * Cg) * HW;
      if (images > 1) gather_images(dyg, g.K * PQ, images, Kg, PQ, grads);
      const bool direct = pointwise && images == 1;
      cpu::gemm<T>(CRSg, cols, Kg, {w + grp * Kg * CRSg, 1, CRSg}, {images > 1 ? grads : dyg, cols, 1},
                   direct ? dxg : col, cols, false, threaded);
      if (direct) continue;
      if (pointwise) {
        scatter_images(col, images, Cg, PQ, dxg, g.C * HW);
      } else {
        for (std::int64_t i = 0; i < images; ++i) col2im(g, col + i * PQ, cols, dxg + i * g.C * HW);
      }
    }
  });
}

template <class T>
void bias_grad(const ConvGeometry& g, const T* dy, T* db) {
  const std::int64_t PQ = g.P * g.Q;
#pragma omp parallel for num_threads(::juanji::team_size()) schedule(static)
  for (std::int64_t k = 0; k < g.K; ++k) {
    double sum = 0;
    for (std::int64_t n = 0; n < g.N; ++n) {
      const T* row = dy + (n * g.K + k) * PQ;
      sum += cpu::sum_elements(row, PQ);
    }
    db[k] = static_cast<T>(sum);
  }
}

// The bias gradient's own pass, then im2col (or implicit columns) + GEMM: every problem.
template <class T>
void gemm_backward_weight(const ConvGeometry& g, const T* dy, const T* x, T* dw, T* db) {
  if (db) bias_grad(g, dy, db);
  const std::int64_t Cg = g.C / g.groups, Kg = g.K / g.groups;
  const std::int64_t PQ = g.P * g.Q, CRSg = Cg * g.R * g.S;
  const std::int64_t weights = g.K * CRSg;
  const bool pointwise = is_pointwise(g);
  const std::int64_t per_batch = images_per_gemm(g);
  // A fixed number of image chunks (independent of the thread count) each sum their images'
  // contributions, batch by batch; the chunk partials are then added in chunk order.
  const std::int64_t chunks = std::min<std::int64_t>(g.N, 8);
  T* partials = chunks > 1 ? cpu::workspace<T>(cpu::WorkspaceSlot::partials, chunks * weights) : dw;
  auto run_chunk = [&](std::int64_t chunk, bool threaded) {
    T* out = chunks > 1 ? partials + chunk * weights : dw;
    const std::int64_t n_begin = g.N * chunk / chunks, n_end = g.N * (chunk + 1) / chunks;
    for (std::int64_t first = n_begin; first < n_end; first += per_batch) {
      const std::int64_t images = std::min(per_batch, n_end - first), cols = images * PQ;
      // Transposed implicit packing scatters its writes; it beats im2col only where im2col's own
      // gather is strided (measured: stem 86 -> 120 GF/s, but res_128 139 -> 123).
      const bool implicit = g.stride_w > 1 && CRSg * cols > kImplicitMinColumnElements;
      T* col = implicit ? nullptr : cpu::workspace<T>(cpu::WorkspaceSlot::columns, CRSg * cols);
      T* grads = images > 1 ? cpu::workspace<T>(cpu::WorkspaceSlot::batch_out, Kg * cols) : nullptr;
      for (std::int64_t grp = 0; grp < g.groups; ++grp) {
        const T* dyg = dy + (first * g.K + grp * Kg) * PQ;
        if (images > 1) gather_images(dyg, g.K * PQ, images, Kg, PQ, grads);
        const cpu::Matrix<T> errors{images > 1 ? grads : dyg, cols, 1};
        T* dwg = out + grp * Kg * CRSg;
        if (implicit) {
          const ImplicitColumnsTransposed<T> columns{g, x + (first * g.C + grp * Cg) * g.H * g.W};
          cpu::gemm_with_packer<T>(Kg, CRSg, cols, errors, columns, dwg, CRSg, first > n_begin, threaded);
        } else {
          const T* columns = batch_columns(g, x, first, images, grp, pointwise, col);
          cpu::gemm<T>(Kg, CRSg, cols, errors, {columns, 1, cols}, dwg, CRSg, first > n_begin, threaded);
        }
      }
    }
  };
  if (chunks > 1) {
    cpu::RegionErrors errors;
#pragma omp parallel for num_threads(::juanji::team_size()) schedule(static)
    for (std::int64_t c = 0; c < chunks; ++c) errors.guard([&] { run_chunk(c, false); });
    errors.rethrow();
#pragma omp parallel for num_threads(::juanji::team_size()) schedule(static)
    for (std::int64_t i = 0; i < weights; ++i) {
      T sum = partials[i];
      for (std::int64_t c = 1; c < chunks; ++c) sum += partials[c * weights + i];
      dw[i] = sum;
    }
  } else {
    run_chunk(0, true);
  }
}

// ---- The algorithm tables: for each pass, the algorithms in order of preference --------------
// Each entry says why it refuses a problem (null when it takes it); the first that takes it runs,
// unless JUANJI_CONV_ALGO or set_conv_algorithm forces one by name. GEMM, last, takes every
// problem. The float32-only entries have no float64 function.

struct ConvProblem {
  const ConvGeometry& g;
  DType dtype;
  const void* weights;  // the data gradient's direct kernel needs finite weights
};

using Refusal = const char*;

Refusal float32_with_modest_padding(const ConvProblem& p) {
  if (p.dtype != DType::float32) return "float32 only";
  if (!padding_is_modest(p.g)) return "padding or dilation far larger than the image (padded planes would be huge)";
  return nullptr;
}

// The forward pass and the weight gradient correlate the input with the same windows: the same
// conditions decide their fast paths.
Refusal refuses_direct(const ConvProblem& p) {
  if (Refusal why = float32_with_modest_padding(p)) return why;
  return use_direct(p.g, p.g.C / p.g.groups) ? nullptr : "needs stride 1 and at most 4 input channels per group";
}

Refusal refuses_winograd(const ConvProblem& p) {
  if (Refusal why = float32_with_modest_padding(p)) return why;
  return use_winograd(forward_correlation(p.g))
             ? nullptr
             : "needs a stride-1 undilated 3x3 kernel, 16+ channels in and out per group and Winograd on";
}

Refusal refuses_filter_blocks(const ConvProblem& p) {
  if (Refusal why = float32_with_modest_padding(p)) return why;
  return use_filter_blocks(forward_correlation(p.g)) ? nullptr : "needs 8+ filters per group";
}

struct ForwardAlgorithm {
  const char* name;
  Refusal (*refusal)(const ConvProblem&);
  void (*run_f32)(const ConvGeometry&, const float* x, const float* w, const float* bias, float* y, bool relu);
  void (*run_f64)(const ConvGeometry&, const double* x, const double* w, const double* bias, double* y);
};

const std::array<ForwardAlgorithm, 4> kForwardAlgorithms{{
    {"direct",
     refuses_direct,
     direct_forward, nullptr},
    {"winograd",
     refuses_winograd,
     winograd_forward, nullptr},
    {"filter_blocks",
     refuses_filter_blocks,
     filter_block_forward, nullptr},
    {"gemm", [](const ConvProblem&) -> Refusal { return nullptr; },
     [](const ConvGeometry& g, const float* x, const float* w, const float* bias, float* y, bool) {
       gemm_forward(g, x, w, bias, y);
     },
     gemm_forward<double>},
}};

struct DataGradAlgorithm {
  const char* name;
  Refusal (*refusal)(const ConvProblem&);
  void (*run_f32)(const ConvGeometry&, const float* dy, const float* w, float* dx);
  void (*run_f64)(const ConvGeometry&, const double* dy, const double* w, double* dx);
};

Refusal stride_one(const ConvProblem& p) {
  if (Refusal why = float32_with_modest_padding(p)) return why;
  return p.g.stride_h == 1 && p.g.stride_w == 1 ? nullptr : "needs stride 1 (strided layers go by stride phases)";
}

const std::array<DataGradAlgorithm, 5> kDataGradAlgorithms{{
    {"strided_phases",
     [](const ConvProblem& p) -> Refusal {
       if (Refusal why = float32_with_modest_padding(p)) return why;
       return p.g.stride_h > 1 || p.g.stride_w > 1 ? nullptr : "needs a stride above 1";
     },
     strided_backward_data, nullptr},
    {"direct",
     [](const ConvProblem& p) -> Refusal {
       if (Refusal why = stride_one(p)) return why;
       if (!use_direct_data_grad(p.g)) return "needs few output channels per group (the direct kernel's data gradient)";
       const auto* w = static_cast<const float*>(p.weights);
       return all_finite(w, p.g.K * (p.g.C / p.g.groups) * p.g.R * p.g.S)
                  ? nullptr
                  : "needs finite weights (its padded error's zeros would meet an infinity)";
     },
     direct_backward_data, nullptr},
    {"winograd",
     [](const ConvProblem& p) -> Refusal {
       if (Refusal why = stride_one(p)) return why;
       return use_winograd(data_grad_correlation(p.g))
                  ? nullptr
                  : "needs an undilated 3x3 kernel, 16+ channels in and out per group and Winograd on";
     },
     winograd_backward_data, nullptr},
    {"filter_blocks",
     [](const ConvProblem& p) -> Refusal {
       if (Refusal why = stride_one(p)) return why;
       if (pointwise_data_grad_by_gemm(p.g)) return "a large pointwise layer's data gradient is faster by GEMM";
       return use_filter_blocks(data_grad_correlation(p.g)) ? nullptr : "needs 8+ input channels per group";
     },
     filter_block_backward_data, nullptr},
    {"gemm", [](const ConvProblem&) -> Refusal { return nullptr; }, gemm_backward_data<float>,
     gemm_backward_data<double>},
}};

struct WeightGradAlgorithm {
  const char* name;
  Refusal (*refusal)(const ConvProblem&);
  void (*run_f32)(const ConvGeometry&, const float* dy, const float* x, float* dw, float* db);
  void (*run_f64)(const ConvGeometry&, const double* dy, const double* x, double* dw, double* db);
};

// The Winograd and filter-block paths sum the bias gradient from the error planes they read; the
// others take a pass of their own over them. Filter blocks also take layers with few input
// channels: they read the error once, where the direct kernel pads a copy of it first
// (convnet_c1, 1 -> 32 channels: 577 -> 392 us; cifar_c1: 1.39 -> 0.91 ms).
const std::array<WeightGradAlgorithm, 4> kWeightGradAlgorithms{{
    {"winograd",
     refuses_winograd,
     winograd_backward_weight, nullptr},
    {"filter_blocks",
     refuses_filter_blocks,
     filter_block_backward_weight, nullptr},
    {"direct",
     refuses_direct,
     [](const ConvGeometry& g, const float* dy, const float* x, float* dw, float* db) {
       if (db) bias_grad(g, dy, db);
       direct_backward_weight(g, dy, x, dw);
     },
     nullptr},
    {"gemm", [](const ConvProblem&) -> Refusal { return nullptr; }, gemm_backward_weight<float>,
     gemm_backward_weight<double>},
}};

// The pass's entry named `name`, as the table's own name pointer, or null.
const char* table_name(ConvPass pass, const std::string& name) {
  const auto find = [&](const auto& table) -> const char* {
    for (const auto& a : table)
      if (name == a.name) return a.name;
    return nullptr;
  };
  switch (pass) {
    case ConvPass::forward: return find(kForwardAlgorithms);
    case ConvPass::data_grad: return find(kDataGradAlgorithms);
    case ConvPass::weight_grad: return find(kWeightGradAlgorithms);
  }
  return nullptr;
}

// Each pass's forced entry (ConvPass order) as its table's name pointer, null for the default
// choice: read by every convolution, so one atomic load. JUANJI_CONV_ALGO sets all three at
// start-up (a pass without that algorithm keeps the default).
std::array<std::atomic<const char*>, 3>& forced_algorithms() {
  static std::array<std::atomic<const char*>, 3> names = [] {
    const char* env = std::getenv("JUANJI_CONV_ALGO");
    const std::string name = env ? env : "";
    return std::array<std::atomic<const char*>, 3>{table_name(ConvPass::forward, name),
                                                   table_name(ConvPass::data_grad, name),
                                                   table_name(ConvPass::weight_grad, name)};
  }();
  return names;
}

const char* pass_name(ConvPass pass) {
  switch (pass) {
    case ConvPass::forward: return "forward";
    case ConvPass::data_grad: return "data gradient";
    case ConvPass::weight_grad: return "weight gradient";
  }
  return "?";
}

// The entry that runs the problem: the forced one where this pass has it (an error if it refuses
// the problem), else the first that takes it.
template <class Algorithm, std::size_t N>
const Algorithm& choose(const std::array<Algorithm, N>& table, const ConvProblem& p, ConvPass pass,
                        bool allow_forced) {
  const char* forced = allow_forced ? forced_algorithms()[static_cast<std::size_t>(pass)].load() : nullptr;
  if (forced) {
    for (const Algorithm& a : table) {
      if (forced != a.name) continue;
      const Refusal why = a.refusal(p);
      check(why == nullptr, "conv: the forced ", pass_name(pass), " algorithm '", a.name,
            "' (JUANJI_CONV_ALGO) does not take this layer: ", why ? why : "");
      return a;
    }
  }
  for (const Algorithm& a : table)
    if (!a.refusal(p)) return a;
  return table.back();
}

void default_data_grad_f32(const ConvGeometry& g, const float* dy, const float* w, float* dx) {
  choose(kDataGradAlgorithms, {g, DType::float32, w}, ConvPass::data_grad, false).run_f32(g, dy, w, dx);
}

template <class Algorithm, std::size_t N>
std::vector<ConvAlgorithmChoice> describe(const std::array<Algorithm, N>& table, const ConvProblem& p) {
  std::vector<ConvAlgorithmChoice> out;
  for (const Algorithm& a : table) {
    const Refusal why = a.refusal(p);
    out.push_back({a.name, why ? why : ""});
  }
  return out;
}

}  // namespace

ConvGeometry ConvGeometry::make(const Shape& x, const Shape& w, const ConvOptions& options,
                                int spatial_dims) {
  const char* layout = spatial_dims == 1 ? "(N, C, L)" : "(N, C, H, W)";
  const char* wlayout = spatial_dims == 1 ? "(K, C/groups, kL)" : "(K, C/groups, R, S)";
  const std::size_t rank = static_cast<std::size_t>(spatial_dims) + 2;
  check(x.size() == rank, "x: expected a ", rank, "-d tensor ", layout, ", got shape ", shape_text(x));
  check(w.size() == rank, "weight: expected a ", rank, "-d tensor ", wlayout, ", got shape ",
        shape_text(w));
  check(options.groups >= 1, "groups: must be positive, got ", options.groups);
  const auto stride = per_dim(options.stride, spatial_dims, "stride");
  const auto dilation = per_dim(options.dilation, spatial_dims, "dilation");
  std::vector<std::int64_t> pads(spatial_dims, 0);
  if (options.padding.kind == PaddingSpec::Kind::explicit_sizes)
    pads = per_dim(options.padding.sizes, spatial_dims, "padding");
  for (int d = 0; d < spatial_dims; ++d) {
    check(stride[d] > 0, "stride: must be positive, got ", shape_text(stride));
    check(dilation[d] > 0, "dilation: must be positive, got ", shape_text(dilation));
    check(pads[d] >= 0, "padding: must be non-negative, got ", shape_text(pads));
  }
  ConvGeometry g{};
  g.spatial_dims = spatial_dims;
  g.groups = options.groups;
  g.N = x[0];
  g.C = x[1];
  g.K = w[0];
  check(g.K > 0, "weight: no filters in shape ", shape_text(w));
  check(g.K % g.groups == 0, "weight: K=", g.K, " filters in ", shape_text(w),
        " are not divisible by groups=", g.groups);
  const MaybeSize expected_channels = checked_mul(w[1], g.groups);
  check(expected_channels == g.C, "weight: ", shape_text(w), " expects C = ", w[1], " x groups ", g.groups,
        expected_channels ? " = " + std::to_string(*expected_channels) : std::string(" (past int64)"),
        " input channels, but x ", shape_text(x), " has C = ", g.C);
  g.H = spatial_dims == 2 ? x[2] : 1;
  g.W = x[rank - 1];
  g.R = spatial_dims == 2 ? w[2] : 1;
  g.S = w[rank - 1];
  check(g.H > 0 && g.W > 0, "x: empty spatial size in shape ", shape_text(x));
  check(g.R > 0 && g.S > 0, "weight: empty kernel in shape ", shape_text(w));
  check(g.H <= kMaxSpatialExtent && g.W <= kMaxSpatialExtent, "x: a spatial size of ", shape_text(x),
        " exceeds ", kMaxSpatialExtent);
  const int hd = spatial_dims == 2 ? 0 : -1, wd = spatial_dims - 1;
  g.stride_h = hd >= 0 ? stride[hd] : 1;
  g.dil_h = hd >= 0 ? dilation[hd] : 1;
  g.stride_w = stride[wd];
  g.dil_w = dilation[wd];
  const MaybeSize span_h = checked_add(checked_mul(g.dil_h, g.R - 1), 1);
  const MaybeSize span_w = checked_add(checked_mul(g.dil_w, g.S - 1), 1);
  const auto within_extent = [](MaybeSize size) { return size && *size <= kMaxSpatialExtent; };
  check(within_extent(span_h) && within_extent(span_w), "dilation: kernel ", shape_text(w),
        " with dilation ", shape_text(dilation), " spans more than ", kMaxSpatialExtent, " elements");
  const auto rh = hd >= 0 ? resolve_dim(g.H, *span_h, g.stride_h, options.padding, pads[hd])
                          : Resolved{0, 0, 1, 1};
  const auto rw = resolve_dim(g.W, *span_w, g.stride_w, options.padding, pads[wd]);
  const bool same = options.padding.kind == PaddingSpec::Kind::same;
  check(rh && rw, "padding: x ", shape_text(x), " with ", same ? "'same' padding" : "padding ",
        same ? std::string() : shape_str(pads), " for kernel ", shape_text(w), ", dilation ",
        shape_text(dilation), " and stride ", shape_text(stride), " is padded past ", kMaxSpatialExtent,
        " elements");
  check(*span_h <= rh->padded && *span_w <= rw->padded, "weight: kernel ", shape_text(w), " with dilation ",
        shape_text(dilation), " spans more than the padded input ", shape_text(x), " (padding ",
        rh->pad_before, "+", rh->pad_after, ", ", rw->pad_before, "+", rw->pad_after, ")");
  g.pad_top = rh->pad_before;
  g.pad_left = rw->pad_before;
  g.P = rh->out;
  g.Q = rw->out;
  // Along a dim with one output the stride moves no window: capped at the padded size it keeps
  // the kernels' offsets (a window's start plus a stride) and their loops over the stride's
  // phases within the input's scale.
  if (g.P == 1) g.stride_h = std::min(g.stride_h, rh->padded);
  if (g.Q == 1) g.stride_w = std::min(g.stride_w, rw->padded);
  check(allocatable_numel(g.output_shape()).has_value(), "output: x ", shape_text(x), " and weight ",
        shape_text(w), " with stride ", shape_text(stride), ", padding ", rh->pad_before, "+",
        rh->pad_after, ", ", rw->pad_before, "+", rw->pad_after, " and dilation ", shape_text(dilation),
        " give an output ", shape_text(g.output_shape()), " of too many elements");
  return g;
}

Shape ConvGeometry::output_shape() const {
  if (spatial_dims == 1) return {N, K, Q};
  return {N, K, P, Q};
}

double ConvGeometry::flops() const {
  return 2.0 * N * K * P * Q * (C / groups) * R * S;
}

namespace {

// An empty batch, or a layer without input channels: the sums have no terms, which the kernels'
// work splitting does not expect. The results are computed here, on the host.
bool has_no_terms(const ConvGeometry& g) { return g.N == 0 || g.C == 0; }

// y (N, K, P, Q) = the bias of each filter (zero without one): every sum over no inputs.
void fill_with_bias(const ConvGeometry& g, const Tensor& bias, Tensor& y) {
  Tensor host = Tensor::zeros(y.shape(), y.dtype());
  if (bias.defined() && host.numel() > 0) {
    const Tensor b = bias.to(Device{}).to(DType::float64);
    cpu::dispatch_float(y.dtype(), [&](auto tag) {
      using T = decltype(tag);
      T* out = host.data<T>();
      for (std::int64_t plane = 0; plane < g.N * g.K; ++plane)
        std::fill(out + plane * g.P * g.Q, out + (plane + 1) * g.P * g.Q, static_cast<T>(b.data<double>()[plane % g.K]));
    });
  }
  y.copy_(host);
}

}  // namespace

void conv_forward(const ConvGeometry& g, const Tensor& x, const Tensor& w, const Tensor& bias, Tensor& y) {
  if (has_no_terms(g)) return fill_with_bias(g, bias, y);
#if JUANJI_WITH_CUDA
  if (x.device().is_cuda()) return cuda::conv_forward(g, x, w, bias, y);
#endif
  const ForwardAlgorithm& algorithm = choose(kForwardAlgorithms, {g, x.dtype(), nullptr}, ConvPass::forward, true);
  if (x.dtype() == DType::float32)
    algorithm.run_f32(g, x.data<float>(), w.data<float>(), cpu::data_or_null<float>(bias), y.data<float>(), false);
  else
    algorithm.run_f64(g, x.data<double>(), w.data<double>(), cpu::data_or_null<double>(bias), y.data<double>());
}

bool conv_forward_activation(const ConvGeometry& g, const Tensor& x, const Tensor& w,
                             const Tensor& bias, Tensor& y, Activation kind, double negative_slope) {
#if JUANJI_WITH_CUDA
  if (x.device().is_cuda()) {
    cuda::conv_forward(g, x, w, bias, y, {true, kind, negative_slope});
    return true;
  }
#endif
  (void)negative_slope;
  if (kind != Activation::relu || x.dtype() != DType::float32 || has_no_terms(g)) return false;
  // The same choice as conv_forward's; every algorithm but GEMM applies the ReLU as it stores.
  const ForwardAlgorithm& algorithm = choose(kForwardAlgorithms, {g, x.dtype(), nullptr}, ConvPass::forward, true);
  if (algorithm.run_f64 != nullptr) return false;
  algorithm.run_f32(g, x.data<float>(), w.data<float>(), cpu::data_or_null<float>(bias), y.data<float>(), true);
  return true;
}

void conv_backward_data(const ConvGeometry& g, const Tensor& grad_y, const Tensor& w, Tensor& grad_x) {
  if (has_no_terms(g)) return;  // grad_x has no elements
#if JUANJI_WITH_CUDA
  if (grad_y.device().is_cuda()) return cuda::conv_backward_data(g, grad_y, w, grad_x);
#endif
  const DataGradAlgorithm& algorithm =
      choose(kDataGradAlgorithms, {g, w.dtype(), w.data_ptr()}, ConvPass::data_grad, true);
  if (w.dtype() == DType::float32)
    algorithm.run_f32(g, grad_y.data<float>(), w.data<float>(), grad_x.data<float>());
  else
    algorithm.run_f64(g, grad_y.data<double>(), w.data<double>(), grad_x.data<double>());
}

void conv_backward_weight(const ConvGeometry& g, const Tensor& grad_y, const Tensor& x,
                          Tensor& grad_w, Tensor& grad_b) {
  if (has_no_terms(g)) {
    if (grad_w.defined()) grad_w.zero_();
    if (!grad_b.defined()) return;
    // The bias gradient still sums the error (zero for an empty batch).
    const Tensor dy = grad_y.to(Device{}).contiguous();
    Tensor sums = Tensor::empty(grad_b.shape(), grad_b.dtype());
    cpu::dispatch_float(sums.dtype(), [&](auto tag) {
      using T = decltype(tag);
      bias_grad<T>(g, dy.data<T>(), sums.data<T>());
    });
    grad_b.copy_(sums);
    return;
  }
#if JUANJI_WITH_CUDA
  if (x.device().is_cuda()) return cuda::conv_backward_weight(g, grad_y, x, grad_w, grad_b);
#endif
  const WeightGradAlgorithm& algorithm =
      choose(kWeightGradAlgorithms, {g, x.dtype(), nullptr}, ConvPass::weight_grad, true);
  if (x.dtype() == DType::float32)
    algorithm.run_f32(g, grad_y.data<float>(), x.data<float>(), grad_w.data<float>(), cpu::data_or_null<float>(grad_b));
  else
    algorithm.run_f64(g, grad_y.data<double>(), x.data<double>(), grad_w.data<double>(),
                      cpu::data_or_null<double>(grad_b));
}

namespace {

Tensor conv_nd(const Tensor& x, const Tensor& w, const Tensor& bias, const ConvOptions& options, int dims) {
  check_conv_operands(x, w, bias, dims);
  const ConvGeometry g = ConvGeometry::make(x.shape(), w.shape(), options, dims);
  const Tensor xc = as_2d_input(x.contiguous(), dims), wc = w.contiguous();
  const Tensor bc = bias.defined() ? bias.contiguous() : Tensor();
  Tensor y = Tensor::empty(g.output_shape(), x.dtype(), x.device());
  conv_forward(g, xc, wc, bc, y);
  return y;
}

ConvGrads conv_nd_backward(const Tensor& grad_out, const Tensor& x, const Tensor& w,
                           const ConvOptions& options, int dims) {
  check_conv_operands(x, w, Tensor(), dims);
  check_float(grad_out, "grad_out");
  check_same_dtype(grad_out, "grad_out", x, "x");
  check_same_device(grad_out, "grad_out", x, "x");
  const ConvGeometry g = ConvGeometry::make(x.shape(), w.shape(), options, dims);
  check(grad_out.shape() == g.output_shape(), "grad_out: expected shape ", shape_text(g.output_shape()),
        " (the output of x ", shape_text(x.shape()), " and weight ", shape_text(w.shape()), "), got ",
        shape_text(grad_out.shape()));
  const Tensor dy = grad_out.contiguous(), xc = as_2d_input(x.contiguous(), dims), wc = w.contiguous();
  ConvGrads grads{Tensor::empty(x.shape(), x.dtype(), x.device()),
                  Tensor::empty(w.shape(), w.dtype(), x.device()), Tensor::empty({g.K}, x.dtype(), x.device())};
  conv_backward_data(g, dy, wc, grads.grad_x);
  conv_backward_weight(g, dy, xc, grads.grad_w, grads.grad_b);
  return grads;
}

}  // namespace

Tensor conv2d(const Tensor& x, const Tensor& w, const Tensor& bias, const ConvOptions& options) {
  return conv_nd(x, w, bias, options, 2);
}
Tensor conv1d(const Tensor& x, const Tensor& w, const Tensor& bias, const ConvOptions& options) {
  return conv_nd(x, w, bias, options, 1);
}
ConvGrads conv2d_backward(const Tensor& grad_out, const Tensor& x, const Tensor& w, const ConvOptions& options) {
  return conv_nd_backward(grad_out, x, w, options, 2);
}
ConvGrads conv1d_backward(const Tensor& grad_out, const Tensor& x, const Tensor& w, const ConvOptions& options) {
  return conv_nd_backward(grad_out, x, w, options, 1);
}

std::vector<ConvAlgorithmChoice> conv_algorithms(ConvPass pass, const ConvGeometry& g, DType dtype,
                                                 const Tensor& weight) {
  check(dtype == DType::float32 || dtype == DType::float64, "conv_algorithms: dtype must be float32 or float64");
  const bool finite_check = pass == ConvPass::data_grad && dtype == DType::float32;
  if (finite_check) {
    cpu::check_kernel_tensor(weight, "conv_algorithms", "weight", DType::float32, g.K * (g.C / g.groups) * g.R * g.S);
    check(weight.device().is_cpu(), "conv_algorithms: weight must be on the CPU");
  }
  const ConvProblem p{g, dtype, finite_check ? weight.data_ptr() : nullptr};
  switch (pass) {
    case ConvPass::forward: return describe(kForwardAlgorithms, p);
    case ConvPass::data_grad: return describe(kDataGradAlgorithms, p);
    case ConvPass::weight_grad: return describe(kWeightGradAlgorithms, p);
  }
  return {};
}

std::string set_conv_algorithm(ConvPass pass, const std::string& name) {
  const char* entry = table_name(pass, name);
  check(entry || name.empty(), "set_conv_algorithm: the ", pass_name(pass), " has no algorithm named '", name, "'");
  const char* previous = forced_algorithms()[static_cast<std::size_t>(pass)].exchange(entry);
  return previous ? previous : "";
}

}  // namespace juanji
