// The direct kernel: stride-1 correlations of zero-padded planes straight from the image, with
// the batch in the lanes where planes are narrower than a vector.
#include <algorithm>

#include "cpu/conv/direct.hpp"
#include "cpu/copy_short.hpp"
#include "cpu/workspace.hpp"

namespace juanji::cpu::conv {

// The direct kernel pays off where im2col would move more data than the arithmetic needs:
// stride 1 and few input channels per output (measured: 2-3x GEMM's speed at 1-3 channels,
// on par at 6, behind from 16 on).
constexpr std::int64_t kDirectMaxChannels = 4;
bool use_direct(const ConvGeometry& g, std::int64_t in_channels_per_group) {
  return g.stride_h == 1 && g.stride_w == 1 && in_channels_per_group <= kDirectMaxChannels;
}

namespace {

// direct_conv_passes with one pass writing straight into out (out_channels, out_h, out_w).
void direct_conv_all(const ConvGeometry& g, const float* src, std::int64_t src_channels, std::int64_t src_h,
                     std::int64_t src_w, const DirectPass& pass, const float* bias, float* out,
                     std::int64_t out_channels, bool relu, bool skip_padding_rows) {
  const std::int64_t out_g = out_channels / g.groups;
  // Fewer (image, group) jobs than threads (a batch of one): the filters shared out too, where
  // each part keeps two of the kernel's blocks of 6 filters (one image on two threads: convnet_c1,
  // 32 filters at 28x28, 20.9 -> 16.3 us; 16 filters went 11.7 -> 12.3 and LeNet's 6 gained
  // nothing). Each output is the same sum whichever job computes it.
  constexpr std::int64_t kMinFiltersPerPart = 12;
  const std::int64_t jobs = g.N * g.groups, threads = team_size();
  const std::int64_t parts = jobs < threads ? std::min((threads + jobs - 1) / jobs, out_g / kMinFiltersPerPart) : 1;
  direct_conv_passes(
      g, src, src_channels, src_h, src_w, &pass, 1, bias, out_channels, relu, skip_padding_rows,
      [&](std::int64_t n, std::int64_t grp, std::int64_t) { return out + (n * out_channels + grp * out_g) * pass.out_h * pass.out_w; },
      [](std::int64_t, std::int64_t, std::int64_t, float*) {}, parts);
}

}  // namespace

void direct_forward(const ConvGeometry& g, const float* x, const float* w, const float* bias, float* y,
                    bool relu) {
  const DirectPass pass{w, g.R, g.S, g.dil_h, g.dil_w, g.pad_top, g.pad_left, g.P, g.Q};
  direct_conv_all(g, x, g.C, g.H, g.W, pass, bias, y, g.K, relu, false);
}

namespace {

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

}  // namespace

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

namespace {

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

}  // namespace

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

}  // namespace juanji::cpu::conv
