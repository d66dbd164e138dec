// What the stride-phase data gradient shares with the direct kernel's: passes of the direct
// kernel over padded planes, and the rotated weights of a data gradient. Private to the library.
#pragma once

#include <algorithm>

#include "cpu/conv/algorithms.hpp"
#include "cpu/workspace.hpp"

namespace juanji::cpu::conv {

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
// gradient's full correlation: its padding holds no products by definition). filter_parts > 1
// splits each job's filters into that many jobs (each pads the planes itself), so that fewer
// images than threads still share out; done is then called once per part, with its filters' out.
template <class OutFor, class Done>
void direct_conv_passes(const ConvGeometry& g, const float* src, std::int64_t src_channels, std::int64_t src_h,
                        std::int64_t src_w, const DirectPass* passes, std::int64_t count, const float* bias,
                        std::int64_t out_channels, bool relu, bool skip_padding_rows, OutFor out_for, Done done,
                        std::int64_t filter_parts = 1) {
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
  const std::int64_t parts = std::clamp<std::int64_t>(filter_parts, 1, out_g);
  const std::int64_t jobs = g.N * g.groups * parts;
  cpu::RegionErrors errors;
#pragma omp parallel for num_threads(::juanji::team_size()) schedule(static) if (jobs > 1)
  for (std::int64_t job = 0; job < jobs; ++job) errors.guard([&] {
    const std::int64_t n = job / parts / g.groups, grp = job / parts % g.groups, part = job % parts;
    const std::int64_t k_begin = out_g * part / parts, k_end = out_g * (part + 1) / parts;
    float* padded = cpu::workspace<float>(cpu::WorkspaceSlot::columns, in_g * padded_h * padded_w);
    pad_planes(src + (n * src_channels + grp * in_g) * src_h * src_w, in_g, src_h, src_w, top, left,
               padded, padded_h, padded_w);
    for (std::int64_t i = 0; i < count; ++i) {
      const DirectPass& pass = passes[i];
      const std::int64_t view_rows = padded_h - (top - pass.top);
      float* out = out_for(n, grp, i) + k_begin * pass.out_h * pass.out_w;
      const std::int64_t first = grp * out_g + k_begin;
      const cpu::DirectConvArgs args{padded + (top - pass.top) * padded_w + left - pass.left, in_g, padded_h, padded_w,
                                     pass.weights + first * in_g * pass.R * pass.S, pass.R, pass.S,
                                     pass.dil_h, pass.dil_w, bias ? bias + first : nullptr, out, k_end - k_begin,
                                     pass.out_h, pass.out_w, relu,
                                     skip_padding_rows ? std::max<std::int64_t>(pass.top, 0) : 0,
                                     skip_padding_rows ? std::clamp<std::int64_t>(pass.top + src_h, 0, view_rows) : view_rows};
      kernels.direct_conv_f32(args);
      done(n, grp, i, out);
    }
  });
  errors.rethrow();
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
inline DirectPass direct_data_grad_pass(const ConvGeometry& g, const float* rotated) {
  return {rotated, g.R, g.S, g.dil_h, g.dil_w, g.dil_h * (g.R - 1) - g.pad_top, g.dil_w * (g.S - 1) - g.pad_left,
          g.H, g.W};
}

}  // namespace juanji::cpu::conv
